"""Known-answer evaluation on synthetic data, and `python -m vasa_jax.evaluate`.

The synthetic renderer opens the mouth by a fixed monotone function of the audio's loudness, so for held-out
audio the true mouth opening is known.

Judged from pixels (what a viewer sees; needs a trained pixel judge, `vasa_jax.judge`):
  expression transfer (`expression_transfer`): stage 1 re-enacts a held-out portrait with the motion of every frame
            of its clip; mouth and eye PSNR against copying the portrait, the judge's mouth and eyes of the
            re-enacted frames against its reading of the true ones, and the eyes and gaze read by re-rendering
            (`eyes_by_synthesis`).
  lip sync  (`lip_sync_from_pixels`): the whole system animates a held-out portrait with held-out speech; the
            judge's mouth opening of the video against the speech's true mouth opening, beside its baselines
            (the judge on the true frames, another clip's speech, the audio condition nulled, the head pose alone)
            and gaze control (read by re-rendering with the pose, mouth and eyes fitted: `state_by_synthesis`).
On motion latents (stage 2 alone, `known_answer`): linear probes fitted on the training clips read the mouth
opening and the gaze out of the non-pose part of a motion vector (stage-1 z_dyn, or the renderer's state).
  lip sync: Pearson correlation between the probe's mouth opening on the generated motion and the true mouth
            opening of the held-out audio; with the audio condition nulled it should vanish.
  gaze:     mean angular error between a requested main gaze and the probe's gaze on the generated motion
            (the per-clip median), against the same with the gaze condition nulled.
  seams:    the generated motion's frame-to-frame change across window boundaries against inside windows
            (`window_seams`); no seam means a ratio of at most 1.

  python -m vasa_jax.evaluate --stage2 STAGE2_WORKDIR [--num_steps 50] [--max_clips 16]
  python -m vasa_jax.evaluate --stage2 STAGE2_WORKDIR --stage1 STAGE1_WORKDIR --judge JUDGE_DIR [--num_steps 10] \
      [--gaze_frames 5]
      (pixels: expression transfer, lip sync and gaze control; a judge folder without a judge gets one trained)

Any videos, ours or another system's (`evaluate_videos`, metrics in `vasa_jax.video_metrics`): per video and as
means, LSE-C / LSE-D (VASA's S_C / S_D) and the AV offset with SyncNet's weights, CSIM with ArcFace's (against the
portrait our generation's sidecar names, else the first frame), the pose variation delta-P from the frames, and
E_g / E_d against the controls the sidecar records; a metric without what it needs is skipped with a one-line
reason in the report.
  python -m vasa_jax.evaluate videos --generated=DIR|GLOB [--real=DIR|GLOB] --out=report.json \
      [--syncnet=syncnet_v2.model] [--arcface=ARCFACE.pth --arcface_depth=50]
"""

import functools
import json
import os
import sys
from typing import Dict

import numpy as np

from vasa_jax import storage
from vasa_jax.audio import frame_features
from vasa_jax.data import motion as motion_data


def fit_linear_probe(features: np.ndarray, targets: np.ndarray, ridge: float = 1e-3):
    """Least squares (with a small ridge) from features [N, M] to targets [N] or [N, D]: (weights, bias). The
    features are standardised for the fit, so the ridge shrinks every feature alike whatever its units (degrees
    of pose beside latents of std 0.01 would otherwise leave the latents shrunk away)."""
    x = np.asarray(features, np.float64)
    y = np.asarray(targets, np.float64)
    mean_x, mean_y = x.mean(0), y.mean(0)
    std_x = np.maximum(x.std(0), 1e-12)
    xc, yc = (x - mean_x) / std_x, y - mean_y
    weights = np.linalg.solve(xc.T @ xc + ridge * len(x) * np.eye(x.shape[1]), xc.T @ yc)
    weights = weights / (std_x[:, None] if weights.ndim == 2 else std_x)
    return weights, mean_y - mean_x @ weights


def apply_probe(probe, features: np.ndarray) -> np.ndarray:
    weights, bias = probe
    return np.asarray(features, np.float64) @ weights + bias


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def partial_correlation(a: np.ndarray, b: np.ndarray, controls: np.ndarray) -> float:
    """Pearson correlation of a [N] and b [N] with the linear effect of controls [N, C] removed from both: what
    relates a to b beyond what the controls explain."""
    design = np.concatenate([np.asarray(controls, np.float64).reshape(len(a), -1), np.ones((len(a), 1))], axis=1)
    residual = lambda v: v - design @ np.linalg.lstsq(design, np.asarray(v, np.float64), rcond=None)[0]
    return pearson(residual(a), residual(b))


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


def expression_columns(root: str) -> slice:
    """The columns of a motion dataset's motion vectors that are not head pose: the probes read the mouth and the
    gaze from these only (the synthetic speakers nod with their speech, so a probe that may read the pose reads
    the nodding)."""
    source = motion_data.read_json(storage.join(root, motion_data.MANIFEST)).get("motion_source")
    pose_dims = {"ground_truth": 6, "stage1": 7}  # motion.ground_truth_motion; stage-1 z_pose
    if source not in pose_dims:
        raise ValueError(f"{root}: unknown motion source {source!r}")
    return slice(pose_dims[source], None)


def train_probes(root: str) -> Dict[str, tuple]:
    """Probes motion -> mouth opening and motion -> per-frame gaze, fitted on the train clips of a synthetic
    motion dataset (which keeps the ground truth), on the non-pose columns (`expression_columns`). Apply them
    with `apply_probe(probe, motion[:, expression_columns(root)])`."""
    columns = expression_columns(root)
    motions, mouths, gazes = [], [], []
    for name in motion_data.list_clips(root, "train"):
        clip = motion_data.load_clip(root, "train", name)
        if "mouth_open" not in clip or "frame_gaze" not in clip:
            raise ValueError(f"{root}: clip {name} has no ground truth; the known-answer test needs synthetic data")
        motions.append(clip["motion"][:, columns])
        mouths.append(clip["mouth_open"])
        gazes.append(clip["frame_gaze"])
    motions = np.concatenate(motions)
    return {"mouth": fit_linear_probe(motions, np.concatenate(mouths)),
            "gaze": fit_linear_probe(motions, np.concatenate(gazes))}


