"""`python -m vasa_jax.data.encode_motion`: build a stage-2 motion dataset (see `vasa_jax.data.motion`).

  python -m vasa_jax.data.encode_motion --output DIR --stage1 STAGE1_WORKDIR --prepared PREPARED_DIR
      [--audio_encoder log_mel|wav2vec2 --wav2vec2_dir HF_DIR --wav2vec2_layer N] [--batch_size 32]
  python -m vasa_jax.data.encode_motion --output DIR --stage1 STAGE1_WORKDIR      (the synthetic heads)
  python -m vasa_jax.data.encode_motion --output DIR --motion ground_truth         (synthetic state, no stage 1)

With --prepared, every record of a prepared real-video dataset (`python -m vasa_jax.data.prepare`) that has audio
becomes a motion clip: the stage-1 encoder's motion of its frames, its audio features and the preparation's
per-clip conditions (main gaze, head distance, emotion). Records without audio are left out and counted. Without
it, the synthetic dataset is described by a stage-1 config's data section: the stage-1 workdir's own config with
--stage1, else `--synthetic_config` (default configs/stage1.py:tiny).

Frames go through the encoder in batches split over the local devices. Finished clips are kept (each written
atomically), so an interrupted run continues where it stopped; the statistics are recomputed at the end.
"""

import sys
import time

from absl import app, flags
from ml_collections import config_flags

from vasa_jax import storage
from vasa_jax.data import motion, synthetic

FLAGS = flags.FLAGS
flags.DEFINE_string("output", None, "dataset folder to create or complete", required=True)
flags.DEFINE_enum("motion", "stage1", ["stage1", "ground_truth"], "where motion latents come from")
flags.DEFINE_string("stage1", None, "stage-1 training workdir (its latest checkpoint encodes the motion), or a "
                    "folder of LivePortrait's published checkpoints")
flags.DEFINE_string("prepared", None, "a prepared real-video dataset (python -m vasa_jax.data.prepare); "
                    "default: the synthetic heads")
config_flags.DEFINE_config_file(
    "synthetic_config", "configs/stage1.py:tiny", "stage-1 config whose data section describes the synthetic data"
)
flags.DEFINE_enum("audio_encoder", "log_mel", ["log_mel", "wav2vec2"], "audio features")
flags.DEFINE_string("wav2vec2_dir", None, "Hugging Face Wav2Vec2 checkpoint folder (for --audio_encoder=wav2vec2)")
flags.DEFINE_integer("wav2vec2_layer", -1, "hidden state to use (negative counts from the last)")
flags.DEFINE_integer("batch_size", 32, "frames per stage-1 encoder call (rounded up to a multiple of the devices)")


def stage1_frame_encoder(workdir: str, batch_size: int):
    """(encode_frames, stage-1 model): the latest checkpoint of a stage-1 workdir (or a LivePortrait renderer:
    `checkpoints.load_stage1`) as uint8 frames [T, S, S, 3] at its resolution -> motion [T, 7 + dynamics_dim].
    Each call's batch is split over the local devices (the parameters are replicated); the last batch of a clip
    is padded, so every call has one shape."""
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from vasa_jax.checkpoints import load_stage1

    stage1 = load_stage1(workdir)
    devices = jax.local_devices()
    batch_size = -(-int(batch_size) // len(devices)) * len(devices)
    mesh = Mesh(np.asarray(devices), ("data",))
    frames_sharding = NamedSharding(mesh, PartitionSpec("data"))
    variables = jax.device_put(stage1.variables, NamedSharding(mesh, PartitionSpec()))
    encode = jax.jit(lambda v, x: stage1.model.apply(v, x, method="encode_motion"))
    size = stage1.model.cfg.image_size

    def encode_frames(frames):
        frames = np.asarray(frames)
        if frames.shape[1:] != (size, size, 3):
            raise ValueError(f"stage 1 encodes {size}x{size} RGB frames, got shape {frames.shape}")
        out = []
        for start in range(0, len(frames), batch_size):
            chunk = frames[start : start + batch_size]
            n = len(chunk)
            if n < batch_size:  # one compiled shape for every call
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - n, axis=0)])
            chunk = jax.device_put(chunk.astype(np.float32) / 255.0, frames_sharding)
            pose, dyn = encode(variables, chunk)
            out.append(np.concatenate([np.asarray(pose), np.asarray(dyn).reshape(batch_size, -1)], axis=1)[:n])
        return np.concatenate(out)

    return encode_frames, stage1


def build(output, motion_fn, audio_encoder, synthetic_config, manifest, log=print) -> dict:
    """The synthetic heads' motion dataset (`motion.synthetic_clip_records`), completed in `output`."""

    def clip_records(split, done):
        return motion.synthetic_clip_records(synthetic_config, split, motion_fn, audio_encoder, done)

    return write_dataset(output, clip_records, manifest, log)


