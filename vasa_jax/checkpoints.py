"""Trained models read from training workdirs or exported model folders: the one place weights are loaded from,
below the trainer.

Generation, `encode_motion`, evaluation and the benchmarks call `load_stage1` / `load_stage2` / `load_model`; none
of them imports the training tasks. A workdir's checkpoints hold the whole training state (parameters, optimizer state, step), the
data iterator's position and the config (`vasa_jax.train.checkpointing` writes them). Inference needs one
network's parameters only, so only those are restored (orbax's partial restore of `state/params/<network>`): no
optimizer, discriminator or loss network is built, and the optimizer state is not read from disk.
"""

import dataclasses
import hashlib
import json
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from vasa_jax import storage
from vasa_jax.data import motion as motion_data
from vasa_jax.models.capp import CAPP, CappConfig
from vasa_jax.models.capp import example_inputs as capp_example_inputs
from vasa_jax.models.stage1 import FaceLatentModel, Stage1ModelConfig
from vasa_jax.models.stage2 import MotionDiT, Stage2ModelConfig, example_inputs

CHECKPOINT_ITEMS = ("state", "data", "config")  # one step directory: training state, data iterator, config
EVAL_FILE = "eval.json"  # a workdir's latest evaluation metrics, written by the trainer


def checkpoint_directory(workdir: str) -> str:
    """`<workdir>/checkpoints`; the workdir may be a URL (`storage.location`)."""
    return storage.join(storage.location(workdir), "checkpoints")


def _open(workdir: str) -> ocp.CheckpointManager:
    directory = checkpoint_directory(workdir)
    if not storage.isdir(directory):
        raise FileNotFoundError(
            f"{workdir} holds no checkpoints ({directory} does not exist): is it a training workdir?")
    manager = ocp.CheckpointManager(directory, item_names=CHECKPOINT_ITEMS)
    if manager.latest_step() is None:
        raise FileNotFoundError(f"{directory} holds no complete checkpoint")
    return manager


def latest_step(workdir: str) -> int:
    manager = _open(workdir)
    step = manager.latest_step()
    manager.close()
    return int(step)


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
    return restore_variables(workdir, network, {"params": abstract_params})["params"]


def restore_variables(workdir: str, network: str, abstract_variables: Mapping[str, Any]) -> dict:
    """`network`'s variable collections ({"params": ..., "batch_stats": ...}, as `abstract_variables` lists them)
    from the latest checkpoint of `workdir` (state/<collection>/<network>), on the first local device."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = {collection: {network: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)}
                for collection, tree in abstract_variables.items()}
    restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=device), abstract)
    manager = _open(workdir)
    try:
        restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item=abstract, restore_args=restore_args, partial_restore=True)))
    finally:
        manager.close()
    return {collection: restored["state"][collection][network] for collection in abstract_variables}


def _task_of(config) -> str:
    return config.get("task", "stage1")  # workdirs written before the field existed are stage-1 ones


@dataclasses.dataclass(frozen=True)
class Stage1Model:
    """A trained stage-1 renderer: our face latent model, or LivePortrait's (`vasa_jax.models.liveportrait`), which
    has the same interface: `model.apply(stage1.variables, ..., method="encode")` (or "encode_motion", "decode"),
    `model.cfg.image_size` (what the encoders read), `model.cfg.output_size` (what decode renders) and
    `model.cfg.dynamics_dim` (the motion beside the 7 pose values)."""

    model: Any  # FaceLatentModel or LivePortrait
    params: Any
    config: Any  # the training config (ml_collections.ConfigDict) it was trained with; None for imported weights
    constants: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # LivePortrait's BatchNorm statistics
    # How the faces it was trained on were cropped (`generate.portrait_crop`'s crop): our preparation's framing, or
    # LivePortrait's for its published weights.
    framing: str = "face"

    @property
    def variables(self) -> dict:
        return {"params": self.params, **self.constants}


def _stage1_abstract(model: FaceLatentModel):
    image = jnp.zeros((1, model.cfg.image_size, model.cfg.image_size, 3), jnp.float32)
    return jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), image, image)["params"]))


STAGE1_TASKS = ("stage1", "liveportrait")  # training tasks whose generator is a stage-1 renderer


def _liveportrait_abstract(config):
    """(LivePortrait module, the shapes of its variables) for a "liveportrait" training config."""
    from vasa_jax.models import liveportrait

    cfg = liveportrait.LivePortraitConfig.from_config(config.model)
    model = liveportrait.LivePortrait(cfg)
    image = jax.ShapeDtypeStruct((1, cfg.image_size, cfg.image_size, 3), jnp.float32)
    return model, jax.eval_shape(model.init, jax.random.key(0), image, image)


def load_stage1(path: str) -> Stage1Model:
    """The stage-1 renderer of the latest checkpoint of a stage-1 (or LivePortrait fine-tuning) workdir, or
    LivePortrait's published checkpoint files in a folder (the published sizes)."""
    from vasa_jax.models import liveportrait

    if liveportrait.is_checkpoint_folder(path) and not storage.isdir(checkpoint_directory(path)):
        variables = liveportrait.load_liveportrait(path)
        return Stage1Model(liveportrait.LivePortrait(liveportrait.LivePortraitConfig()), variables["params"], None,
                           {"batch_stats": variables["batch_stats"]}, framing="liveportrait")
    config = read_config(path)
    if _task_of(config) not in STAGE1_TASKS:
        raise ValueError(f"{path} is a {_task_of(config)} workdir, not a stage-1 one")
    if _task_of(config) == "liveportrait":
        model, abstract = _liveportrait_abstract(config)
        variables = restore_variables(path, "generator", abstract)
        return Stage1Model(model, variables["params"], config, {"batch_stats": variables["batch_stats"]})
    model = FaceLatentModel(Stage1ModelConfig.from_config(config.model))
    return Stage1Model(model, restore_params(path, "generator", _stage1_abstract(model)), config)