def known_answer(sampler, root: str, num_steps: int = 50, max_clips: int = 16, seed: int = 0,
                 requested_gaze=(15.0, -8.0)) -> Dict[str, float]:
    """Lip-sync correlations (audio on / nulled) and gaze errors (gaze on / nulled) on held-out synthetic clips."""
    probes, columns = train_probes(root), expression_columns(root)
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
        with_audio.append(apply_probe(probes["mouth"], generated[:, columns]))
        without_audio.append(apply_probe(probes["mouth"], nulled[:, columns]))
        fit_mouth.append(apply_probe(probes["mouth"], clip["motion"][:, columns]))
        generated_motions.append(generated)
        steered = sampler.sample(audio, controls=Controls(gaze=np.asarray(requested_gaze)), num_steps=num_steps,
                                 seed=seed + i)
        gaze_on.append(np.median(apply_probe(probes["gaze"], steered[:, columns]), axis=0))
        gaze_off.append(np.median(apply_probe(probes["gaze"], generated[:, columns]), axis=0))
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


# ------------------------------------------------------------------------------------ pixel-judged measures
# Stage 1 and the whole system judged from the frames they render, by the pixel judge (`vasa_jax.judge`): a network
# with its own weights, trained only on true rendered frames with independent labels.


def held_out_clips(data, count: int) -> list:
    """`count` synthetic clips that no stage has trained on: clips of the TEST identities (which stage 1, stage 2 and
    the judge never see) with clip indices past the dataset's own (speech never heard), cycling over identities."""
    from vasa_jax.data import synthetic

    ids = synthetic.identity_ids(data, "test")
    return [synthetic.get_clip(data, int(ids[i % len(ids)]), data.clips_per_identity + i // len(ids))
            for i in range(count)]


def portrait_index(clip) -> int:
    """The clip's most neutral frame (mouth closed, eyes open): the portrait a user would give."""
    states = clip.states
    return int(np.argmin(np.asarray(states.mouth_open) + 2.0 * (1.0 - np.asarray(states.eye_open))))


def region_psnr(prediction: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """PSNR [T] of uint8 frames [T, H, W, 3] against the target frames inside masks [T, H, W] (0/1)."""
    error = np.mean((prediction.astype(np.float64) - target.astype(np.float64)) ** 2, axis=-1) / 255.0**2
    mask = mask.astype(np.float64)
    mse = (error * mask).sum(axis=(1, 2)) / np.maximum(mask.sum(axis=(1, 2)), 1.0)
    return 10.0 * np.log10(1.0 / np.maximum(mse, 1e-10))


# What `eyes_by_synthesis` reads, each from a grid over the synthetic clips' range, in the order it fits them (one
# at a time, the others at their current reading), and where each starts (open eyes looking ahead). Theta is fitted
# again once phi is known.
_GAZE_THETA_GRID = np.arange(-30.0, 30.01, 2.5)
EYE_READINGS = (("eye_open", np.linspace(0.0, 1.0, 11), False), ("gaze_theta", _GAZE_THETA_GRID, False),
                ("gaze_phi", np.arange(-20.0, 20.01, 2.5), False), ("gaze_theta", _GAZE_THETA_GRID, False))
EYE_READING_START = {"eye_open": 1.0, "gaze_theta": 0.0, "gaze_phi": 0.0}

# What `state_by_synthesis` fits before the eyes, over the whole frame: the head angles and translation as steps
# around the current reading (degrees; normalised image units), coarse then fine, the scale and the mouth from their
# ranges (the mouth moves the jaw, which the pose fit would otherwise absorb).
_ANGLE_STEPS, _FINE_ANGLE_STEPS = np.arange(-12.0, 12.01, 1.5), np.arange(-1.5, 1.51, 0.5)
_SHIFT_STEPS = np.arange(-0.08, 0.0801, 0.01)
POSE_READINGS = (("yaw", _ANGLE_STEPS, True), ("pitch", _ANGLE_STEPS, True), ("roll", _ANGLE_STEPS, True),
                 ("tx", _SHIFT_STEPS, True), ("ty", _SHIFT_STEPS, True), ("scale", np.arange(0.88, 1.121, 0.02), False),
                 ("mouth_open", np.linspace(0.0, 1.0, 11), False),
                 ("yaw", _ANGLE_STEPS / 4, True), ("pitch", _ANGLE_STEPS / 4, True), ("roll", _ANGLE_STEPS / 4, True),
                 ("tx", _SHIFT_STEPS / 4, True), ("ty", _SHIFT_STEPS / 4, True),
                 ("yaw", _FINE_ANGLE_STEPS, True), ("pitch", _FINE_ANGLE_STEPS, True))
# Once the eyes are read: the pose again in small steps around its first reading.
POSE_REFINEMENT = (("yaw", _FINE_ANGLE_STEPS, True), ("pitch", _FINE_ANGLE_STEPS, True),
                   ("roll", _FINE_ANGLE_STEPS, True), ("tx", _SHIFT_STEPS / 4, True), ("ty", _SHIFT_STEPS / 4, True),
                   ("mouth_open", np.linspace(0.0, 1.0, 11), False))


def fit_by_synthesis(images: Dict[str, np.ndarray], identity, states, resolution: int, masks, readings,
                     start: Dict[str, object]) -> Dict[str, Dict[str, np.ndarray]]:
    """Fit fields of frames of a known synthetic identity by re-rendering them. For each image set of `images`
    ({name: uint8 [T, S, S, 3]}), the fields of `readings` ((field, grid, relative) in order; relative grids are
    steps added to the current reading, others absolute values) are fitted one at a time: every
    value of the grid is rendered with the rest of `states` (T frames) and the current readings, and the value whose
    pixels inside `masks` ([T, S, S] 0/1, or None: the whole frame) are closest in squared error is the new reading.
    `start` gives each fitted field's first reading (a number or [T]). Renders are shared between image sets where
    their candidates agree. Returns {name: {field: [T]}}."""
    from vasa_jax.data import synthetic

    n = len(states)
    mask = 1.0 if masks is None else masks.astype(np.float64)[..., None]
    targets = {name: frames.astype(np.float64) for name, frames in images.items()}
    found = {name: {field: np.broadcast_to(np.asarray(value, np.float64), (n,)).copy()
                    for field, value in start.items()} for name in images}
    for field, grid, relative in readings:
        grid = np.asarray(grid, np.float64)
        if relative:
            candidates = {name: found[name][field][None] + grid[:, None] for name in images}
        else:
            candidates = {name: np.broadcast_to(grid[:, None], (len(grid), n)) for name in images}
        errors = {name: np.zeros((len(grid), n)) for name in images}
        for index in range(len(grid)):
            renders = {}
            for name, target in targets.items():
                candidate = dict(found[name], **{field: candidates[name][index]})
                key = np.stack(list(candidate.values())).tobytes()
                if key not in renders:
                    renders[key] = synthetic.render_frames(identity, states.replace(**candidate),
                                                           resolution).astype(np.float64)
                errors[name][index] = (((renders[key] - target) ** 2) * mask).sum(axis=(1, 2, 3))
        for name in images:
            # Neighbouring values can render the same pixels at 64 x 64 (and any gaze does behind closed lids): the
            # reading is the mean of the tied best.
            best = errors[name] <= errors[name].min(axis=0, keepdims=True) + 1e-6
            found[name][field] = (candidates[name] * best).sum(0) / best.sum(0)
    return found


def eyes_by_synthesis(images: Dict[str, np.ndarray], identity, states, resolution: int,
                      eye_masks: np.ndarray) -> Dict[str, Dict[str, np.ndarray]]:
    """Read the eye openness and the gaze of frames of a known synthetic identity by re-rendering them: each frame is
    rendered at its known pose and mouth with every value of a grid (`EYE_READINGS`), and the value whose eye
    region (`eye_masks` [T, S, S], 0/1) is closest in squared error to the frame's is its reading. The fit runs for
    each image set of `images` ({name: uint8 [T, S, S, 3]}, all meant to show `states`), sharing renders where the
    candidates agree. Returns {name: {"eye_open", "gaze_theta", "gaze_phi": [T]}}.

    The learned judge cannot read gaze at 64 x 64 (an iris moves a pixel or two) and reads eye openness unevenly
    from run to run (r 0.6 to 0.8 on held-out identities; see NOTES.md); the renderer itself can, given the rest of
    the state, so this reads whether the driving frame's eyes reached the pixels of a re-enacted frame whose pose
    and mouth are the driving frame's."""
    return fit_by_synthesis(images, identity, states, resolution, eye_masks, EYE_READINGS, EYE_READING_START)


def state_by_synthesis(frames: np.ndarray, identity, portrait_state, judged: Dict[str, np.ndarray],
                       resolution: int) -> Dict[str, np.ndarray]:
    """Read the whole state of frames of a known synthetic identity whose pose is unknown (a generated video), by
    re-rendering: the head pose (yaw, pitch, roll from the judge's reading `judged`, the translation and scale from
    the portrait's state) and the mouth are fitted over the whole frame (`POSE_READINGS`), then the eyes and the gaze
    inside the eye region of the fitted state's render (`EYE_READINGS`). `frames` uint8 [T, S, S, 3];
    `portrait_state` the portrait frame's state (its emotion and anything not fitted are kept). Returns {field: [T]}
    for the pose fields, mouth_open, eye_open, gaze_theta and gaze_phi."""
    from vasa_jax.data import synthetic

    n = len(frames)
    states = synthetic.FrameState(**{field: np.repeat(np.asarray(getattr(portrait_state, field))[None], n, axis=0)
                                     for field in synthetic.FrameState.__dataclass_fields__})
    start = {"yaw": judged["yaw"], "pitch": judged["pitch"], "roll": judged["roll"], "tx": states.tx,
             "ty": states.ty, "scale": states.scale, "mouth_open": states.mouth_open}
    readings = POSE_READINGS
    for _ in range(2):  # the pose fitted with the eyes as they were read, then the eyes at that pose, twice
        pose = fit_by_synthesis({"frames": frames}, identity, states, resolution, None, readings, start)["frames"]
        states = states.replace(**pose)
        _, labels = synthetic.render_frames(identity, states, resolution, return_labels=True)
        eyes = eyes_by_synthesis({"frames": frames}, identity, states, resolution,
                                 synthetic.face_regions(labels)[..., 1])["frames"]
        states = states.replace(**eyes)
        readings, start = POSE_REFINEMENT, pose
    return dict(pose, **eyes)


def stage1_reenactor(workdir: str, batch_size: int = 25):
    """(reenact, stage-1 config) from the latest checkpoint of a stage-1 workdir: reenact(source uint8 [S, S, 3],
    driving uint8 [T, S, S, 3]) renders the source with the pose and dynamics of every driving frame, uint8;
    with `own_dynamics=True` it keeps the source's own dynamics and takes only the driving pose (the baseline of
    what pose alone renders)."""
    import jax

    from vasa_jax.checkpoints import load_stage1
    from vasa_jax.models.stage1 import FaceLatentModel

    stage1 = load_stage1(workdir)
    params, model, config = stage1.params, stage1.model, stage1.config
    apply = lambda method, *args: model.apply({"params": params}, *args, method=method)

    @functools.partial(jax.jit, static_argnums=2)
    def render(source, driving, own_dynamics):
        volume, z_id, pose_s, dyn_s = apply(FaceLatentModel.encode, source)
        pose_d, dyn_d = apply(FaceLatentModel.encode_motion, driving)
        tile = lambda x: jax.numpy.broadcast_to(x, (len(driving),) + x.shape[1:])
        dyn_d = tile(dyn_s) if own_dynamics else dyn_d
        image = apply(FaceLatentModel.decode, tile(volume), tile(z_id), tile(pose_s), tile(dyn_s), pose_d, dyn_d,
                      tile(source))
        return jax.numpy.round(jax.numpy.clip(image, 0.0, 1.0) * 255.0).astype(jax.numpy.uint8)

    def reenact(source, driving, own_dynamics=False):
        source = np.asarray(source, np.float32)[None] / 255.0
        out = []
        for start in range(0, len(driving), batch_size):
            chunk = np.asarray(driving[start : start + batch_size], np.float32) / 255.0
            n = len(chunk)
            if n < batch_size:  # one compiled shape
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - n, axis=0)])
            out.append(np.asarray(render(source, chunk, bool(own_dynamics)))[:n])
        return np.concatenate(out)

    return reenact, config


