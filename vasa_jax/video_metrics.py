"""Metrics of talking-head videos as papers report them (issue 13): pure functions of embeddings and poses, with the
networks that make the embeddings elsewhere (`vasa_jax.models.syncnet`, ...).

LSE-D and LSE-C (VASA-1's S_D and S_C) follow SyncNet's reference evaluation: every 5-frame window of the video is
compared with the audio windows of the same frame shifted by -15..+15 frames (the audio embeddings padded with
zero vectors past either end), by Euclidean distance; the distances are averaged over the video's windows per
shift; LSE-D is the smallest mean distance, LSE-C the median of the means minus that smallest, and the AV offset
the shift where the smallest falls.
"""

from __future__ import annotations

import functools

import numpy as np

from vasa_jax.models.syncnet import CROP_SIZE, MFCC_STEPS, NUM_FRAMES, NUM_MFCC, SyncNet

MAX_OFFSET = 15  # frames either side, SyncNet's search range
MFCC_PER_FRAME = 4  # SyncNet's 100 Hz MFCCs per 25 fps video frame


def _hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def _mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


def _mel_filterbank(num_filters: int, fft_size: int, sample_rate: int) -> np.ndarray:
    """[num_filters, fft_size // 2 + 1] triangles between FFT bins at mel-spaced edges from 0 Hz to Nyquist, the
    edges floored to whole bins of (fft_size + 1) / sample_rate (the convention SyncNet's MFCCs were made with)."""
    mels = np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2), num_filters + 2)
    edges = np.floor((fft_size + 1) * _mel_to_hz(mels) / sample_rate)
    bins = np.arange(fft_size // 2 + 1)[None, :]
    low, centre, high = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = np.where((bins >= low) & (bins < centre), (bins - low) / np.maximum(centre - low, 1e-12), 0.0)
    falling = np.where((bins >= centre) & (bins < high), (high - bins) / np.maximum(high - centre, 1e-12), 0.0)
    return rising + falling


def syncnet_mfcc(waveform: np.ndarray, sample_rate: int = 16000) -> np.ndarray:
    """float waveform in [-1, 1] -> [N, 13] MFCCs at 100 Hz, as SyncNet's reference computes them from 16-bit PCM
    (the samples are quantised to it first: the log energies of quiet stretches depend on that rounding, and
    the reference reads the speech as a 16-bit wav): pre-emphasis 0.97, 25 ms rectangular
    frames every 10 ms (the last one zero-padded), 512-point power spectrum / 512, 26 mel filters, log, DCT-II
    (orthonormal) to 13 coefficients, sine lifter 22, and the first coefficient replaced by the frame's log
    energy."""
    from scipy.fft import dct

    signal = np.clip(np.round(np.asarray(waveform, np.float64) * 32768.0), -32768, 32767)
    signal = np.append(signal[:1], signal[1:] - 0.97 * signal[:-1])
    frame_len, step, fft_size = int(0.025 * sample_rate + 0.5), int(0.01 * sample_rate + 0.5), 512
    count = 1 if len(signal) <= frame_len else 1 + int(np.ceil((len(signal) - frame_len) / step))
    signal = np.pad(signal, (0, (count - 1) * step + frame_len - len(signal)))
    frames = signal[np.arange(count)[:, None] * step + np.arange(frame_len)[None, :]]
    power = np.abs(np.fft.rfft(frames, fft_size)) ** 2 / fft_size
    tiny = np.finfo(np.float64).eps
    energy = np.where(power.sum(axis=1) == 0, tiny, power.sum(axis=1))
    filtered = power @ _mel_filterbank(26, fft_size, sample_rate).T
    filtered = np.where(filtered == 0, tiny, filtered)
    cepstra = dct(np.log(filtered), type=2, axis=1, norm="ortho")[:, :NUM_MFCC]
    cepstra *= 1.0 + 11.0 * np.sin(np.pi * np.arange(NUM_MFCC) / 22.0)
    cepstra[:, 0] = np.log(energy)
    return cepstra


def audio_windows(mfcc: np.ndarray, num_windows: int) -> np.ndarray:
    """[N, 13] MFCCs -> [num_windows, 13, 20]: window i starts at video frame i (MFCC step 4 i), 0.2 s long."""
    steps = MFCC_STEPS
    needed = MFCC_PER_FRAME * (num_windows - 1) + steps
    if len(mfcc) < needed:
        raise ValueError(f"{num_windows} windows need {needed} MFCC steps, the audio gives {len(mfcc)}")
    index = MFCC_PER_FRAME * np.arange(num_windows)[:, None] + np.arange(steps)[None, :]
    return np.asarray(mfcc, np.float32)[index].transpose(0, 2, 1)


def sync_distances(video_embeddings: np.ndarray, audio_embeddings: np.ndarray,
                   max_offset: int = MAX_OFFSET) -> np.ndarray:
    """[T, D] window embeddings of the video and of the audio (window i of both covering the same 0.2 s) -> [T,
    2 * max_offset + 1] distances: entry (i, j) compares video window i with audio window i + j - max_offset (a
    zero vector past the ends, as the reference pads). torch's pairwise_distance adds 1e-6 to the difference
    before the norm; so does this."""
    video = np.asarray(video_embeddings, np.float64)
    audio = np.asarray(audio_embeddings, np.float64)
    if video.ndim != 2 or audio.shape != video.shape:
        raise ValueError(f"video and audio embeddings must both be [T, D] of one shape, got {video.shape} and "
                         f"{audio.shape}")
    padded = np.pad(audio, ((max_offset, max_offset), (0, 0)))
    width = 2 * max_offset + 1
    windows = np.stack([padded[j : j + len(video)] for j in range(width)], axis=1)  # [T, width, D]
    return np.linalg.norm(video[:, None, :] - windows + 1e-6, axis=-1)


def lse(distances: np.ndarray) -> dict:
    """[T, 2K + 1] distances (`sync_distances`) -> {"lse_d", "lse_c", "offset"}: the smallest mean distance over
    shifts, the median minus it, and the AV offset K - argmin in frames (positive when the audio comes earlier
    than the lips: the best-matching audio window of frame i is window i - offset)."""
    distances = np.asarray(distances, np.float64)
    if distances.ndim != 2 or distances.shape[1] % 2 == 0 or len(distances) == 0:
        raise ValueError(f"distances must be [T > 0, 2K + 1], got {distances.shape}")
    mean = distances.mean(axis=0)
    best = int(np.argmin(mean))
    return {"lse_d": float(mean[best]), "lse_c": float(np.median(mean) - mean[best]),
            "offset": distances.shape[1] // 2 - best}


def filled_landmarks(landmarks: list) -> np.ndarray:
    """Per-frame landmarks (None where no face was found) -> [T, 478, 3], a frame without a face taking the nearest
    found frame's. ValueError when no frame has a face."""
    found = [index for index, lm in enumerate(landmarks) if lm is not None]
    if not found:
        raise ValueError("no face found in any frame")
    known = np.asarray(found)
    nearest = known[np.abs(np.arange(len(landmarks))[:, None] - known[None, :]).argmin(axis=1)]
    return np.stack([landmarks[int(i)] for i in nearest])


def syncnet_face_crops(frames: np.ndarray, landmarks: list | None = None) -> np.ndarray:
    """Video frames uint8 [T, H, W, 3] (RGB, 25 fps) -> SyncNet's 224x224 face crops, uint8 RGB [T, 224, 224, 3]
    (`face.syncnet_crop_boxes`; the largest face of each frame, `face_landmarks` unless given; frames without a
    face take the nearest found one's box). ValueError when no frame has a face."""
    from vasa_jax.data import face

    landmarks = face_landmarks(frames) if landmarks is None else landmarks
    boxes = face.syncnet_crop_boxes(filled_landmarks(landmarks))
    return np.stack([face.apply_crop(frame, box, CROP_SIZE) for frame, box in zip(frames, boxes)])


def syncnet_embeddings(variables, crops: np.ndarray, waveform: np.ndarray, batch_size: int = 16):
    """SyncNet embeddings of a video's 5-frame windows and of the audio windows of the same frames, [W, 1024] each,
    W = T - 5 as the reference evaluation counts (its last full window is left out). `crops`: uint8 RGB [T, 224,
    224, 3] (`syncnet_face_crops`), fed to the network as BGR 0-255 as the reference reads them with OpenCV;
    `waveform`: 16 kHz float speech of the same clip. Batches have one shape (the last one padded)."""
    num_windows = len(crops) - NUM_FRAMES
    if num_windows < 1:
        raise ValueError(f"SyncNet needs at least {NUM_FRAMES + 1} frames, got {len(crops)}")
    audio = audio_windows(syncnet_mfcc(waveform), num_windows)
    bgr = np.ascontiguousarray(crops[..., ::-1]).astype(np.float32)
    embed_lips, embed_audio = _syncnet_towers()
    video_out, audio_out = [], []
    for start in range(0, num_windows, batch_size):
        index = np.minimum(np.arange(start, start + batch_size), num_windows - 1)  # padded with the last window
        windows = bgr[index[:, None] + np.arange(NUM_FRAMES)[None, :]]
        count = min(batch_size, num_windows - start)
        video_out.append(np.asarray(embed_lips(variables, windows))[:count])
        audio_out.append(np.asarray(embed_audio(variables, audio[index]))[:count])
    return np.concatenate(video_out), np.concatenate(audio_out)


@functools.cache
def _syncnet_towers():
    """The two towers, jitted once per process (every video of an evaluation reuses the compiled batch shape)."""
    import jax

    model = SyncNet()
    return (jax.jit(lambda v, x: model.apply(v, x, method="embed_lips")),
            jax.jit(lambda v, x: model.apply(v, x, method="embed_audio")))


# ---------------------------------------------------------------------------------------------------------------
# Pose variation, identity, and the per-video evaluation
# ---------------------------------------------------------------------------------------------------------------

def face_landmarks(frames: np.ndarray) -> list:
    """MediaPipe landmarks [478, 3] of the largest face of each frame (None where none is found), tracked."""
    from vasa_jax.data import face

    with face.FaceMesh(max_faces=1, tracking=True) as mesh:
        return [(faces[0] if faces else None) for faces in (mesh(frame) for frame in frames)]


def pose_variation(landmarks: list) -> float:
    """VASA-1's delta-P: the mean absolute change of the head's yaw, pitch and roll (degrees, from the frames'
    landmarks) between adjacent frames, over the angles and the pairs of adjacent frames that both show a face.
    NaN when no such pair exists."""
    from vasa_jax.data import face

    poses = [None if lm is None else face.head_pose(lm) for lm in landmarks]
    changes = [np.abs(b - a) for a, b in zip(poses[:-1], poses[1:]) if a is not None and b is not None]
    return float(np.mean(changes)) if changes else float("nan")


def identity_similarity(arcface_params, depth: int, reference: np.ndarray, frames: np.ndarray,
                        frame_landmarks: list, reference_landmarks) -> float:
    """CSIM: the mean cosine similarity of ArcFace embeddings between the reference face (the source portrait)
    and each frame's face, both cut as ArcFace expects them (our framing's crop, then its aligned square
    `face.ARCFACE_BOX_IN_CROP`). Frames without a face are left out; NaN when none has one."""
    import jax.numpy as jnp

    from vasa_jax.data import face
    from vasa_jax.models import arcface

    def aligned(image, landmarks):
        crop = face.apply_crop(image, face.crop_boxes(landmarks), 256).astype(np.float32) / 255.0
        return arcface.crop_square(jnp.asarray(crop)[None], face.ARCFACE_BOX_IN_CROP)[0]

    faces = [aligned(frame, lm) for frame, lm in zip(frames, frame_landmarks) if lm is not None]
    if not faces:
        return float("nan")
    embeddings = np.asarray(arcface.arcface_embed(arcface_params, jnp.stack([aligned(reference, reference_landmarks)]
                                                                            + faces), depth))
    return float(np.mean(embeddings[1:] @ embeddings[0]))


def control_errors(landmarks: list, frame_height: int, requested: dict) -> tuple:
    """(metrics, skipped reasons) of the controls a video was generated with (`requested`: the generation's
    sidecar). E_g: the angle between the requested gaze and the video's main gaze, measured as the data
    preparation measures it (the centre of the most populated 3-degree cell of the per-frame gaze). E_d: the
    requested head distance against -log(median face height / frame height), the preparation's estimator, which
    is relative to the whole frame: only pasted-back videos (frames of the whole photo) have it."""
    from vasa_jax.data import face
    from vasa_jax.data.prepare import main_gaze
    from vasa_jax.evaluate import angular_error_degrees

    metrics, skipped = {}, {}
    found = [lm for lm in landmarks if lm is not None]
    if requested.get("gaze") is None:
        skipped["gaze_error"] = "no gaze was requested"
    elif not found:
        skipped["gaze_error"] = "no face in the video"
    else:
        measured = main_gaze(np.stack([face.gaze_angles(lm) for lm in found]))
        metrics["gaze_measured"] = [float(v) for v in measured]
        metrics["gaze_error"] = float(angular_error_degrees(np.asarray(requested["gaze"])[None], measured[None])[0])
    if requested.get("distance") is None:
        skipped["distance_error"] = "no head distance was requested"
    elif not requested.get("paste_back"):
        skipped["distance_error"] = ("the head distance is relative to the whole photo: only a pasted-back video "
                                     "(--paste_back) shows it")
    elif not found:
        skipped["distance_error"] = "no face in the video"
    else:
        measured = float(-np.log(np.median(face.face_height(np.stack(found))) / frame_height))
        metrics["distance_measured"] = measured
        metrics["distance_error"] = abs(float(requested["distance"]) - measured)
    return metrics, skipped


def evaluate_video(frames: np.ndarray, waveform, *, syncnet_variables=None, arcface=None, reference=None,
                   requested: dict | None = None, capp=None) -> dict:
    """The metrics of one video (uint8 RGB frames at 25 fps, 16 kHz speech or None): delta-P always; LSE-D,
    LSE-C and the AV offset with SyncNet's variables; CAPP with `capp` = (score, audio encoder, window)
    (`capp_scorer`, the CAPP model's encoder and window); CSIM with `arcface` = (params, depth) against `reference`
    (a uint8 RGB image; default the first frame); E_g and E_d against the controls in `requested` (the
    generation's sidecar). A metric that cannot be computed gets a one-line reason under "skipped" instead of a
    value."""
    result: dict = {"frames": int(len(frames)), "skipped": {}}
    landmarks = face_landmarks(frames)
    result["faces_found"] = int(sum(lm is not None for lm in landmarks))
    result["pose_variation"] = pose_variation(landmarks)
    if requested is None:
        result["skipped"]["controls"] = "no generation sidecar (<video>.json) recording the requested controls"
    else:
        metrics, skipped = control_errors(landmarks, frames.shape[1], requested)
        result.update(metrics)
        result["skipped"].update(skipped)
    if syncnet_variables is None:
        result["skipped"]["lse"] = "no SyncNet weights given (--syncnet=syncnet_v2.model)"
    elif waveform is None:
        result["skipped"]["lse"] = "the video has no audio"
    else:
        try:
            lips, sound = syncnet_embeddings(syncnet_variables, syncnet_face_crops(frames, landmarks), waveform)
            result.update(lse(sync_distances(lips, sound)))
        except ValueError as err:
            result["skipped"]["lse"] = str(err)
    if capp is None:
        result["skipped"]["capp"] = "no CAPP model given (--capp=a CAPP training workdir, configs/capp.py)"
    elif waveform is None:
        result["skipped"]["capp"] = "the video has no audio"
    else:
        from vasa_jax.audio import frame_features

        score, encoder, window = capp
        value = capp_video_score(score, landmarks, frame_features(encoder, waveform), window)
        if np.isfinite(value):
            result["capp"] = value
        else:
            result["skipped"]["capp"] = f"no {window}-frame window with a face (CAPP reads 3 s windows)"
    if arcface is None:
        result["skipped"]["csim"] = "no ArcFace weights given (--arcface=an iresnet state dict)"
    else:
        reference = frames[0] if reference is None else reference
        reference_landmarks = landmarks[0] if reference is frames[0] else face_landmarks(reference[None])[0]
        if reference_landmarks is None:
            result["skipped"]["csim"] = "no face in the reference portrait"
        else:
            result["csim"] = identity_similarity(arcface[0], arcface[1], reference, frames, landmarks,
                                                 reference_landmarks)
    return result


TABLE_COLUMNS = (("lse_c", "S_C"), ("lse_d", "S_D"), ("capp", "CAPP"), ("pose_variation", "dP"), ("fvd", "FVD_25"),
                 ("csim", "CSIM"), ("gaze_error", "E_g"), ("distance_error", "E_d"))


def summarise(per_video: dict) -> dict:
    """{video: metrics} -> the mean of each metric over the videos that have it, and how many do."""
    summary = {}
    for key, _ in TABLE_COLUMNS + (("offset", ""),):
        values = [m[key] for m in per_video.values() if key in m and np.isfinite(m[key])]
        if values:
            summary[key] = float(np.mean(values))
            summary[f"{key}_videos"] = len(values)
    return summary


def table(rows: dict) -> str:
    """{row name: summary} -> a plain-text table in the layout of VASA-1's Table 2 (n/a where not computed)."""
    lines = [f"{'':12s}" + "".join(f"{title:>10s}" for _, title in TABLE_COLUMNS)]
    for name, summary in rows.items():
        cells = "".join(f"{summary[key]:10.3f}" if key in summary else f"{'n/a':>10s}" for key, _ in TABLE_COLUMNS)
        lines.append(f"{name:12s}" + cells)
    return "\n".join(lines)


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """The Frechet distance between Gaussians fitted to two sets of features [N, D] (FVD's and FID's formula):
    |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)), with unbiased sample covariances. The matrix square root
    is scipy's; a tiny imaginary part from rounding is dropped, and near-singular products get a small ridge,
    as the reference implementations do."""
    from scipy import linalg

    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"features must be [N >= 2, D] with one D, got {a.shape} and {b.shape}")
    mean_a, mean_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    if not np.isfinite(root).all():
        ridge = np.eye(len(cov_a)) * 1e-6
        root = linalg.sqrtm((cov_a + ridge) @ (cov_b + ridge))
    root = np.real(root)
    return float(np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root))