def write_dataset(output, clip_records, manifest, log=print) -> dict:
    """Write every clip `clip_records(split, done)` yields into `output` (skipping the `done` names), then the
    statistics and the manifest. `output` may be an object store's URL (`vasa_jax.storage`)."""
    output = storage.location(output)
    storage.makedirs(output)
    start, written = time.time(), 0
    for split in motion.SPLITS:
        for name, record in clip_records(split, motion.list_clips(output, split)):
            motion.write_clip(output, split, name, record)
            written += 1
            if written % 20 == 0:
                log(f"{written} clips encoded ({time.time() - start:.0f} s)")
    if not motion.list_clips(output, "train"):
        raise ValueError(f"{output}: no train clip was encoded (no clip with audio?)")
    stats = motion.compute_stats(output)
    first = motion.load_clip(output, "train", motion.list_clips(output, "train")[0])
    manifest = dict(manifest, motion_dim=int(first["motion"].shape[1]), audio_dim=int(first["audio"].shape[1]),
                    emotion_dim=int(first["emotion"].shape[0]))
    storage.write_json(storage.join(output, motion.MANIFEST), manifest)
    counts = {split: len(motion.list_clips(output, split)) for split in motion.SPLITS}
    log(f"motion dataset {output}: {counts} clips ({written} new) in {time.time() - start:.0f} s; "
        f"motion dim {manifest['motion_dim']}, audio dim {manifest['audio_dim']}")
    return {"counts": counts, "stats": stats, "manifest": manifest, "seconds": time.time() - start}


def manifest_for(motion_source: str, stage1_workdir, audio_encoder, source: str, emotion_classes=(),
                 **facts) -> dict:
    """What a motion dataset records about its making (generation and export read the motion source, the audio
    encoder's description and the emotion class names)."""
    return {
        "motion_source": motion_source,
        "stage1_workdir": storage.location(stage1_workdir) if stage1_workdir else None,
        "audio_encoder": audio_encoder.description(),
        "source": source,
        "emotion_classes": list(emotion_classes),
        **facts,
    }


def encode_prepared(prepared_root: str, output: str, encode_frames, resolution: int, audio_encoder,
                    stage1_workdir=None, log=print) -> dict:
    """A motion dataset from a prepared real-video dataset; returns `write_dataset`'s summary plus the record
    counts and the seconds of video with speech."""
    from vasa_jax.data import emotion, prepared

    index = prepared.load_index(prepared_root)
    counts = {"no_audio": 0}

    def clip_records(split, done):
        return motion.prepared_clip_records(prepared_root, split, encode_frames, resolution, audio_encoder,
                                            skip=done, counts=counts)

    # The preparation labels emotion with an 8-class HSEmotion model when given one, else not at all.
    emotion_dim = len(prepared.open_split(prepared_root, "train")[0]["emotion"])
    emotion_classes = emotion.HSEMOTION_CLASSES if emotion_dim == len(emotion.HSEMOTION_CLASSES) else ()
    manifest = manifest_for("stage1", stage1_workdir, audio_encoder, "prepared", emotion_classes,
                            prepared_root=storage.location(prepared_root))
    summary = write_dataset(output, clip_records, manifest, log)
    records = sum(len(index["records"][split]) for split in prepared.SPLITS)
    frames = sum(r["num_frames"] for split in prepared.SPLITS for r in index["records"][split] if r["has_audio"])
    summary.update(records=records, without_audio=counts["no_audio"], video_seconds=frames / index["fps"])
    log(f"{records} prepared records: {counts['no_audio']} without audio left out")
    return summary


def main(argv):
    del argv
    from vasa_jax.audio import make_audio_encoder

    if FLAGS.audio_encoder == "wav2vec2":
        if not FLAGS.wav2vec2_dir:
            sys.exit("--audio_encoder=wav2vec2 needs --wav2vec2_dir (a Hugging Face checkpoint folder)")
        audio_encoder = make_audio_encoder("wav2vec2", checkpoint_dir=FLAGS.wav2vec2_dir, layer=FLAGS.wav2vec2_layer)
    else:
        audio_encoder = make_audio_encoder("log_mel")
    if FLAGS.motion == "stage1" and not FLAGS.stage1:
        sys.exit("--motion=stage1 needs --stage1 (a stage-1 training workdir)")
    if FLAGS.prepared:
        if FLAGS.motion != "stage1":
            sys.exit("--prepared needs stage-1 motion (--stage1); ground-truth motion exists for synthetic heads only")
        from vasa_jax.data import prepared

        try:
            prepared.load_index(FLAGS.prepared)
        except FileNotFoundError as err:
            sys.exit(str(err))
        encode_frames, stage1 = stage1_frame_encoder(FLAGS.stage1, FLAGS.batch_size)
        encode_prepared(FLAGS.prepared, FLAGS.output, encode_frames, stage1.model.cfg.image_size, audio_encoder,
                        FLAGS.stage1)
        return
    if FLAGS.motion == "stage1":
        encode_frames, stage1 = stage1_frame_encoder(FLAGS.stage1, FLAGS.batch_size)
        if stage1.config is None:
            sys.exit(f"{FLAGS.stage1} holds imported weights without a training config; the synthetic heads are "
                     "described by a stage-1 workdir's config: encode prepared real video (--prepared)")
        motion_fn, stage1_config = (lambda render, truth: encode_frames(render())), stage1.config
    else:
        motion_fn, stage1_config = motion.ground_truth_motion, FLAGS.synthetic_config
    manifest = manifest_for(FLAGS.motion, FLAGS.stage1, audio_encoder, "synthetic", synthetic.EMOTIONS)
    build(FLAGS.output, motion_fn, audio_encoder, synthetic.from_stage1_config(stage1_config), manifest)


if __name__ == "__main__":
    app.run(main)