STAGE2_DIMS = ("motion_dim", "audio_dim", "emotion_dim")  # what a stage-2 network takes from its dataset


def stage2_model_config(config, dims: Mapping[str, int] | None = None) -> Stage2ModelConfig:
    """The DiT's sizes for a stage-2 config: its `model` section, the dimensions of its data (`dims`; default:
    those recorded in the motion dataset's manifest) and the noise schedule (the network's output is
    preconditioned by it)."""
    if dims is None:
        dims = motion_data.read_json(storage.join(config.data.root, motion_data.MANIFEST))
    dims = {k: dims[k] for k in STAGE2_DIMS}
    return Stage2ModelConfig.from_config({**dict(config.model), **dims, **dict(config.diffusion)})


@dataclasses.dataclass(frozen=True)
class Stage2Model:
    """A trained motion DiT with the normalisation statistics of the dataset it was trained on."""

    model_cfg: Stage2ModelConfig
    params: Any
    config: Any  # the training config
    stats: Mapping[str, np.ndarray]  # motion_data.STATS of the training dataset


def _stage2_abstract(model_cfg: Stage2ModelConfig):
    return jax.eval_shape(
        lambda: nn.unbox(MotionDiT(model_cfg).init(jax.random.key(0), *example_inputs(model_cfg))["params"]))


def load_stage2(workdir: str) -> Stage2Model:
    """The stage-2 model of the latest checkpoint of a stage-2 training workdir (the statistics are read from
    the training dataset's folder, `config.data.root`)."""
    config = read_config(workdir)
    if _task_of(config) != "stage2":
        raise ValueError(f"{workdir} is a {_task_of(config)} workdir, not a stage-2 one")
    model_cfg = stage2_model_config(config)
    stats = motion_data.read_json(storage.join(config.data.root, motion_data.STATS))
    stats = {k: np.asarray(v, np.float32) for k, v in stats.items()}
    return Stage2Model(model_cfg, restore_params(workdir, "dit", _stage2_abstract(model_cfg)), config, stats)


def capp_model_config(config, audio_dim: int) -> CappConfig:
    """CAPP's sizes: its config's `model` section and the width of its audio encoder's features."""
    return CappConfig.from_config({**dict(config.model), "audio_dim": int(audio_dim)})


@dataclasses.dataclass(frozen=True)
class CappModel:
    """A trained CAPP (`vasa_jax.models.capp`) and the audio encoder its features come from."""

    model_cfg: CappConfig
    params: Any
    config: Any  # the training config
    audio_encoder: Any  # vasa_jax.audio encoder (log-mel or Wav2Vec2), as the training config names it

    @property
    def model(self) -> CAPP:
        return CAPP(self.model_cfg)


def load_capp(workdir: str) -> CappModel:
    """The CAPP model of the latest checkpoint of a CAPP training workdir (configs/capp.py)."""
    from vasa_jax.audio import make_audio_encoder

    config = read_config(workdir)
    if _task_of(config) != "capp":
        raise ValueError(f"{workdir} is a {_task_of(config)} workdir, not a CAPP one")
    encoder = make_audio_encoder(**dict(config.audio))
    model_cfg = capp_model_config(config, encoder.feature_dim)
    abstract = jax.eval_shape(
        lambda: nn.unbox(CAPP(model_cfg).init(jax.random.key(0), *capp_example_inputs(model_cfg))["params"]))
    return CappModel(model_cfg, restore_params(workdir, "capp", abstract), config, encoder)


