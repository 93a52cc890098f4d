"""`python -m vasa_jax.export`: one self-contained model folder from a stage-1 and a stage-2 training workdir (or,
for stage 1, a folder of LivePortrait's published checkpoint files).

  python -m vasa_jax.export --stage1 STAGE1_WORKDIR --stage2 STAGE2_WORKDIR --out MODEL_DIR [--wav2vec2_dir DIR]
  python -m vasa_jax.generate --model MODEL_DIR --image FACE.jpg --audio SPEECH.wav --out OUT.mp4

The folder (layout in `vasa_jax.checkpoints`) needs no workdir, motion dataset or Hugging Face folder to generate:
parameters as safetensors (no pickle), both configs, the normalisation statistics, the audio encoder's description
(and a Wav2Vec2 encoder's weights), the emotion class names and a model card. It is written beside MODEL_DIR under a
temporary name and renamed when complete, so an interrupted export leaves no half model. MODEL_DIR (and the
workdirs) may be an object store's URL (`vasa_jax.storage`): the folder is then written locally first and uploaded
file by file, model.json last, so an interrupted upload is not a model (`load_model` needs model.json and checks
every file it lists).
"""

import dataclasses
import json
import os
import shutil
import sys
import tempfile

import numpy as np
from absl import app, flags

from vasa_jax import checkpoints, storage
from vasa_jax.audio import encoder_from_description
from vasa_jax.data import motion as motion_data


class ExportError(ValueError):
    """Workdirs that cannot be exported together; the message says why."""


def _eval_line(workdir: str) -> str:
    path = storage.join(workdir, checkpoints.EVAL_FILE)
    if not storage.exists(path):
        return "no evaluation recorded"
    metrics = json.loads(storage.read_text(path))
    step = metrics.pop("step", "?")
    return f"at step {step}: " + ", ".join(f"{k} = {v:.4g}" for k, v in sorted(metrics.items()))


def model_card(info: dict) -> str:
    trained = info["trained"]
    s1, s2 = info["stage1_config"], info["stage2_config"]
    encoder = info["audio_encoder"]
    classes = ", ".join(info["emotion_classes"]) or "none named"
    stage1_kind = "LivePortrait's renderer" if s1.get("task") == "liveportrait" else "face latent model"
    if trained["stage1_step"] is None:
        stage1_trained = f"LivePortrait's published weights from `{trained['stage1_workdir']}` (not fine-tuned)"
    else:
        stage1_trained = f"{trained['stage1_step']} training steps in `{trained['stage1_workdir']}`"
    return f"""# vasa_jax talking-head model

Exported by `python -m vasa_jax.export` (model format {info['format']}). Generate with
`python -m vasa_jax.generate --model=THIS_FOLDER --image=FACE.jpg --audio=SPEECH.wav --out=OUT.mp4` or
`TalkingHeadPipeline.from_model("THIS_FOLDER")`.

## Stage 1: {stage1_kind}
- {stage1_trained}; image size {s1['model']['image_size']},
  data: {json.dumps(s1.get('data', {}).get('root') or 'synthetic heads')}.
- Last evaluation {trained['stage1_eval']}.

## Stage 2: motion diffusion transformer
- {trained['stage2_step']} training steps in `{trained['stage2_workdir']}`; window {s2['model']['window']} frames,
  context {s2['model']['context']}, width {s2['model']['width']}, {s2['model']['num_layers']} layers.
- Motion dataset `{trained['motion_dataset']}` ({trained['data_source']} clips, {info['stats'].get('num_train_clips')}
  train clips), motion {info['stage2_dims']['motion_dim']}-d.
- Last evaluation {trained['stage2_eval']}.
- Audio features: {encoder['kind']} ({encoder.get('feature_dim')}-d); emotion classes: {classes}.
- Head distance trained on [{min(info['stats']['distance_min']):.3g}, {max(info['stats']['distance_max']):.3g}]
  (generation refuses values outside it).

Evaluate from pixels with `python -m vasa_jax.evaluate`; see the project's README.
"""