# ---------------------------------------------------------------------------------------------------------------
# FVD: Frechet distance of I3D logits of 25-frame clips
# ---------------------------------------------------------------------------------------------------------------

FVD_CLIP_FRAMES = 25  # VASA-1's FVD_25: clips of 25 consecutive frames


def fvd_clips(frames: np.ndarray, clip_frames: int = FVD_CLIP_FRAMES) -> np.ndarray:
    """A video's consecutive, non-overlapping clips of `clip_frames` frames (a shorter tail is left out) as I3D
    reads them: uint8 RGB [T, H, W, 3] -> float32 [N, clip_frames, 224, 224, 3] in [-1, 1]. Each frame is resized
    so its shorter side is 224 (bilinear with half-pixel centres and no antialiasing, as the PyTorch FVD ports'
    `F.interpolate(mode="bilinear", align_corners=False)`) and centre-cropped to a square."""
    import jax

    from vasa_jax.models.i3d import INPUT_SIZE

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3], got {frames.shape}")
    count = len(frames) // clip_frames
    _, h, w, _ = frames.shape
    scale = INPUT_SIZE / min(h, w)
    size = (INPUT_SIZE, int(np.ceil(w * scale))) if h <= w else (int(np.ceil(h * scale)), INPUT_SIZE)
    clips = []
    for index in range(count):
        clip = frames[index * clip_frames : (index + 1) * clip_frames].astype(np.float32) / 255.0
        resized = np.asarray(jax.image.resize(clip, (clip_frames,) + size + (3,), "linear", antialias=False))
        top, left = (size[0] - INPUT_SIZE) // 2, (size[1] - INPUT_SIZE) // 2
        clips.append(resized[:, top : top + INPUT_SIZE, left : left + INPUT_SIZE] * 2.0 - 1.0)
    return np.stack(clips) if clips else np.zeros((0, clip_frames, INPUT_SIZE, INPUT_SIZE, 3), np.float32)


