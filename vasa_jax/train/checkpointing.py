"""orbax checkpoints of the whole training state: model and optimizer state (sharded arrays), step, the grain
iterator's position and the config, in one step directory under `<workdir>/checkpoints`.

Saves are asynchronous (the arrays are copied off the devices before `save` returns, the writing happens in the
background); a step directory only becomes visible once complete, so a crash never leaves a half checkpoint that
resume would pick up.
"""

import json
import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


class Checkpointer:
    def __init__(self, workdir: str, config: Any, max_to_keep: int):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self.config_json = json.loads(config.to_json())
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, enable_async_checkpointing=True),
            item_names=("state", "data", "config"),
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
        `.sharding`), and move `iterator` to the saved position. Returns the state."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=grain.checkpoint.CheckpointRestore(iterator),
            ),
        )
        return restored["state"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_with_shardings(abstract: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def _manager(workdir: str) -> ocp.CheckpointManager:
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{workdir} holds no checkpoints ({directory} does not exist): is it a training workdir?")
    manager = ocp.CheckpointManager(directory, item_names=("state", "data", "config"))
    if manager.latest_step() is None:
        raise FileNotFoundError(f"{directory} holds no complete checkpoint")
    return manager


def read_config(workdir: str):
    """The config saved with the latest checkpoint of a training workdir, as an ml_collections ConfigDict."""
    import ml_collections

    manager = _manager(workdir)
    step = manager.latest_step()
    restored = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    manager.close()
    return ml_collections.ConfigDict(restored["config"])


def restore_state(workdir: str, task: Any, seed: int = 0) -> Any:
    """The latest training state of `workdir`, restored onto the first local device (for inference and encoding,
    not for resuming training: the data iterator is not restored)."""
    import flax.linen as nn

    manager = _manager(workdir)
    abstract = jax.eval_shape(lambda: nn.unbox(task.init_boxed(jax.random.key(seed))))
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract)
    restored = manager.restore(
        manager.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
    )
    manager.close()
    return restored["state"]