# ------------------------------------------------------------------------------------------ exported models
# An exported model folder (`python -m vasa_jax.export`) holds everything generation needs, no workdir or dataset:
#   model.json           format, both training configs, the DiT's data dimensions, the normalisation statistics,
#                        the audio encoder's description, the emotion class names, and the SHA-256 of each file
#   stage1.safetensors   the face latent model's parameters, keys "path/to/leaf"
#   stage2.safetensors   the motion DiT's parameters
#   audio_encoder/       a Wav2Vec2 encoder's config.json and flax_model.safetensors (log-mel needs nothing)
#   README.md            the model card
MODEL_FILE = "model.json"
MODEL_FORMAT = 1
PARAM_FILES = {"stage1": "stage1.safetensors", "stage2": "stage2.safetensors"}


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def flat_params(params: Any) -> dict:
    """A parameter tree as {"path/to/leaf": numpy array}: the key layout of exported safetensors files."""
    from flax import traverse_util

    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(params, sep="/").items()}


def params_from_flat(flat: Mapping[str, np.ndarray], abstract: Any, what: str) -> Any:
    """The tree of `abstract` (ShapeDtypeStruct leaves) filled from `flat`; ValueError naming the first key that is
    missing, unexpected or of the wrong shape."""
    from flax import traverse_util

    expected = traverse_util.flatten_dict(abstract, sep="/")
    missing, unexpected = sorted(set(expected) - set(flat)), sorted(set(flat) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{what}: parameters do not fit the model (missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]})")
    for key, leaf in expected.items():
        if tuple(flat[key].shape) != tuple(leaf.shape):
            raise ValueError(f"{what}: parameter {key} has shape {tuple(flat[key].shape)}, the model needs "
                             f"{tuple(leaf.shape)}")
    return traverse_util.unflatten_dict({k: jnp.asarray(flat[k], leaf.dtype) for k, leaf in expected.items()},
                                        sep="/")


@dataclasses.dataclass(frozen=True)
class ExportedModel:
    """Both stages and what generation needs beside them, read from an exported model folder."""

    stage1: Stage1Model
    stage2: Stage2Model
    audio_encoder: Mapping[str, Any]  # description for vasa_jax.audio.encoder_from_description
    audio_encoder_dir: str | None  # the folder of a Wav2Vec2 encoder's weights inside the model folder
    emotion_classes: tuple
    info: Mapping[str, Any]  # model.json as written


def load_model(directory: str) -> ExportedModel:
    """An exported model folder. Refuses, with one line, a folder that is not one, a file whose checksum differs
    from model.json's (a part from another export) and parameters that do not fit the recorded configs."""
    import ml_collections
    from safetensors.numpy import load

    directory = storage.location(directory)  # a local folder or an object store's URL
    path = storage.join(directory, MODEL_FILE)
    if not storage.exists(path):
        raise FileNotFoundError(f"{directory} is not an exported model ({MODEL_FILE} missing): "
                                "python -m vasa_jax.export writes one")
    info = json.loads(storage.read_text(path))
    if info.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path}: model format {info.get('format')!r}, this version reads {MODEL_FORMAT}")
    contents = {}  # each file read once, checked against its recorded digest
    for name, digest in info["files"].items():
        file = storage.join(directory, name)
        if not storage.exists(file):
            raise FileNotFoundError(f"{directory}: {name} is missing")
        contents[name] = storage.read_bytes(file)
        if hashlib.sha256(contents[name]).hexdigest() != digest:
            raise ValueError(f"{directory}: {name} does not belong to this model (its SHA-256 differs from "
                             f"{MODEL_FILE}'s)")
    config1 = ml_collections.ConfigDict(info["stage1_config"])
    config2 = ml_collections.ConfigDict(info["stage2_config"])
    model_cfg2 = stage2_model_config(config2, info["stage2_dims"])
    read = lambda stage: load(contents[PARAM_FILES[stage]])
    what = f"{directory}/{PARAM_FILES['stage1']}"
    if _task_of(config1) == "liveportrait":  # its file holds every variable collection ("params/...", ...)
        model1, abstract = _liveportrait_abstract(config1)
        variables = params_from_flat(read("stage1"), abstract, what)
        stage1 = Stage1Model(model1, variables["params"], config1, {"batch_stats": variables["batch_stats"]},
                             framing=info.get("stage1_framing", "face"))
    else:
        model1 = FaceLatentModel(Stage1ModelConfig.from_config(config1.model))
        stage1 = Stage1Model(model1, params_from_flat(read("stage1"), _stage1_abstract(model1), what), config1)
    params2 = params_from_flat(read("stage2"), _stage2_abstract(model_cfg2), f"{directory}/{PARAM_FILES['stage2']}")
    stats = {k: np.asarray(v, np.float32) for k, v in info["stats"].items()}
    encoder_dir = info.get("audio_encoder_dir")
    return ExportedModel(
        stage1=stage1,
        stage2=Stage2Model(model_cfg2, params2, config2, stats),
        audio_encoder=info["audio_encoder"],
        audio_encoder_dir=storage.join(directory, encoder_dir) if encoder_dir else None,
        emotion_classes=tuple(info.get("emotion_classes", ())),
        info=info,
    )