def fvd_features(i3d_variables, frames: np.ndarray, clip_frames: int = FVD_CLIP_FRAMES) -> np.ndarray:
    """I3D's Kinetics-400 logits [N, 400] of a video's clips (`fvd_clips`); N = 0 for a video shorter than a clip.
    Clips go through the network one at a time (one compiled shape for every video)."""
    from vasa_jax.models.i3d import NUM_CLASSES

    clips = fvd_clips(frames, clip_frames)
    forward = _i3d_forward()
    features = [np.asarray(forward(i3d_variables, clip[None]))[0] for clip in clips]
    return np.stack(features) if features else np.zeros((0, NUM_CLASSES), np.float32)


@functools.cache
def _i3d_forward():
    import jax

    from vasa_jax.models.i3d import InceptionI3d

    return jax.jit(InceptionI3d().apply)


def fvd_of_sets(generated: np.ndarray | None, real: np.ndarray | None) -> dict:
    """FVD_25 of each table row from the clips' I3D logits [N, 400] (None: no such set): the generated row against
    the real clips; the real row between its even and odd clips (the figure two samples of the same distribution
    reach, the floor to read the generated row against). A row that cannot have one gets a reason."""
    rows, reasons = {}, {}
    if real is None or len(real) < 4:
        reasons["real"] = "FVD needs a --real set of at least 4 clips of 25 frames"
    else:
        rows["real"] = frechet_distance(real[0::2], real[1::2])
    if generated is not None:
        if real is None or len(real) < 2 or len(generated) < 2:
            reasons["generated"] = "FVD needs at least 2 clips of 25 frames in both the generated and the real set"
        else:
            rows["generated"] = frechet_distance(generated, real)
    return {"fvd": rows, "skipped": reasons}


