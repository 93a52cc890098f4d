"""orbax checkpoints of the whole training state: model and optimizer state (sharded arrays), step, the grain
iterator's position and the config, in one step directory under `<workdir>/checkpoints`.

Saves are asynchronous (the arrays are copied off the devices before `save` returns, the writing happens in the
background); a step directory only becomes visible once complete, so a crash never leaves a half checkpoint that
resume would pick up. Reading a trained network back for inference is `vasa_jax.checkpoints`.
"""

import json
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from vasa_jax import storage
from vasa_jax.checkpoints import CHECKPOINT_ITEMS, checkpoint_directory


class Checkpointer:
    def __init__(self, workdir: str, config: Any, max_to_keep: int):
        self.directory = checkpoint_directory(workdir)
        self.config_json = json.loads(config.to_json())
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, enable_async_checkpointing=True),
            item_names=CHECKPOINT_ITEMS,
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, iterator: Any) -> None:
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(iterator),
                config=ocp.args.JsonSave(self.config_json),
            ),
            force=True,
        )

    def restore(self, step: int, abstract_state: Any, iterator: Any) -> Any:
        """Restore `step` onto the shardings carried by `abstract_state` (jax.ShapeDtypeStruct leaves with
        `.sharding`), and move `iterator` to the saved position. Returns the state.

        A checkpoint written by another number of processes restores too: every process's iterator stands at the
        same global position (`loop.training_iterator` makes a step's batch independent of the topology), so
        that position, read from the saved processes' files, is every new process's."""
        data_dir = storage.join(self.directory, str(step), "data")
        own = storage.join(data_dir, f"process_{jax.process_index()}-of-{jax.process_count()}.json")
        if storage.exists(own):
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=grain.checkpoint.CheckpointRestore(iterator)))
            return restored["state"]
        restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
        iterator.set_state(saved_position(data_dir))
        return restored["state"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def saved_position(data_dir: str) -> dict:
    """The data iterator's position saved in a step's `data` folder by every process that wrote it; ValueError
    when there is none or the processes' positions differ (then no other process count can resume it)."""
    states = [json.loads(storage.read_text(path)) for path in storage.glob(data_dir, "process_*-of-*.json")]
    if not states:
        raise ValueError(f"{data_dir} holds no data iterator state")
    if any(state != states[0] for state in states):
        raise ValueError(f"the processes that wrote {data_dir} stood at different data positions {states}; "
                         "resume with the process count that wrote it")
    return states[0]


def abstract_with_shardings(abstract: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