def expression_transfer(reenact, judge, clips, resolution: int, expression_change: float = 0.5,
                        eyes_every: int = 5) -> Dict:
    """Stage 1 alone, judged from pixels. For each clip the portrait frame (`portrait_index`) is re-enacted with the
    motion of every frame of the clip (`reenact(source uint8 [S, S, 3], driving uint8 [T, S, S, 3])` -> uint8
    [T, S, S, 3]) and compared with the true frames:
      mouth (eye) PSNR gain over copying the portrait, inside the driving frame's mouth (eye) region, on the frames
      whose mouth opening (eye openness) differs from the portrait's by more than `expression_change`;
      the judge's mouth opening and eye openness of the re-enacted frames against its reading of the true frames
      (Pearson r, pooled over all frames; per clip as well);
      the same r with the portrait's own dynamics and only the driving pose (`own_dynamics`, the baseline of what
      the head's motion alone renders: near 0 if expression reaches the pixels through z_dyn);
      the eye openness and gaze (theta, phi) of every `eyes_every`-th frame read by re-rendering
      (`eyes_by_synthesis`; the judge cannot read gaze at 64 x 64) against the clip's true values (Pearson r pooled
      over clips, `rerendered_r_...`; the gaze on the frames whose eyes are more than half open), for the
      re-enacted frames, the own-dynamics baseline and the true frames (how well the reading works: the ceiling)."""
    from vasa_jax.data import synthetic

    pooled = {name: ([], [], []) for name in ("mouth_open", "eye_open")}
    eye_sets = ("reenacted", "own_dynamics", "true")
    eyes_read = {name: [] for name in eye_sets + ("label",)}
    gains = {"mouth": [], "eyes": []}
    per_clip = []
    for clip in clips:
        frames, labels = synthetic.render_clip(clip, resolution, return_labels=True)
        regions = synthetic.face_regions(labels)
        source = portrait_index(clip)
        rendered = np.asarray(reenact(frames[source], frames))
        copied = np.broadcast_to(frames[source], frames.shape)
        truth = {"mouth": np.asarray(clip.states.mouth_open), "eyes": np.asarray(clip.states.eye_open)}
        row = {"identity": int(clip.identity_id)}
        for index, region in enumerate(("mouth", "eyes")):
            changed = np.abs(truth[region] - truth[region][source]) > expression_change
            gain = (region_psnr(rendered, frames, regions[..., index])
                    - region_psnr(copied, frames, regions[..., index]))[changed]
            gains[region].append(gain)
            row[f"{region}_gain_db"] = float(gain.mean()) if len(gain) else None
        own_dynamics = np.asarray(reenact(frames[source], frames, own_dynamics=True))
        judged, judged_true, judged_pose_only = judge.read(rendered), judge.read(frames), judge.read(own_dynamics)
        every = slice(None, None, eyes_every)
        read = eyes_by_synthesis({"reenacted": rendered[every], "own_dynamics": own_dynamics[every],
                                  "true": frames[every]}, clip.identity, clip.states[every], resolution,
                                 regions[every, ..., 1])
        for name in eye_sets:
            eyes_read[name].append(read[name])
        eyes_read["label"].append({field: np.asarray(getattr(clip.states, field))[every]
                                   for field in EYE_READING_START})
        for name, (ours, reference, pose_only) in pooled.items():
            ours.append(judged[name])
            reference.append(judged_true[name])
            pose_only.append(judged_pose_only[name])
            row[f"judge_r_{name}"] = pearson(judged[name], judged_true[name])
        per_clip.append(row)
    result = {"num_clips": len(clips), "num_frames": int(sum(len(c.states) for c in clips)), "per_clip": per_clip}
    for region in ("mouth", "eyes"):
        gain = np.concatenate(gains[region])
        result[f"{region}_pairs"] = int(len(gain))
        result[f"{region}_psnr_gain_over_copy_db"] = float(gain.mean()) if len(gain) else None
    for name, (ours, reference, pose_only) in pooled.items():
        result[f"judge_r_{name}"] = pearson(np.concatenate(ours), np.concatenate(reference))
        result[f"judge_r_{name}_own_dynamics"] = pearson(np.concatenate(pose_only), np.concatenate(reference))
    pooled_reading = lambda name, field: np.concatenate([row[field] for row in eyes_read[name]])
    open_eyes = pooled_reading("label", "eye_open") > 0.5  # closed lids hide the gaze
    for field in EYE_READING_START:
        rows = open_eyes if field.startswith("gaze") else slice(None)
        for name in eye_sets:
            suffix = "" if name == "reenacted" else f"_{name}"
            result[f"rerendered_r_{field}{suffix}"] = pearson(pooled_reading(name, field)[rows],
                                                              pooled_reading("label", field)[rows])
    return result


