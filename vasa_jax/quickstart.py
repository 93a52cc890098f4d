"""`python -m vasa_jax.quickstart`: the whole system on the embedded synthetic data, end to end.

  1. stage 1 (configs/stage1.py:tiny) on synthetic 64x64 talking heads           WORKDIR/stage1
  2. stage-1 motion latents + log-mel audio of every synthetic clip               WORKDIR/motion
  3. stage 2 (configs/stage2.py:tiny) on those latents                            WORKDIR/stage2
  4. a talking video of a held-out identity driven by held-out speech             WORKDIR/talking_head.mp4
     with its contact sheet (WORKDIR/contact_sheet.png) and known-answer lip-sync score (WORKDIR/report.json)

Each stage is skipped when its output is already complete, so an interrupted run continues where it stopped
(training stages resume from their last checkpoint).

The lip-sync score is known-answer: the synthetic renderer opens the mouth by a known function of the speech's
loudness. The generated video is re-encoded by stage 1, a linear probe fitted on the training clips reads the mouth
opening out of the latents, and its correlation with the true mouth opening of the held-out speech is the score.
The same probe on the stage-1 encoding of the true frames of that clip gives the ceiling of the measure.
"""

import json
import os
import time

import numpy as np
from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "runs/quickstart", "where every output goes")
flags.DEFINE_integer("stage1_steps", None, "override the stage-1 step count (default: the tiny config's)")
flags.DEFINE_integer("stage2_steps", None, "override the stage-2 step count (default: the tiny config's)")
flags.DEFINE_integer("num_steps", 50, "DDIM steps of the generated video")


def contact_sheet(rows, path: str, every: int = 5, columns: int = 10) -> str:
    """A PNG of `columns` frames (every `every`-th) per row, one row per labelled frame sequence."""
    from PIL import Image, ImageDraw

    size = rows[0][1].shape[1]
    label_width = 90
    sheet = Image.new("RGB", (label_width + columns * size, len(rows) * size), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (label, frames) in enumerate(rows):
        draw.text((4, r * size + size // 2 - 6), label, fill="black")
        for c, frame in enumerate(frames[::every][:columns]):
            sheet.paste(Image.fromarray(frame), (label_width + c * size, r * size))
    sheet.save(path)
    return path


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    from configs import stage1 as stage1_config
    from configs import stage2 as stage2_config
    from vasa_jax import evaluate
    from vasa_jax.audio import make_audio_encoder
    from vasa_jax.data import synthetic
    from vasa_jax.data.encode_motion import build, manifest_for, stage1_motion_fn
    from vasa_jax.generate import TalkingHeadPipeline
    from vasa_jax.train import loop
    from vasa_jax.train.stage1 import synthetic_config
    from vasa_jax.video import write_mp4

    workdir = os.path.abspath(FLAGS.workdir)
    paths = {name: os.path.join(workdir, name) for name in ("stage1", "motion", "stage2")}
    started = time.time()
    say = lambda message: print(f"[{(time.time() - started) / 60:5.1f} min] {message}", flush=True)

    config1 = stage1_config.get_config("tiny")
    if FLAGS.stage1_steps:
        config1.train.num_steps = FLAGS.stage1_steps
    say(f"1/4 stage 1: {config1.train.num_steps} steps -> {paths['stage1']}")
    stage1_eval = loop.train(config1, paths["stage1"])

    say(f"2/4 encoding every synthetic clip with stage 1 -> {paths['motion']}")
    motion_fn, _ = stage1_motion_fn(paths["stage1"], batch_size=50)
    data = synthetic_config(config1)
    audio_encoder = make_audio_encoder("log_mel")
    build(paths["motion"], motion_fn, audio_encoder, data, manifest_for("stage1", paths["stage1"], audio_encoder),
          log=say)

    config2 = stage2_config.get_config("tiny")
    config2.data.root = paths["motion"]
    if FLAGS.stage2_steps:
        config2.train.num_steps = FLAGS.stage2_steps
    say(f"3/4 stage 2: {config2.train.num_steps} steps -> {paths['stage2']}")
    stage2_eval = loop.train(config2, paths["stage2"])

    say("4/4 a talking video of a held-out identity with held-out speech")
    # The portrait is a synthetic frame, already framed as the training data: no face crop.
    pipeline = TalkingHeadPipeline.from_workdirs(paths["stage1"], paths["stage2"], crop="center")
    identity_id = int(synthetic.identity_ids(data, "test")[0])
    # A clip index past the dataset's clips: speech no stage has seen, of an identity no stage has trained on.
    clip = synthetic.get_clip(data, identity_id, data.clips_per_identity)
    true_frames = synthetic.render_clip(clip, data.resolution)
    portrait = true_frames[0]
    video = pipeline.generate(portrait, clip.audio, num_steps=FLAGS.num_steps, seed=0)
    mp4 = write_mp4(os.path.join(workdir, "talking_head.mp4"), video.frames, audio=video.audio)

    probes = evaluate.train_probes(paths["motion"])
    encode = lambda frames: motion_fn(lambda: frames, None)
    true_mouth = np.asarray(clip.states.mouth_open, np.float64)
    report = {
        "lip_sync_correlation": evaluate.pearson(evaluate.apply_probe(probes["mouth"], encode(video.frames)),
                                                 true_mouth),
        "lip_sync_correlation_true_frames": evaluate.pearson(
            evaluate.apply_probe(probes["mouth"], encode(true_frames)), true_mouth),
        "frames": int(len(video.frames)),
        "stage1_eval": stage1_eval,
        "stage2_eval": stage2_eval,
        "minutes": (time.time() - started) / 60,
    }
    sheet = contact_sheet([("true", true_frames), ("generated", video.frames)],
                          os.path.join(workdir, "contact_sheet.png"))
    with open(os.path.join(workdir, "report.json"), "w") as f:
        json.dump(report, f, indent=1, default=float)
    say(f"lip sync (known answer): r = {report['lip_sync_correlation']:.2f} for the generated video; "
        f"r = {report['lip_sync_correlation_true_frames']:.2f} for the true frames (the measure's ceiling)")
    say(f"done. video {mp4}\n  contact sheet {sheet}\n  report {os.path.join(workdir, 'report.json')}\n"
        f"  stage-1 samples {os.path.join(paths['stage1'], 'samples')}\n  tensorboard --logdir {workdir}")


if __name__ == "__main__":
    app.run(main)
