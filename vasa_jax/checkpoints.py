"""Trained models read from training workdirs: the one place weights are loaded from, below the trainer.

Generation, `encode_motion`, evaluation and the benchmarks call `load_stage1` / `load_stage2`; none of them imports
the training tasks. A workdir's checkpoints hold the whole training state (parameters, optimizer state, step), the
data iterator's position and the config (`vasa_jax.train.checkpointing` writes them). Inference needs one
network's parameters only, so only those are restored (orbax's partial restore of `state/params/<network>`): no
optimizer, discriminator or loss network is built, and the optimizer state is not read from disk.
"""

import dataclasses
import os
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from vasa_jax.data import motion as motion_data
from vasa_jax.models.stage1 import FaceLatentModel, Stage1ModelConfig
from vasa_jax.models.stage2 import MotionDiT, Stage2ModelConfig, example_inputs

CHECKPOINT_ITEMS = ("state", "data", "config")  # one step directory: training state, data iterator, config


def checkpoint_directory(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def _open(workdir: str) -> ocp.CheckpointManager:
    directory = checkpoint_directory(workdir)
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"{workdir} holds no checkpoints ({directory} does not exist): is it a training workdir?")
    manager = ocp.CheckpointManager(directory, item_names=CHECKPOINT_ITEMS)
    if manager.latest_step() is None:
        raise FileNotFoundError(f"{directory} holds no complete checkpoint")
    return manager


def read_config(workdir: str):
    """The config saved with the latest checkpoint of a training workdir, as an ml_collections ConfigDict."""
    import ml_collections

    manager = _open(workdir)
    restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    manager.close()
    return ml_collections.ConfigDict(restored["config"])


def restore_params(workdir: str, network: str, abstract_params: Any) -> Any:
    """The parameters of `network` ("generator", "dit") in the latest checkpoint of `workdir`, on the first local
    device. `abstract_params` gives their structure (jax.ShapeDtypeStruct leaves: `jax.eval_shape` of the
    network's unboxed init); the rest of the training state stays on disk."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = {"params": {network: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), abstract_params)}}
    restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=device), abstract)
    manager = _open(workdir)
    try:
        restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item=abstract, restore_args=restore_args, partial_restore=True)))
    finally:
        manager.close()
    return restored["state"]["params"][network]


def _task_of(config) -> str:
    return config.get("task", "stage1")  # workdirs written before the field existed are stage-1 ones


@dataclasses.dataclass(frozen=True)
class Stage1Model:
    """A trained face latent model: `model.apply({"params": params}, ..., method=FaceLatentModel.encode)` etc."""

    model: FaceLatentModel
    params: Any
    config: Any  # the training config (ml_collections.ConfigDict) it was trained with


def load_stage1(workdir: str) -> Stage1Model:
    """The stage-1 model of the latest checkpoint of a stage-1 training workdir."""
    config = read_config(workdir)
    if _task_of(config) != "stage1":
        raise ValueError(f"{workdir} is a {_task_of(config)} workdir, not a stage-1 one")
    model = FaceLatentModel(Stage1ModelConfig.from_config(config.model))
    image = jnp.zeros((1, model.cfg.image_size, model.cfg.image_size, 3), jnp.float32)
    abstract = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), image, image)["params"]))
    return Stage1Model(model, restore_params(workdir, "generator", abstract), config)


def stage2_model_config(config) -> Stage2ModelConfig:
    """The DiT's sizes for a stage-2 config: its `model` section, the dimensions recorded in the motion dataset's
    manifest and the noise schedule (the network's output is preconditioned by it)."""
    manifest = motion_data.read_json(os.path.join(config.data.root, motion_data.MANIFEST))
    dims = {k: manifest[k] for k in ("motion_dim", "audio_dim", "emotion_dim")}
    return Stage2ModelConfig.from_config({**dict(config.model), **dims, **dict(config.diffusion)})


@dataclasses.dataclass(frozen=True)
class Stage2Model:
    """A trained motion DiT with the normalisation statistics of the dataset it was trained on."""

    model_cfg: Stage2ModelConfig
    params: Any
    config: Any  # the training config
    stats: Mapping[str, np.ndarray]  # motion_data.STATS of the training dataset


def load_stage2(workdir: str) -> Stage2Model:
    """The stage-2 model of the latest checkpoint of a stage-2 training workdir (the statistics are read from
    the training dataset's folder, `config.data.root`)."""
    config = read_config(workdir)
    if _task_of(config) != "stage2":
        raise ValueError(f"{workdir} is a {_task_of(config)} workdir, not a stage-2 one")
    model_cfg = stage2_model_config(config)
    abstract = jax.eval_shape(
        lambda: nn.unbox(MotionDiT(model_cfg).init(jax.random.key(0), *example_inputs(model_cfg))["params"]))
    stats = motion_data.read_json(os.path.join(config.data.root, motion_data.STATS))
    stats = {k: np.asarray(v, np.float32) for k, v in stats.items()}
    return Stage2Model(model_cfg, restore_params(workdir, "dit", abstract), config, stats)