def pose_only_probe(data, num_identities: int = 32) -> tuple:
    """A linear probe from the TRUE head pose (yaw, pitch, roll) to the mouth opening, fitted on clips of the train
    identities: what nodding alone explains of the mouth (the synthetic speakers nod with their speech)."""
    from vasa_jax.data import synthetic

    poses, mouths = [], []
    for identity_id in synthetic.identity_ids(data, "train")[:num_identities]:
        for clip_index in range(data.clips_per_identity):
            clip = synthetic.get_clip(data, int(identity_id), clip_index)
            poses.append(synthetic.pose_vector(clip.states)[:, :3])
            mouths.append(np.asarray(clip.states.mouth_open))
    return fit_linear_probe(np.concatenate(poses), np.concatenate(mouths))


def lip_sync_from_pixels(pipeline, judge, clips, data, num_steps: int = 10, seed: int = 0,
                         requested_gaze=(15.0, -8.0), gaze_frames: int = 0) -> Dict:
    """The whole system judged from pixels, on held-out clips: each clip's portrait frame (`portrait_index`) is
    animated with the clip's speech by `pipeline` (a `vasa_jax.generate.TalkingHeadPipeline`), and the judge reads
    the generated frames. Per clip and as the mean over clips:
      lip_sync_r               judge's mouth opening of the generated video vs the true mouth opening of the speech
      lip_sync_r_pose_removed  the same with what the judged head pose of the video explains removed from both
                               (partial correlation): the generated heads nod with the speech, as the data's do
      ceiling_r                the judge on the true frames vs the same (the measure's ceiling)
      mismatched_r             the generated video vs ANOTHER clip's true mouth opening (chance level)
      audio_nulled_r           generated with the audio condition nulled vs the true mouth opening
      pose_only_true_r         what the true head pose alone predicts of the mouth (`pose_only_probe`): nodding
      pose_only_generated_r    the same probe on the judge's head pose of the generated video
      mouth_std_ratio          std of the judge's mouth opening, generated over true frames
      gaze_error_degrees       judge's gaze (median over frames) of a video generated with `requested_gaze` vs it,
      gaze_error_degrees_gaze_nulled   and of the video generated without a gaze condition (the judge cannot read
                               gaze at 64 x 64: see the re-rendered reading below).
    With `gaze_frames` > 0, the gaze of that many evenly spaced frames per video is read by re-rendering
    (`state_by_synthesis`: the head pose, mouth and eyes fitted, since a generated frame's state is unknown), and
    the median over the frames whose eyes are read open is compared with the requested gaze:
      rerendered_gaze_error_degrees, rerendered_gaze_error_degrees_gaze_nulled   as above;
      rerendered_gaze_error_degrees_true   the same reading of the true frames against their own true median gaze
                               (the reading's error: what a perfect video would score)."""
    from vasa_jax.data import synthetic
    from vasa_jax.sampling import Controls

    pose_probe = pose_only_probe(data)
    rows, generated_mouths, true_mouths = [], [], []
    for index, clip in enumerate(clips):
        frames = synthetic.render_clip(clip, pipeline.resolution)
        source = pipeline.encode_source(frames[portrait_index(clip)])
        features = frame_features(pipeline.audio_encoder, clip.audio)

        def animate(**kwargs):
            motion = pipeline.sampler.sample(features, num_steps=num_steps, seed=seed + index, **kwargs)
            video = pipeline.render(source, motion)
            return video, judge.read(video)

        (generated_video, generated), (_, nulled) = animate(), animate(null_audio=True)
        steered_video, steered = animate(controls=Controls(gaze=np.asarray(requested_gaze, np.float32)))
        true_frames = judge.read(frames)
        mouth = np.asarray(clip.states.mouth_open, np.float64)
        gaze_of = lambda readings: np.median(np.stack([readings["gaze_theta"], readings["gaze_phi"]], -1), axis=0)
        judged_pose = np.stack([generated["yaw"], generated["pitch"], generated["roll"]], -1)
        rows.append({
            "identity": int(clip.identity_id),
            "lip_sync_r": pearson(generated["mouth_open"], mouth),
            "lip_sync_r_pose_removed": partial_correlation(generated["mouth_open"], mouth, judged_pose),
            "ceiling_r": pearson(true_frames["mouth_open"], mouth),
            "audio_nulled_r": pearson(nulled["mouth_open"], mouth),
            "pose_only_true_r": pearson(apply_probe(pose_probe, synthetic.pose_vector(clip.states)[:, :3]), mouth),
            "pose_only_generated_r": pearson(apply_probe(pose_probe, judged_pose), mouth),
            "mouth_std_ratio": float(np.std(generated["mouth_open"]) / max(np.std(true_frames["mouth_open"]), 1e-9)),
            "gaze_error_degrees": float(angular_error_degrees(gaze_of(steered)[None], [requested_gaze])[0]),
            "gaze_error_degrees_gaze_nulled": float(
                angular_error_degrees(gaze_of(generated)[None], [requested_gaze])[0]),
        })
        if gaze_frames > 0:
            rows[-1].update(gaze_errors_by_synthesis(
                clip, {"steered": (steered_video, steered), "generated": (generated_video, generated),
                       "true": (frames, true_frames)}, gaze_frames, requested_gaze, pipeline.resolution))
        generated_mouths.append(generated["mouth_open"])
        true_mouths.append(mouth)
    for index, row in enumerate(rows):  # the generated video against the next clip's speech
        other = true_mouths[(index + 1) % len(rows)]
        n = min(len(other), len(generated_mouths[index]))
        row["mismatched_r"] = pearson(generated_mouths[index][:n], other[:n])
    keys = [k for k in rows[0] if k != "identity"]
    result = {key: float(np.mean([row[key] for row in rows])) for key in keys}
    result["lip_sync_r_pooled"] = pearson(np.concatenate(generated_mouths), np.concatenate(true_mouths))
    result.update(num_clips=len(rows), num_steps=int(num_steps), requested_gaze=list(requested_gaze), per_clip=rows)
    return result


