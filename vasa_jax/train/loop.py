"""The generic training loop shared by both stages (big_vision style: one readable function).

The state is created already sharded: `jax.eval_shape` gives its abstract shape with logical-axis boxes, the
config's rules turn those into shardings, and a jitted init with those `out_shardings` materialises each shard on
its device. Resume is automatic: if `<workdir>/checkpoints` holds a step, the state and the data iterator continue
from there. The workdir may be a URL (`vasa_jax.storage`: gs://, s3://, ..., file://).
"""

import cv2
import flax.linen as nn
import grain
import jax
import numpy as np

from vasa_jax import storage
from vasa_jax.checkpoints import EVAL_FILE
from vasa_jax.train import checkpointing, metrics as metrics_lib, sharding


def training_iterator(source, data, process_index: int, process_count: int, transform=None, random_transform=None):
    """Shuffled, repeated batches, each process yielding its contiguous share of the global batch: global batch s
    is items [s * B, (s + 1) * B) of one shuffled stream of `source`, and process p holds items
    [s * B + p * b, s * B + (p + 1) * b) of it (b = B / processes), so the examples of a step and their order do
    not depend on how many processes (or devices) share it. `random_transform(item, rng)` (augmentation) runs on the
    global stream: its generator is seeded by data.seed and the item's global position, so every epoch draws new
    augmentations, every host's items get their own, and a restored iterator repeats them exactly."""
    if data.batch_size % process_count:
        raise ValueError(f"data.batch_size {data.batch_size} is not divisible by {process_count} processes")
    dataset = grain.MapDataset.source(source).shuffle(seed=data.seed).repeat()
    if random_transform is not None:
        dataset = dataset.random_map(random_transform, seed=data.seed)
    if transform is not None:
        dataset = dataset.map(transform)
    # Consecutive per-process batches of the global stream; process p takes every process_count-th from the p-th.
    dataset = dataset.batch(data.batch_size // process_count, drop_remainder=True)[process_index::process_count]
    return iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=data.num_threads, prefetch_buffer_size=2)))


def fixed_batch(source, count: int, seed: int):
    """`count` items of `source` drawn once with `seed` (without replacement), stacked into one numpy batch."""
    indices = np.random.default_rng(seed).choice(len(source), size=min(count, len(source)), replace=False)
    items = [source[int(i)] for i in indices]
    return {k: np.stack([item[k] for item in items]) for k in items[0]}


def make_task(config):
    if config.task == "stage1":
        from vasa_jax.train.stage1 import Stage1Task

        return Stage1Task(config)
    if config.task == "stage2":
        from vasa_jax.train.stage2 import Stage2Task

        return Stage2Task(config)
    if config.task == "liveportrait":
        from vasa_jax.train.liveportrait import LivePortraitTask

        return LivePortraitTask(config)
    if config.task == "capp":
        from vasa_jax.train.capp import CappTask

        return CappTask(config)
    raise ValueError(f"unknown task {config.task!r}; available: 'stage1', 'stage2', 'liveportrait', 'capp'")


def abstract_sharded_state(task, config, mesh):
    """(abstract state, shardings): the initial state's shapes and dtypes with their shardings on `mesh`, without
    creating it (enough to compile a step)."""
    abstract_boxed = jax.eval_shape(task.init_boxed, jax.random.key(config.seed))
    state_shardings = sharding.logical_shardings(abstract_boxed, mesh, config.sharding_rules)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            nn.unbox(abstract_boxed), state_shardings)
    return abstract, state_shardings


def create_sharded_state(task, config, mesh):
    """(state, shardings): the initial state, created directly with its shardings on `mesh`."""
    _, state_shardings = abstract_sharded_state(task, config, mesh)
    init = jax.jit(lambda r: nn.unbox(task.init_boxed(r)), out_shardings=state_shardings)
    return init(jax.random.key(config.seed)), state_shardings


def compile_train_step(task, mesh, state_shardings, frozen_shardings):
    def train_step(state, batch, frozen):
        with sharding.activation_context(mesh, task.config.sharding_rules):
            return task.train_step(state, batch, frozen)

    return jax.jit(
        train_step,
        in_shardings=(state_shardings, sharding.batch_sharding(mesh), frozen_shardings),
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=(0,),
    )


