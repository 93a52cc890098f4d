"""`python -m vasa_jax.quickstart`: the whole system on the embedded synthetic data, end to end.

  1. the pixel judge (vasa_jax.judge) on true synthetic frames                      WORKDIR/judge
  2. stage 1 (configs/stage1.py:tiny) on synthetic 64x64 talking heads              WORKDIR/stage1
  3. stage-1 motion latents + log-mel audio of every synthetic clip                  WORKDIR/motion
  4. stage 2 (configs/stage2.py:tiny) on those latents                               WORKDIR/stage2
  5. a talking video of a held-out identity driven by held-out speech                WORKDIR/talking_head.mp4
     with its contact sheet (WORKDIR/contact_sheet.png), and the evaluation from pixels on 16 held-out clips
     (WORKDIR/report.json)

Each stage is skipped when its output is already complete, so an interrupted run continues where it stopped
(training stages resume from their last checkpoint).

The scores are known-answer and judged from pixels: the synthetic renderer opens the mouth by a known function of
the speech's loudness, and the judge, a small network with its own weights trained only on true rendered frames,
reads the mouth opening (eye openness, head pose) of the generated frames. Lip sync is the correlation of the
judged mouth opening of the video with the true mouth opening of the held-out speech, beside its baselines: the
judge on the true frames (the ceiling), another clip's speech, the audio condition nulled, and the head pose alone
(the synthetic speakers nod with their speech). The eyes and gaze of stage 1's re-enactments, which the judge cannot
read reliably at 64x64, are read by re-rendering each frame's known state (`evaluate.eyes_by_synthesis`).
"""

import dataclasses
import json
import os
import time

import numpy as np
from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "runs/quickstart", "where every output goes")
flags.DEFINE_integer("stage1_steps", None, "override the stage-1 step count (default: the tiny config's)")
flags.DEFINE_integer("stage2_steps", None, "override the stage-2 step count (default: the tiny config's)")
flags.DEFINE_integer("judge_steps", None, "override the pixel judge's training steps")
flags.DEFINE_integer("num_steps", 50, "DDIM steps of the generated video")
flags.DEFINE_integer("eval_clips", 16, "held-out clips of the evaluation from pixels")
flags.DEFINE_integer("eval_num_steps", 10, "DDIM steps of the evaluation's videos")