def gaze_errors_by_synthesis(clip, videos, num_frames: int, requested_gaze, resolution: int) -> Dict[str, float]:
    """The gaze-control errors of one synthetic clip's videos, read by re-rendering (`state_by_synthesis`) on
    `num_frames` evenly spaced frames: `videos` {"steered", "generated", "true": (frames uint8 [T, S, S, 3], the
    judge's readings, whose yaw, pitch and roll start the pose fit)}. The main gaze of a video is the median over
    the frames read with open eyes; "steered" and "generated" are compared with `requested_gaze`, "true" with the
    clip's own median gaze on those frames. Returns the `rerendered_gaze_error_degrees...` figures of
    `lip_sync_from_pixels`."""
    picked = np.unique(np.linspace(0, len(clip.states) - 1, num_frames).round().astype(int))
    portrait = clip.states[portrait_index(clip)]
    main_gaze = {}
    for name, (video, judged) in videos.items():
        found = state_by_synthesis(video[picked], clip.identity, portrait,
                                   {field: judged[field][picked] for field in ("yaw", "pitch", "roll")}, resolution)
        seen = found["eye_open"] > 0.5  # closed lids hide the gaze
        seen = seen if seen.any() else np.ones_like(seen)
        main_gaze[name] = np.median(np.stack([found["gaze_theta"], found["gaze_phi"]], -1)[seen], axis=0)
    true_gaze = np.median(np.stack([np.asarray(clip.states.gaze_theta), np.asarray(clip.states.gaze_phi)],
                                   -1)[picked], axis=0)
    error = lambda gaze, target: float(angular_error_degrees(gaze[None], np.asarray(target)[None])[0])
    return {"rerendered_gaze_error_degrees": error(main_gaze["steered"], requested_gaze),
            "rerendered_gaze_error_degrees_gaze_nulled": error(main_gaze["generated"], requested_gaze),
            "rerendered_gaze_error_degrees_true": error(main_gaze["true"], true_gaze)}