# ---------------------------------------------------------------------------------------------------------------
# CAPP: how well the head's motion goes with the speech (VASA-1's contrastive audio-pose score)
# ---------------------------------------------------------------------------------------------------------------

def capp_scorer(capp_model):
    """A trained CAPP (`checkpoints.CappModel`) as score(pose_input [B, W, 3], audio_input [B, W, A]) -> [B]."""
    import jax

    model = capp_model.model
    score = jax.jit(lambda params, pose, sound: model.apply({"params": params}, pose, sound, method="score"))
    return lambda pose, sound: np.asarray(score(capp_model.params, pose, sound))


def _shifted_windows(length: int, window: int, shifts, stride: int) -> list:
    """Window starts s at which the pose window [s, s + W) and every shifted audio window [s + k, s + k + W) lie
    inside a clip of `length` frames."""
    lo, hi = min(min(shifts), 0), max(max(shifts), 0)
    return list(range(-lo, length - window - hi + 1, stride))


def capp_shift_table(score, clips, window: int, shifts, stride: int | None = None, batch_size: int = 64) -> dict:
    """VASA-1's Table 3: the mean CAPP score of each clip's pose windows against its audio shifted by k frames,
    {k: score}, over the same windows for every k (those where all shifts fit; starts every `stride` frames,
    default W / 3). `clips`: [{"angles" [T, 3] degrees, "features" [T, A]}]; `score` as `capp_scorer` makes it."""
    from vasa_jax.models.capp import audio_input, pose_input

    stride = stride or max(1, window // 3)
    pairs = {k: ([], []) for k in shifts}
    for clip in clips:
        for start in _shifted_windows(len(clip["angles"]), window, shifts, stride):
            for k in shifts:
                pairs[k][0].append(pose_input(clip["angles"][start : start + window]))
                pairs[k][1].append(audio_input(clip["features"][start + k : start + k + window]))
    if not pairs[shifts[0]][0]:
        raise ValueError(f"no clip is long enough for a {window}-frame window shifted by {min(shifts)}..{max(shifts)}")
    table = {}
    for k, (poses, sounds) in pairs.items():
        scores = [score(np.stack(poses[i : i + batch_size]), np.stack(sounds[i : i + batch_size]))
                  for i in range(0, len(poses), batch_size)]
        table[k] = float(np.mean(np.concatenate(scores)))
    return table


def capp_video_score(score, landmarks: list, features: np.ndarray, window: int, stride: int = 25) -> float:
    """CAPP of one video: the mean score of its 3 s windows (every `stride` frames) of head angles re-extracted from
    the frames (`face.head_pose` of each frame's landmarks; frames without a face take the nearest found one's) and
    of its speech's features. NaN when the video is shorter than a window or shows no face."""
    from vasa_jax.data import face

    length = min(len(landmarks), len(features))
    if length < window or all(lm is None for lm in landmarks):
        return float("nan")
    angles = face.head_pose(filled_landmarks(landmarks))
    clip = {"angles": angles[:length], "features": np.asarray(features)[:length]}
    return capp_shift_table(score, [clip], window, (0,), stride)[0]