def train(config, workdir: str) -> dict:
    """Train `config.task` in `workdir` (a local path or a URL) until config.train.num_steps; returns the last
    evaluation metrics."""
    workdir = storage.location(workdir)
    storage.makedirs(workdir)
    is_chief = jax.process_index() == 0
    task = make_task(config)
    mesh = sharding.make_mesh(config.mesh.shape, config.mesh.axes)
    train_cfg = config.train

    state, state_shardings = create_sharded_state(task, config, mesh)
    frozen = jax.device_put(task.load_frozen(), sharding.replicated(mesh))
    frozen_shardings = jax.tree.map(lambda _: sharding.replicated(mesh), frozen)
    iterator = task.train_iterator(jax.process_index(), jax.process_count())

    checkpointer = checkpointing.Checkpointer(workdir, config, train_cfg.keep_checkpoints)
    latest = checkpointer.latest_step()
    if latest is not None:
        abstract = checkpointing.abstract_with_shardings(jax.eval_shape(lambda: state), state_shardings)
        del state
        state = checkpointer.restore(latest, abstract, iterator)
        if is_chief:
            print(f"resumed from {checkpointer.directory} at step {latest}", flush=True)
    elif hasattr(task, "pretrained_state"):
        # A fine-tuning task starts from imported weights; a resumed run has its own in the checkpoint.
        state = task.pretrained_state(state, state_shardings)
    start_step = int(jax.device_get(state["step"]))

    if is_chief:
        print(
            f"mesh {dict(mesh.shape)}; {_count_params(state['params']) / 1e6:.2f}M parameters; "
            f"{sharding.sharded_fraction(state['params']):.0%} of parameter bytes sharded",
            flush=True,
        )
    jitted_step = compile_train_step(task, mesh, state_shardings, frozen_shardings)
    train_step = None  # compiled at the first batch, which also gives the step's FLOPs
    writer = metrics_lib.MetricWriter(workdir, train_cfg.num_steps, config.data.batch_size, enabled=is_chief)
    eval_metrics = {}
    try:
        for step in range(start_step + 1, train_cfg.num_steps + 1):
            batch = sharding.global_batch(next(iterator), mesh)
            if train_step is None:
                train_step = jitted_step.lower(state, batch, frozen).compile()
                writer.set_step_flops(metrics_lib.compiled_flops(train_step),
                                      metrics_lib.peak_flops_per_second(jax.devices()[0].device_kind))
            state, step_metrics = train_step(state, batch, frozen)
            last = step == train_cfg.num_steps
            checkpoint_now = step % train_cfg.checkpoint_every == 0 or last
            if step % train_cfg.log_every == 0 or checkpoint_now or step == start_step + 1:
                host_metrics = jax.device_get(step_metrics)
                metrics_lib.check_finite(host_metrics, step)
                writer.write_scalars(step, host_metrics)
                writer.progress(step, host_metrics)
            if step % train_cfg.eval_every == 0 or last:
                eval_metrics = task.evaluate(state)
                writer.write_scalars(step, eval_metrics, prefix="eval")
                if is_chief:
                    print(f"eval step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in eval_metrics.items()), flush=True)
                    # The latest evaluation in plain JSON: an exported model's card quotes it.
                    storage.write_json(storage.join(workdir, EVAL_FILE),
                                       {"step": step, **{k: float(v) for k, v in eval_metrics.items()}})
            if step % train_cfg.sample_every == 0 or last:
                grid = task.sample_grid(state)  # a computation over the mesh: every process takes part
                if is_chief and grid is not None:
                    writer.write_image(step, "samples", grid)
                    write_png(storage.join(workdir, "samples", f"step_{step:07d}.png"), grid)
            if checkpoint_now:
                checkpointer.save(step, state, iterator)
    finally:
        checkpointer.close()
        writer.close()
    return eval_metrics


def write_png(path: str, rgb: np.ndarray) -> None:
    """A PNG written whole or not at all (`storage.write_bytes`), so a crash never leaves a truncated image."""
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"could not encode {path}")
    storage.write_bytes(path, encoded.tobytes())


def _count_params(params) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