def from_pixels(stage1_dir: str, stage2_dir: str, judge, num_clips: int = 16, num_steps: int = 10,
                seed: int = 0, gaze_frames: int = 0) -> Dict:
    """Both pixel-judged evaluations of a stage-1 and a stage-2 workdir trained on synthetic data, on `num_clips`
    held-out clips of the stage-1 config's synthetic dataset; `gaze_frames` frames per video read by re-rendering
    for gaze control (`lip_sync_from_pixels`)."""
    from vasa_jax.data import synthetic
    from vasa_jax.generate import TalkingHeadPipeline

    reenact, config = stage1_reenactor(stage1_dir)
    if config.data.source != "synthetic":
        raise ValueError(f"{stage1_dir} was trained on {config.data.source} data; the pixel judge knows synthetic")
    data = synthetic.from_stage1_config(config)
    if judge.resolution != data.resolution:
        raise ValueError(f"the judge reads {judge.resolution}x{judge.resolution} frames, stage 1 renders "
                         f"{data.resolution}x{data.resolution}")
    clips = held_out_clips(data, num_clips)
    pipeline = TalkingHeadPipeline.from_workdirs(stage1_dir, stage2_dir, crop="center")
    return {
        "expression_transfer": expression_transfer(reenact, judge, clips, data.resolution,
                                                   config.train.expression_change),
        "lip_sync": lip_sync_from_pixels(pipeline, judge, clips, data, num_steps=num_steps, seed=seed,
                                         gaze_frames=gaze_frames),
    }


def video_paths(spec: str) -> list:
    """A folder (its .mp4 files) or a glob pattern -> sorted paths; ValueError when nothing matches."""
    import glob

    paths = sorted(glob.glob(os.path.join(spec, "*.mp4")) if os.path.isdir(spec) else glob.glob(spec))
    if not paths:
        raise ValueError(f"no videos in {spec!r} (a folder of .mp4 files or a glob pattern)")
    return paths