def contact_sheet(rows, path: str, every: int = 3, columns: int = 16) -> str:
    """A PNG of `columns` frames (every `every`-th) per row, one row per (label, frames, mouth opening) triple; a
    bar under each frame shows the mouth opening (the truth for true frames, the judge's reading for generated
    ones), so the sheet shows whether the mouth opens and closes with the speech."""
    from PIL import Image, ImageDraw

    size = rows[0][1].shape[1]
    label_width, bar = 90, 12
    height = size + bar
    sheet = Image.new("RGB", (label_width + columns * size, len(rows) * height), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (label, frames, mouth) in enumerate(rows):
        top = r * height
        draw.text((4, top + size // 2 - 6), label, fill="black")
        for c, index in enumerate(range(0, len(frames), every)[:columns]):
            left = label_width + c * size
            sheet.paste(Image.fromarray(frames[index]), (left, top))
            width = int(round(np.clip(mouth[index], 0.0, 1.0) * (size - 4)))
            draw.rectangle([left + 2, top + size + 3, left + 2 + width, top + size + bar - 3], fill=(200, 40, 40))
    sheet.save(path)
    return path


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    from configs import stage1 as stage1_config
    from configs import stage2 as stage2_config
    from vasa_jax import evaluate
    from vasa_jax import judge as judge_lib
    from vasa_jax.audio import make_audio_encoder
    from vasa_jax.data import synthetic
    from vasa_jax.data.encode_motion import build, manifest_for, stage1_frame_encoder
    from vasa_jax.generate import TalkingHeadPipeline
    from vasa_jax.train import loop
    from vasa_jax.video import write_mp4

    workdir = os.path.abspath(FLAGS.workdir)
    paths = {name: os.path.join(workdir, name) for name in ("judge", "stage1", "motion", "stage2")}
    started = time.time()
    say = lambda message: print(f"[{(time.time() - started) / 60:5.1f} min] {message}", flush=True)

    config1 = stage1_config.get_config("tiny")
    if FLAGS.stage1_steps:
        config1.train.num_steps = FLAGS.stage1_steps
    data = synthetic.from_stage1_config(config1)
    say(f"1/5 the pixel judge -> {paths['judge']}")
    judge_config = judge_lib.JudgeConfig(resolution=data.resolution, dataset_seed=data.seed)
    if FLAGS.judge_steps:
        judge_config = dataclasses.replace(judge_config, num_steps=FLAGS.judge_steps)
    judge = judge_lib.load_or_train(paths["judge"], judge_config, log=say)

    say(f"2/5 stage 1: {config1.train.num_steps} steps -> {paths['stage1']}")
    stage1_eval = loop.train(config1, paths["stage1"])

    say(f"3/5 encoding every synthetic clip with stage 1 -> {paths['motion']}")
    encode_frames, _ = stage1_frame_encoder(paths["stage1"], batch_size=50)
    audio_encoder = make_audio_encoder("log_mel")
    build(paths["motion"], lambda render, truth: encode_frames(render()), audio_encoder, data,
          manifest_for("stage1", paths["stage1"], audio_encoder, "synthetic", synthetic.EMOTIONS), log=say)

    config2 = stage2_config.get_config("tiny")
    config2.data.root = paths["motion"]
    if FLAGS.stage2_steps:
        config2.train.num_steps = FLAGS.stage2_steps
    say(f"4/5 stage 2: {config2.train.num_steps} steps -> {paths['stage2']}")
    stage2_eval = loop.train(config2, paths["stage2"])

    say(f"5/5 a talking video of a held-out identity with held-out speech, and the evaluation from pixels on "
        f"{FLAGS.eval_clips} held-out clips")
    pipeline = TalkingHeadPipeline.from_workdirs(paths["stage1"], paths["stage2"], crop="center")
    (clip,) = evaluate.held_out_clips(data, 1)  # a test identity, speech past the dataset's clips: never seen
    true_frames = synthetic.render_clip(clip, data.resolution)
    # The portrait is the clip's most neutral frame, already framed as the training data: no face crop.
    video = pipeline.generate(true_frames[evaluate.portrait_index(clip)], clip.audio, num_steps=FLAGS.num_steps,
                              seed=0)
    mp4 = write_mp4(os.path.join(workdir, "talking_head.mp4"), video.frames, audio=video.audio)
    sheet = contact_sheet([("true", true_frames, np.asarray(clip.states.mouth_open)),
                           ("generated", video.frames, judge.read(video.frames)["mouth_open"])],
                          os.path.join(workdir, "contact_sheet.png"))
    pixels = evaluate.from_pixels(paths["stage1"], paths["stage2"], judge, FLAGS.eval_clips, FLAGS.eval_num_steps)
    report = {
        "lip_sync": pixels["lip_sync"],
        "expression_transfer": pixels["expression_transfer"],
        "judge_validation": judge.info.get("validation"),
        "video_frames": int(len(video.frames)),
        "stage1_eval": stage1_eval,
        "stage2_eval": stage2_eval,
        "minutes": (time.time() - started) / 60,
    }
    with open(os.path.join(workdir, "report.json"), "w") as f:
        json.dump(report, f, indent=1, default=float)
    sync, transfer = report["lip_sync"], report["expression_transfer"]
    say(f"lip sync judged from pixels ({sync['num_clips']} held-out clips, mean r): {sync['lip_sync_r']:.2f} "
        f"({sync['lip_sync_r_pose_removed']:.2f} with the judged head pose removed); true frames (ceiling) "
        f"{sync['ceiling_r']:.2f}; another clip's speech {sync['mismatched_r']:.2f}; audio nulled "
        f"{sync['audio_nulled_r']:.2f}; true head pose alone {sync['pose_only_true_r']:.2f}; generated mouth motion "
        f"{sync['mouth_std_ratio']:.2f}x the true frames'; gaze error {sync['gaze_error_degrees']:.1f} degrees "
        f"requested, {sync['gaze_error_degrees_gaze_nulled']:.1f} nulled")
    say(f"stage 1 expression transfer: mouth {transfer['mouth_psnr_gain_over_copy_db']:+.2f} dB over copying the "
        f"portrait; judge r mouth {transfer['judge_r_mouth_open']:.2f}, eyes {transfer['judge_r_eye_open']:.2f}; "
        "read by re-rendering: eye openness r {:.2f}, gaze {:.2f} horizontal, {:.2f} vertical (portrait's own "
        "dynamics {:.2f}, {:.2f}, {:.2f}; true frames {:.2f}, {:.2f}, {:.2f})".format(
            *(transfer[f"rerendered_r_{field}{suffix}"] for suffix in ("", "_own_dynamics", "_true")
              for field in ("eye_open", "gaze_theta", "gaze_phi"))))
    say(f"done. video {mp4}\n  contact sheet {sheet}\n  report {os.path.join(workdir, 'report.json')}\n"
        f"  stage-1 samples {os.path.join(paths['stage1'], 'samples')}\n  tensorboard --logdir {workdir}")


if __name__ == "__main__":
    app.run(main)
