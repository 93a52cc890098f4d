"""`python -m vasa_jax.data.encode_motion`: build a stage-2 motion dataset (see `vasa_jax.data.motion`).

  python -m vasa_jax.data.encode_motion --output DIR --stage1 STAGE1_WORKDIR
      [--audio_encoder log_mel|wav2vec2 --wav2vec2_dir HF_DIR --wav2vec2_layer N] [--batch_size 32]
  python -m vasa_jax.data.encode_motion --output DIR --motion ground_truth     (synthetic state, no stage 1)

The synthetic dataset is described by a stage-1 config's data section: the stage-1 workdir's own config with
--stage1, else `--synthetic_config` (default configs/stage1.py:tiny). Finished clips are kept, so an
interrupted run continues where it stopped; the statistics are recomputed at the end.
"""

import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from vasa_jax.data import atomic, motion, synthetic

FLAGS = flags.FLAGS
flags.DEFINE_string("output", None, "dataset folder to create or complete", required=True)
flags.DEFINE_enum("motion", "stage1", ["stage1", "ground_truth"], "where motion latents come from")
flags.DEFINE_string("stage1", None, "stage-1 training workdir (its latest checkpoint encodes the motion)")
config_flags.DEFINE_config_file(
    "synthetic_config", "configs/stage1.py:tiny", "stage-1 config whose data section describes the synthetic data"
)
flags.DEFINE_enum("audio_encoder", "log_mel", ["log_mel", "wav2vec2"], "audio features")
flags.DEFINE_string("wav2vec2_dir", None, "Hugging Face Wav2Vec2 checkpoint folder (for --audio_encoder=wav2vec2)")
flags.DEFINE_integer("wav2vec2_layer", -1, "hidden state to use (negative counts from the last)")
flags.DEFINE_integer("batch_size", 32, "frames per stage-1 encoder call")


def stage1_motion_fn(workdir: str, batch_size: int):
    """(motion_fn, stage-1 config): the latest checkpoint of a stage-1 workdir as frames -> [T, 7 + dynamics_dim]."""
    import jax
    import numpy as np

    from vasa_jax.checkpoints import load_stage1
    from vasa_jax.models.stage1 import FaceLatentModel

    stage1 = load_stage1(workdir)
    params, model, config = stage1.params, stage1.model, stage1.config
    encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method=FaceLatentModel.encode_motion))

    def motion_fn(render, truth):
        del truth
        frames = render()
        out = []
        for start in range(0, len(frames), batch_size):
            chunk = frames[start : start + batch_size]
            n = len(chunk)
            if n < batch_size:  # one compiled shape for every call
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - n, axis=0)])
            pose, dyn = encode(params, chunk.astype(np.float32) / 255.0)
            out.append(np.concatenate([np.asarray(pose), np.asarray(dyn).reshape(batch_size, -1)], axis=1)[:n])
        return np.concatenate(out)

    return motion_fn, config


def build(output, motion_fn, audio_encoder, synthetic_config, manifest, log=print) -> dict:
    """Encode every missing clip of both splits into `output`, then write the statistics and the manifest."""
    os.makedirs(output, exist_ok=True)
    start, written = time.time(), 0
    for split in motion.SPLITS:
        done = motion.list_clips(output, split)
        for name, record in motion.synthetic_clip_records(synthetic_config, split, motion_fn, audio_encoder, done):
            motion.write_clip(output, split, name, record)
            written += 1
            if written % 20 == 0:
                log(f"{written} clips encoded ({time.time() - start:.0f} s)")
    stats = motion.compute_stats(output)
    first = motion.load_clip(output, "train", motion.list_clips(output, "train")[0])
    manifest = dict(manifest, motion_dim=int(first["motion"].shape[1]), audio_dim=int(first["audio"].shape[1]),
                    emotion_dim=int(first["emotion"].shape[0]))
    atomic.write_json(os.path.join(output, motion.MANIFEST), manifest)
    counts = {split: len(motion.list_clips(output, split)) for split in motion.SPLITS}
    log(f"motion dataset {output}: {counts} clips ({written} new) in {time.time() - start:.0f} s; "
        f"motion dim {manifest['motion_dim']}, audio dim {manifest['audio_dim']}")
    return {"counts": counts, "stats": stats, "manifest": manifest}


def manifest_for(motion_source: str, stage1_workdir, audio_encoder) -> dict:
    """What a motion dataset records about its making (generation reads the source and the audio encoder)."""
    return {
        "motion_source": motion_source,
        "stage1_workdir": os.path.abspath(stage1_workdir) if stage1_workdir else None,
        "audio_encoder": repr(audio_encoder),
        "source": "synthetic",
    }


def main(argv):
    del argv
    from vasa_jax.audio import make_audio_encoder

    if FLAGS.audio_encoder == "wav2vec2":
        if not FLAGS.wav2vec2_dir:
            sys.exit("--audio_encoder=wav2vec2 needs --wav2vec2_dir (a Hugging Face checkpoint folder)")
        audio_encoder = make_audio_encoder("wav2vec2", checkpoint_dir=FLAGS.wav2vec2_dir, layer=FLAGS.wav2vec2_layer)
    else:
        audio_encoder = make_audio_encoder("log_mel")
    if FLAGS.motion == "stage1":
        if not FLAGS.stage1:
            sys.exit("--motion=stage1 needs --stage1 (a stage-1 training workdir)")
        motion_fn, stage1_config = stage1_motion_fn(FLAGS.stage1, FLAGS.batch_size)
    else:
        motion_fn, stage1_config = motion.ground_truth_motion, FLAGS.synthetic_config
    manifest = manifest_for(FLAGS.motion, FLAGS.stage1, audio_encoder)
    build(FLAGS.output, motion_fn, audio_encoder, synthetic.from_stage1_config(stage1_config), manifest)


if __name__ == "__main__":
    app.run(main)