def export(stage1_dir: str, stage2_dir: str, out: str, wav2vec2_dir: str | None = None, log=print) -> dict:
    """Write the model folder `out` (which must not exist yet, or be empty); returns its model.json."""
    from safetensors.numpy import save_file

    try:
        out, stage1_dir, stage2_dir = (storage.location(path) for path in (out, stage1_dir, stage2_dir))
    except ValueError as err:  # a URL scheme nobody serves
        raise ExportError(str(err)) from None
    if storage.exists(out) and (not storage.isdir(out) or storage.listdir(out)):
        raise ExportError(f"{out} already exists; export into a new folder")
    try:
        stage1 = checkpoints.load_stage1(stage1_dir)
        stage2 = checkpoints.load_stage2(stage2_dir)
        manifest = motion_data.read_json(storage.join(stage2.config.data.root, motion_data.MANIFEST))
    except (FileNotFoundError, ValueError) as err:
        raise ExportError(str(err)) from None
    imported = stage1.config is None  # a folder of LivePortrait's published files, not a training workdir
    # Its model.json records the layout it was read with (the published sizes) as a "liveportrait" config, so that
    # load_model rebuilds it as it does a fine-tuned LivePortrait workdir.
    stage1_config = ({"task": "liveportrait", "model": dataclasses.asdict(stage1.model.cfg)} if imported
                     else stage1.config.to_dict())
    if manifest.get("motion_source") != "stage1":
        raise ExportError(f"{stage2_dir} was trained on {manifest.get('motion_source')!r} motion, not on a stage 1's")
    motion_dim = 7 + stage1.model.cfg.dynamics_dim
    if stage2.model_cfg.motion_dim != motion_dim:
        raise ExportError(f"stage 2 generates {stage2.model_cfg.motion_dim}-d motion, {stage1_dir} renders "
                          f"{motion_dim}-d")
    try:
        encoder = encoder_from_description(manifest["audio_encoder"], checkpoint_dir=wav2vec2_dir)
    except (ValueError, OSError) as err:
        raise ExportError(f"the audio encoder of {stage2.config.data.root}: {err}") from None
    if "distance_min" not in stage2.stats:
        raise ExportError(f"{stage2.config.data.root}/{motion_data.STATS} predates the recorded distance range; "
                          "rerun python -m vasa_jax.data.encode_motion on it (finished clips are kept)")

    parent = None if storage.is_remote(out) else os.path.dirname(out)  # (a URL: staged in the system's temp)
    if parent:
        os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=os.path.basename(out) + ".export-", dir=parent)
    try:
        files = {}
        # A LivePortrait stage 1 has BatchNorm statistics beside its parameters: its file holds every collection.
        stage1_arrays = stage1.variables if stage1.constants else stage1.params
        for stage, params in (("stage1", stage1_arrays), ("stage2", stage2.params)):
            name = checkpoints.PARAM_FILES[stage]
            save_file(checkpoints.flat_params(params), os.path.join(staging, name))
            files[name] = checkpoints.file_sha256(os.path.join(staging, name))
        description, encoder_dir = encoder.description(), None
        if description["kind"] == "wav2vec2":
            from vasa_jax.models import wav2vec2

            encoder_dir = "audio_encoder"
            os.makedirs(os.path.join(staging, encoder_dir))
            shutil.copy(os.path.join(encoder.checkpoint_dir, "config.json"), os.path.join(staging, encoder_dir))
            weights = os.path.join(encoder_dir, wav2vec2.EXPORTED_WEIGHTS)
            save_file(checkpoints.flat_params(encoder.params), os.path.join(staging, weights))
            files[os.path.join(encoder_dir, "config.json")] = checkpoints.file_sha256(
                os.path.join(staging, encoder_dir, "config.json"))
            files[weights] = checkpoints.file_sha256(os.path.join(staging, weights))
            description = {k: v for k, v in description.items() if k != "checkpoint_dir"}
        info = {
            "format": checkpoints.MODEL_FORMAT,
            "stage1_config": stage1_config,
            "stage1_framing": stage1.framing,
            "stage2_config": stage2.config.to_dict(),
            "stage2_dims": {k: int(getattr(stage2.model_cfg, k)) for k in checkpoints.STAGE2_DIMS},
            "stats": {k: np.asarray(v).tolist() for k, v in stage2.stats.items()},
            "audio_encoder": description,
            "audio_encoder_dir": encoder_dir,
            "emotion_classes": list(manifest.get("emotion_classes", ())),
            "files": files,
            "trained": {
                "stage1_workdir": stage1_dir, "stage2_workdir": stage2_dir,
                "stage1_step": None if imported else checkpoints.latest_step(stage1_dir),
                "stage2_step": checkpoints.latest_step(stage2_dir),
                "stage1_eval": "none (LivePortrait's published weights)" if imported else _eval_line(stage1_dir),
                "stage2_eval": _eval_line(stage2_dir),
                "motion_dataset": storage.location(stage2.config.data.root),
                "data_source": manifest.get("source", "synthetic"),
            },
        }
        with open(os.path.join(staging, checkpoints.MODEL_FILE), "w") as fh:
            json.dump(info, fh, indent=1)
        with open(os.path.join(staging, "README.md"), "w") as fh:
            fh.write(model_card(info))
        if storage.is_remote(out):
            # model.json last: until it lands the folder is not a model.
            storage.upload_tree(staging, out, last=(checkpoints.MODEL_FILE,))
            shutil.rmtree(staging)
        else:
            if os.path.isdir(out):
                os.rmdir(out)  # empty (checked above)
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    stage1_from = "LivePortrait's published weights" if imported else f"step {info['trained']['stage1_step']}"
    log(f"exported {out}: stage 1 {stage1_from}, stage 2 step "
        f"{info['trained']['stage2_step']}, {description['kind']} audio features")
    return info


FLAGS = flags.FLAGS


def main(argv):
    del argv
    try:
        export(FLAGS.stage1, FLAGS.stage2, FLAGS.out, FLAGS.wav2vec2_dir)
    except ExportError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    flags.DEFINE_string("stage1", None, "stage-1 training workdir, or a folder of LivePortrait's published files",
                        required=True)
    flags.DEFINE_string("stage2", None, "stage-2 training workdir", required=True)
    flags.DEFINE_string("out", None, "the model folder to write (must not exist)", required=True)
    flags.DEFINE_string("wav2vec2_dir", None, "the Wav2Vec2 checkpoint folder, if not where the motion dataset "
                        "recorded it")
    app.run(main)
