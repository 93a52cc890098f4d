"""Known-answer evaluation of stage 2 on synthetic data, and `python -m vasa_jax.evaluate`.

The synthetic renderer opens the mouth by a fixed monotone function of the audio's loudness, so for held-out
audio the true mouth opening is known. Linear probes fitted on the training clips read the mouth opening and
the gaze out of a motion vector (whatever the motion latents are: stage-1 latents or the renderer's state).
  lip sync: Pearson correlation between the probe's mouth opening on the generated motion and the true mouth
            opening of the held-out audio; with the audio condition nulled it should vanish.
  gaze:     mean angular error between a requested main gaze and the probe's gaze on the generated motion
            (the per-clip median), against the same with the gaze condition nulled.
  seams:    the generated motion's frame-to-frame change across window boundaries against inside windows
            (`window_seams`); no seam means a ratio of at most 1.

  python -m vasa_jax.evaluate --stage2 STAGE2_WORKDIR [--num_steps 50] [--max_clips 16]
"""

import json
from typing import Dict

import numpy as np

from vasa_jax.data import motion as motion_data


def fit_linear_probe(features: np.ndarray, targets: np.ndarray, ridge: float = 1e-3):
    """Least squares (with a small ridge) from features [N, M] to targets [N] or [N, D]: (weights, bias)."""
    x = np.asarray(features, np.float64)
    y = np.asarray(targets, np.float64)
    mean_x, mean_y = x.mean(0), y.mean(0)
    xc, yc = x - mean_x, y - mean_y
    weights = np.linalg.solve(xc.T @ xc + ridge * len(x) * np.eye(x.shape[1]), xc.T @ yc)
    return weights, mean_y - mean_x @ weights


def apply_probe(probe, features: np.ndarray) -> np.ndarray:
    weights, bias = probe
    return np.asarray(features, np.float64) @ weights + bias


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def angular_error_degrees(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle between gaze directions given as (theta, phi) in degrees (theta: yaw-like, phi: pitch-like)."""

    def vector(g):
        theta, phi = np.deg2rad(np.asarray(g, np.float64)).T
        return np.stack([np.cos(phi) * np.sin(theta), np.sin(phi), np.cos(phi) * np.cos(theta)], -1)

    cos = np.clip((vector(a) * vector(b)).sum(-1), -1.0, 1.0)
    return np.rad2deg(np.arccos(cos))


def window_seams(motions, window: int) -> Dict[str, float]:
    """Seams of motion generated window by window: the mean frame-to-frame change across window boundaries
    (frame W-1 -> W, 2W-1 -> 2W, ...) and inside windows, pooled over clips (a list of [T, M] arrays, each
    generated from its frame 0). A change is the mean absolute difference of consecutive frames with every
    channel in units of its std over the clip."""
    boundary, within = [], []
    for motion in motions:
        motion = np.asarray(motion, np.float64)
        steps = np.abs(np.diff(motion / (motion.std(0) + 1e-6), axis=0)).mean(1)  # steps[i]: frame i -> i + 1
        at_boundary = np.arange(len(steps)) % window == window - 1
        boundary.append(steps[at_boundary])
        within.append(steps[~at_boundary])
    boundary, within = np.concatenate(boundary), np.concatenate(within)
    if not len(boundary) or not len(within):
        raise ValueError(f"the motion holds no window boundary of a {window}-frame window, or nothing else")
    return {"seam_boundary_change": float(boundary.mean()), "seam_within_change": float(within.mean()),
            "seam_ratio": float(boundary.mean() / within.mean())}


def train_probes(root: str) -> Dict[str, tuple]:
    """Probes motion -> mouth opening and motion -> per-frame gaze, fitted on the train clips of a synthetic
    motion dataset (which keeps the ground truth)."""
    motions, mouths, gazes = [], [], []
    for name in motion_data.list_clips(root, "train"):
        clip = motion_data.load_clip(root, "train", name)
        if "mouth_open" not in clip or "frame_gaze" not in clip:
            raise ValueError(f"{root}: clip {name} has no ground truth; the known-answer test needs synthetic data")
        motions.append(clip["motion"])
        mouths.append(clip["mouth_open"])
        gazes.append(clip["frame_gaze"])
    motions = np.concatenate(motions)
    return {"mouth": fit_linear_probe(motions, np.concatenate(mouths)),
            "gaze": fit_linear_probe(motions, np.concatenate(gazes))}


def known_answer(sampler, root: str, num_steps: int = 50, max_clips: int = 16, seed: int = 0,
                 requested_gaze=(15.0, -8.0)) -> Dict[str, float]:
    """Lip-sync correlations (audio on / nulled) and gaze errors (gaze on / nulled) on held-out synthetic clips."""
    probes = train_probes(root)
    names = motion_data.list_clips(root, "test")[:max_clips]
    if not names:
        raise ValueError(f"{root} has no test clips")
    true_mouth, with_audio, without_audio, fit_mouth = [], [], [], []
    gaze_on, gaze_off, generated_motions = [], [], []
    from vasa_jax.sampling import Controls

    for i, name in enumerate(names):
        clip = motion_data.load_clip(root, "test", name)
        audio = clip["audio"]
        generated = sampler.sample(audio, num_steps=num_steps, seed=seed + i)
        nulled = sampler.sample(audio, num_steps=num_steps, seed=seed + i, null_audio=True)
        true_mouth.append(clip["mouth_open"])
        with_audio.append(apply_probe(probes["mouth"], generated))
        without_audio.append(apply_probe(probes["mouth"], nulled))
        fit_mouth.append(apply_probe(probes["mouth"], clip["motion"]))
        generated_motions.append(generated)
        steered = sampler.sample(audio, controls=Controls(gaze=np.asarray(requested_gaze)), num_steps=num_steps,
                                 seed=seed + i)
        gaze_on.append(np.median(apply_probe(probes["gaze"], steered), axis=0))
        gaze_off.append(np.median(apply_probe(probes["gaze"], generated), axis=0))
    true_mouth = np.concatenate(true_mouth)
    target = np.broadcast_to(np.asarray(requested_gaze, np.float64), (len(names), 2))
    return {
        "lip_sync_correlation": pearson(np.concatenate(with_audio), true_mouth),
        "lip_sync_correlation_audio_nulled": pearson(np.concatenate(without_audio), true_mouth),
        "mouth_probe_correlation_on_true_motion": pearson(np.concatenate(fit_mouth), true_mouth),
        "gaze_error_degrees": float(angular_error_degrees(np.stack(gaze_on), target).mean()),
        "gaze_error_degrees_gaze_nulled": float(angular_error_degrees(np.stack(gaze_off), target).mean()),
        **window_seams(generated_motions, sampler.cfg.window),
        "num_clips": len(names),
        "num_frames": int(len(true_mouth)),
    }


def main(argv):
    del argv
    from absl import flags

    from vasa_jax.sampling import MotionSampler, params_from_workdir

    flags_ = flags.FLAGS
    task, params = params_from_workdir(flags_.stage2)
    sampler = MotionSampler.from_task(task, params)
    result = known_answer(sampler, task.config.data.root, flags_.num_steps, flags_.max_clips)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("stage2", None, "stage-2 training workdir", required=True)
    flags.DEFINE_integer("num_steps", 50, "DDIM steps")
    flags.DEFINE_integer("max_clips", 16, "held-out clips to evaluate")
    app.run(main)