def evaluate_videos(generated: str, real: str | None = None, syncnet_path: str | None = None,
                    arcface_path: str | None = None, arcface_depth: int = 50, i3d_path: str | None = None,
                    capp_dir: str | None = None, log=print) -> dict:
    """`python -m vasa_jax.evaluate videos`: the video metrics (`vasa_jax.video_metrics.evaluate_video`) of every
    generated video, and of the real ones when given, per video and as means, and FVD_25 of the sets
    (`video_metrics.fvd_of_sets`); weights that are not given or do not load become one-line reasons in the
    report."""
    from vasa_jax import audio, video, video_metrics
    from vasa_jax.generate import load_image, sidecar_path

    from vasa_jax.checkpoints import load_capp
    from vasa_jax.models.arcface import load_arcface_params
    from vasa_jax.models.i3d import load_i3d
    from vasa_jax.models.syncnet import load_syncnet

    reasons = {}

    def load(path, metric, what, loader):
        """loader(path), or None with the failure as the metric's reason (None too when no path was given)."""
        if not path:
            return None
        try:
            return loader(path)
        except (OSError, ValueError) as err:
            reasons[metric] = f"{what}: {err}"
            return None

    syncnet_variables = load(syncnet_path, "lse", "SyncNet weights", load_syncnet)
    arcface = load(arcface_path, "csim", "ArcFace weights",
                   lambda path: (load_arcface_params(path, arcface_depth), arcface_depth))
    capp_model = load(capp_dir, "capp", "CAPP model", load_capp)
    capp = None if capp_model is None else (video_metrics.capp_scorer(capp_model), capp_model.audio_encoder,
                                            capp_model.model_cfg.window)
    i3d_variables = load(i3d_path, "fvd", "I3D weights", load_i3d)
    if not i3d_path:
        reasons["fvd"] = "no I3D weights given (--i3d=i3d_pretrained_400.pt)"
    report, clip_features = {}, {}
    for name, spec in (("generated", generated), ("real", real)):
        if not spec:
            continue
        per_video = {}
        for path in video_paths(spec):
            frames = np.stack(list(video.iter_video_frames(path)))
            try:
                waveform = audio.load_audio(path)
            except ValueError:  # no audio stream
                waveform = None
            requested, reference = None, None
            if os.path.isfile(sidecar_path(path)):  # how our command line generated it
                with open(sidecar_path(path)) as fh:
                    requested = json.load(fh)
                if requested.get("image") and os.path.isfile(requested["image"]):
                    reference = np.round(load_image(requested["image"]) * 255).astype(np.uint8)
            metrics = video_metrics.evaluate_video(frames, waveform, syncnet_variables=syncnet_variables,
                                                   arcface=arcface, reference=reference, requested=requested,
                                                   capp=capp)
            metrics["skipped"].update({k: v for k, v in reasons.items() if k in metrics["skipped"]})
            if i3d_variables is not None:
                features = video_metrics.fvd_features(i3d_variables, frames)
                clip_features.setdefault(name, []).append(features)
                metrics["fvd_clips"] = len(features)
            per_video[path] = metrics
            log(f"{name} {path}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()
                                                if isinstance(v, float)))
        report[name] = {"summary": video_metrics.summarise(per_video), "videos": per_video}
    if i3d_variables is not None:
        sets = {name: np.concatenate(parts) for name, parts in clip_features.items()}
        fvd = video_metrics.fvd_of_sets(sets.get("generated"), sets.get("real"))
        for name in report:
            if name in fvd["fvd"]:
                report[name]["summary"]["fvd"] = fvd["fvd"][name]
            report[name]["summary"]["fvd_clips"] = len(sets.get(name, ()))
            if name in fvd["skipped"]:
                report[name]["summary"].setdefault("skipped", {})["fvd"] = fvd["skipped"][name]
    else:
        for name in report:
            report[name]["summary"].setdefault("skipped", {})["fvd"] = reasons["fvd"]
    report["table"] = video_metrics.table({name: part["summary"] for name, part in report.items()})
    return report


def benchmark(pipeline, videos: str, out_dir: str, samples: int = 3, num_steps: int = 50, metric_weights=None,
              model_name: str = "", log=print) -> dict:
    """VASA-1's protocol on held-out real talking-head videos (`python -m vasa_jax.evaluate benchmark`): for each
    video of `videos` (a folder or glob of mp4s with speech), its first frame is the portrait and its own speech
    the audio; `samples` videos are generated per audio (seeds 0..samples-1; VASA-1 averages 3), written with
    their sidecars under `out_dir/generated`, and every metric of `evaluate_videos` is computed for them against
    the real videos (`metric_weights`: its keyword arguments for the weights). Videos without speech are listed
    with the reason and left out."""
    from vasa_jax import audio, video
    from vasa_jax.generate import sidecar_path
    from PIL import Image

    portraits, generated = os.path.join(out_dir, "portraits"), os.path.join(out_dir, "generated")
    os.makedirs(portraits, exist_ok=True)
    os.makedirs(generated, exist_ok=True)
    left_out = {}
    for path in video_paths(videos):
        stem = os.path.splitext(os.path.basename(path))[0]
        try:
            speech = audio.load_audio(path)
        except ValueError as err:
            left_out[path] = f"no speech: {err}"
            continue
        first = next(iter(video.iter_video_frames(path)))
        portrait = os.path.join(portraits, stem + ".png")
        Image.fromarray(first).save(portrait)
        for seed in range(samples):
            out = os.path.join(generated, f"{stem}_s{seed}.mp4")
            result = pipeline.generate(portrait, speech, num_steps=num_steps, seed=seed)
            video.write_mp4(out, result.frames, fps=int(result.fps), audio=speech, sample_rate=result.sample_rate)
            storage.write_json(sidecar_path(out), {
                "image": os.path.abspath(portrait), "audio": os.path.abspath(path), "gaze": None, "distance": None,
                "emotion": None, "num_steps": num_steps, "seed": seed, "crop": pipeline.crop, "paste_back": False,
                "model": model_name})
            log(f"generated {out} ({len(result.frames)} frames)")
    report = evaluate_videos(generated, videos, log=log, **(metric_weights or {}))
    report["protocol"] = {"videos": videos, "samples_per_audio": samples, "num_steps": num_steps,
                          "portrait": "each video's first frame", "audio": "each video's own speech",
                          "model": model_name, "left_out": left_out}
    return report


CAPP_SHIFTS = (0, 1, 2, 3, 4, 25)  # VASA-1's Table 3 (frames 0..4) and 1 s


def capp_shift_report(capp_dir: str, split: str = "test", shifts=CAPP_SHIFTS) -> dict:
    """VASA-1's Table 3 for a trained CAPP on its own data's `split`: the mean score of the true pose-audio pairs
    and of the same pairs with the audio shifted by +-k frames (+k and -k averaged, as the table's "+-k"), over the
    same windows for every shift."""
    from vasa_jax import video_metrics
    from vasa_jax.checkpoints import load_capp
    from vasa_jax.data import capp as capp_data

    capp_model = load_capp(capp_dir)
    clips = capp_data.clips_for_config(capp_model.config.data, split, capp_model.audio_encoder)
    if not clips:
        raise ValueError(f"the {split} split of {capp_dir}'s data has no clip with speech")
    signed = sorted({s * k for k in shifts for s in (1, -1)})
    table = video_metrics.capp_shift_table(video_metrics.capp_scorer(capp_model), clips,
                                           capp_model.model_cfg.window, signed)
    return {"split": split, "clips": len(clips), "signed": {str(k): v for k, v in table.items()},
            "shift": {str(k): 0.5 * (table[k] + table[-k]) for k in shifts}}


def main(argv):
    from absl import app, flags

    from vasa_jax.checkpoints import load_stage2
    from vasa_jax.sampling import MotionSampler

    flags_ = flags.FLAGS
    weights = dict(syncnet_path=flags_.syncnet, arcface_path=flags_.arcface, arcface_depth=flags_.arcface_depth,
                   i3d_path=flags_.i3d, capp_dir=flags_.capp)
    if argv[1:] == ["benchmark"]:
        from vasa_jax.generate import TalkingHeadPipeline

        if not flags_.videos or not flags_.out or not (flags_.model or (flags_.stage1 and flags_.stage2)):
            raise app.UsageError("benchmark mode needs --videos (held-out real mp4s), --out (a folder) and --model "
                                 "(or --stage1 and --stage2)")
        try:
            if flags_.model:
                pipeline = TalkingHeadPipeline.from_model(flags_.model)
            else:
                pipeline = TalkingHeadPipeline.from_workdirs(flags_.stage1, flags_.stage2)
            report = benchmark(pipeline, flags_.videos, flags_.out, flags_.samples, flags_.num_steps, weights,
                               flags_.model or f"{flags_.stage1} + {flags_.stage2}")
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(1)
        storage.write_json(os.path.join(flags_.out, "report.json"), report)
        print(report["table"])
        return
    if argv[1:] == ["videos"]:
        if not flags_.generated or not flags_.out:
            raise app.UsageError("videos mode needs --generated (a folder or glob of mp4s) and --out (report.json)")
        try:
            report = evaluate_videos(flags_.generated, flags_.real, **weights)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(1)

        storage.write_json(flags_.out, report)
        print(report["table"])
        return
    if argv[1:] == ["capp_shifts"]:
        if not flags_.capp:
            raise app.UsageError("capp_shifts mode needs --capp (a CAPP training workdir)")
        report = capp_shift_report(flags_.capp, flags_.split)
        print(json.dumps(report, indent=1))
        print("shift " + "".join(f"{'+-' + k if k != '0' else k:>8s}" for k in report["shift"]))
        print("CAPP  " + "".join(f"{v:8.3f}" for v in report["shift"].values()))
        return
    if len(argv) > 1:
        raise app.UsageError(f"unknown mode {' '.join(argv[1:])!r}: 'videos', 'benchmark', 'capp_shifts', or "
                             "none for the known-answer set")
    if not flags_.stage2:
        raise app.UsageError("the known-answer evaluation needs --stage2 (a stage-2 workdir)")
    if flags_.stage1:
        from vasa_jax import judge as judge_lib

        if not flags_.judge:
            raise app.UsageError("--stage1 (evaluation from pixels) needs --judge, a pixel judge's folder")
        judge = judge_lib.load_or_train(flags_.judge)
        result = from_pixels(flags_.stage1, flags_.stage2, judge, flags_.max_clips, flags_.num_steps,
                             gaze_frames=flags_.gaze_frames)
    else:
        stage2 = load_stage2(flags_.stage2)
        result = known_answer(MotionSampler.from_trained(stage2), stage2.config.data.root, flags_.num_steps,
                              flags_.max_clips)
    print(json.dumps(result, indent=1, default=float))


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("stage2", None, "stage-2 training workdir (known-answer mode)")
    flags.DEFINE_string("stage1", None, "stage-1 training workdir: evaluate from pixels (with --judge)")
    flags.DEFINE_string("judge", None, "pixel judge folder (python -m vasa_jax.judge); trained there if empty")
    flags.DEFINE_integer("num_steps", 50, "DDIM steps")
    flags.DEFINE_integer("max_clips", 16, "held-out clips to evaluate")
    flags.DEFINE_integer("gaze_frames", 5, "pixels mode: frames per video whose gaze is read by re-rendering "
                         "(state_by_synthesis, about a second each on a CPU core); 0 skips it")
    # videos mode: python -m vasa_jax.evaluate videos --generated=DIR|GLOB [--real=DIR|GLOB] --out=report.json
    flags.DEFINE_string("generated", None, "videos mode: a folder or glob of generated mp4s (with their audio)")
    flags.DEFINE_string("real", None, "videos mode: a folder or glob of real mp4s (the reference row)")
    flags.DEFINE_string("out", None, "videos mode: the JSON report; benchmark mode: the folder for the generated "
                        "videos, portraits and report.json")
    flags.DEFINE_string("syncnet", None, "videos mode: SyncNet's syncnet_v2.model (LSE-C / LSE-D)")
    flags.DEFINE_string("arcface", None, "videos mode: an ArcFace iresnet state dict (CSIM)")
    flags.DEFINE_integer("arcface_depth", 50, "videos mode: the ArcFace iresnet's depth")
    flags.DEFINE_string("capp", None, "videos and capp_shifts modes: a CAPP training workdir (configs/capp.py)")
    # benchmark mode: python -m vasa_jax.evaluate benchmark --model=DIR --videos=DIR|GLOB --out=DIR [weights]
    flags.DEFINE_string("model", None, "benchmark mode: an exported model folder (or --stage1 and --stage2)")
    flags.DEFINE_string("videos", None, "benchmark mode: held-out real talking-head mp4s (a folder or glob)")
    flags.DEFINE_integer("samples", 3, "benchmark mode: generated videos per audio (VASA-1: 3)")
    # capp_shifts mode: python -m vasa_jax.evaluate capp_shifts --capp=WORKDIR [--split=test] (VASA-1's Table 3)
    flags.DEFINE_string("split", "test", "capp_shifts mode: the split of the CAPP's own data")
    flags.DEFINE_string("i3d", None, "videos mode: I3D's i3d_pretrained_400.pt (FVD_25 against --real)")
    app.run(main)
