"""Motion-latent datasets for stage 2, and the grain window pipeline on them.

A motion dataset is a folder:
  manifest.json              what produced it (motion source, audio encoder, dimensions, window defaults)
  stats.json                 normalisation statistics of the train split (motion, audio, distance)
  clips/<split>/<name>.npz   one clip: motion [T, M], audio [T, A], has_audio, gaze [2], distance [1],
                             emotion [E], identity; synthetic clips also keep mouth_open [T], frame_gaze [T, 2]
                             and loudness [T] (ground truth for the known-answer probes).
Clips are written atomically (temporary file + rename), so an interrupted encoding run resumes where it stopped.

`MotionWindowSource` cuts clips into windows of W frames plus the K frames before them (VASA's previous-window
context), normalised with stats.json. A window that starts before frame K has no full context: its context is
zero-filled and flagged `previous_valid = False`, and training treats it like a dropped context.
"""

import json
from typing import Callable, Dict, Iterable

import numpy as np

from vasa_jax import storage

MANIFEST = "manifest.json"
STATS = "stats.json"
SPLITS = ("train", "test")


# ------------------------------------------------------------------------------------------------ labels
def main_gaze(gaze: np.ndarray, bin_degrees: float = 4.0) -> np.ndarray:
    """The main gaze direction of a clip (VASA: per-frame gaze, then histogram clustering): the per-frame
    (theta, phi) in degrees [T, 2] are binned on a 2D grid, and the mean of the frames in the fullest bin and its
    eight neighbours is returned [2]. Saccades and blinks, which scatter, do not move it."""
    gaze = np.asarray(gaze, np.float64)
    if gaze.ndim != 2 or gaze.shape[1] != 2 or len(gaze) == 0:
        raise ValueError(f"expected per-frame gaze [T, 2] with T > 0, got shape {gaze.shape}")
    cells = np.floor(gaze / bin_degrees).astype(np.int64)
    keys, counts = np.unique(cells, axis=0, return_counts=True)
    best = keys[np.argmax(counts)]
    near = np.all(np.abs(cells - best) <= 1, axis=1)
    return gaze[near].mean(axis=0).astype(np.float32)


# ----------------------------------------------------------------------------------------------- writing
def clip_path(root: str, split: str, name: str) -> str:
    return storage.join(root, "clips", split, f"{name}.npz")


def write_clip(root: str, split: str, name: str, record: Dict[str, np.ndarray]) -> None:
    """Write one clip atomically: a crash leaves either the old state or the complete file, never a partial one."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    required = {"motion", "audio", "has_audio", "gaze", "distance", "emotion", "identity"}
    missing = sorted(required - set(record))
    if missing:
        raise ValueError(f"clip record {name!r} lacks {missing}")
    if len(record["motion"]) != len(record["audio"]):
        raise ValueError(
            f"clip {name!r}: {len(record['motion'])} motion frames but {len(record['audio'])} audio frames"
        )
    storage.save_npz(clip_path(root, split, name), record)  # (creates the folder)


def list_clips(root: str, split: str) -> list:
    folder = storage.join(root, "clips", split)
    if not storage.isdir(folder):
        return []
    return [f[: -len(".npz")] for f in storage.listdir(folder) if f.endswith(".npz") and storage.TMP not in f]


def load_clip(root: str, split: str, name: str) -> Dict[str, np.ndarray]:
    return storage.load_npz(clip_path(root, split, name))


def compute_stats(root: str) -> Dict[str, list]:
    """Mean and std (floored) of motion and audio features over all train frames, and mean, std (floored) and
    range of the head distance over train clips; written to stats.json."""
    names = list_clips(root, "train")
    if not names:
        raise ValueError(f"{root} has no train clips to compute statistics from")
    motion, audio, distance = [], [], []
    for name in names:
        clip = load_clip(root, "train", name)
        motion.append(clip["motion"])
        if clip["has_audio"]:
            audio.append(clip["audio"])
        distance.append(clip["distance"])
    stat = lambda xs: (np.concatenate(xs).mean(0), np.maximum(np.concatenate(xs).std(0), 1e-4))
    m_mean, m_std = stat(motion)
    a_mean, a_std = stat(audio) if audio else (np.zeros(motion[0].shape[1:]), np.ones(motion[0].shape[1:]))
    d = np.stack(distance)
    stats = {
        "motion_mean": m_mean.tolist(), "motion_std": m_std.tolist(),
        "audio_mean": a_mean.tolist(), "audio_std": a_std.tolist(),
        "distance_mean": d.mean(0).tolist(), "distance_std": np.maximum(d.std(0), 1e-4).tolist(),
        "distance_min": d.min(0).tolist(), "distance_max": d.max(0).tolist(),  # what generation may ask for
        "num_train_clips": len(names),
    }
    storage.write_json(storage.join(root, STATS), stats)
    return stats


def read_json(path: str):
    if not storage.exists(path):
        raise FileNotFoundError(f"{path} does not exist: is this a motion dataset (python -m vasa_jax.data.encode_motion)?")
    return json.loads(storage.read_text(path))


# ------------------------------------------------------------------------------------------ synthetic
def synthetic_clip_records(
    config,
    split: str,
    motion_fn: Callable[[Callable[[], np.ndarray], Dict[str, np.ndarray]], np.ndarray],
    audio_encoder: Callable[[np.ndarray], np.ndarray],
    skip: Iterable[str] = (),
):
    """Yield (name, record) for every clip of a synthetic split that is not in `skip` (already written).
    `motion_fn(render, ground_truth) -> motion [T, M]` is where the stage-1 encoder runs; `render()` returns the
    clip's frames (uint8 [T, S, S, 3]), rendered only if the motion function asks for them."""
    from vasa_jax.audio import frame_features
    from vasa_jax.data import synthetic

    skip = set(skip)
    for identity_id in synthetic.identity_ids(config, split):
        for clip_index in range(config.clips_per_identity):
            name = f"id{int(identity_id):05d}_clip{clip_index:03d}"
            if name in skip:
                continue
            clip = synthetic.get_clip(config, int(identity_id), clip_index)
            truth = clip.ground_truth()
            render = lambda clip=clip: synthetic.render_clip(clip, config.resolution)
            motion = np.asarray(motion_fn(render, truth), np.float32)
            audio = frame_features(audio_encoder, clip.audio)  # write_clip checks the two lengths agree
            yield name, {
                "motion": motion,
                "audio": audio,
                "has_audio": np.bool_(True),
                "gaze": main_gaze(truth["gaze"]),
                # Head distance grows as the face shrinks: -log(scale) of the renderer, averaged over the clip.
                "distance": np.float32([-np.log(truth["scale"]).mean()]),
                "emotion": truth["emotion"].mean(0).astype(np.float32),
                "identity": np.int32(identity_id),
                "mouth_open": truth["mouth_open"],
                "frame_gaze": truth["gaze"],
                "loudness": truth["loudness"],
            }


# ------------------------------------------------------------------------------------------- prepared
def prepared_clip_name(record) -> str:
    """The motion clip of one prepared record (a segment of a clip): `<clip key>_seg<NNN>`."""
    clip = record["clip"].decode() if isinstance(record["clip"], bytes) else str(record["clip"])
    return f"{clip}_seg{int(record['segment']):03d}"


def prepared_clip_records(
    root: str,
    split: str,
    encode_frames: Callable[[np.ndarray], np.ndarray],
    resolution: int,
    audio_encoder: Callable[[np.ndarray], np.ndarray],
    skip: Iterable[str] = (),
    counts: Dict[str, int] | None = None,
):
    """Yield (name, record) for every record of a prepared split (`vasa_jax.data.prepared`) that has audio and is
    not in `skip`. `encode_frames(uint8 [T, S, S, 3]) -> motion [T, M]` runs the stage-1 encoder on the record's
    frames resized to `resolution`; the audio features follow `vasa_jax.audio.frame_features`. The conditions are
    the preparation's labels: main gaze (degrees), head distance, emotion (mean class probabilities; empty when the
    preparation had no emotion model). Records without audio are left out (stage 2 needs speech) and counted in
    `counts["no_audio"]`; per-frame gaze, eye and mouth openness are kept for inspection."""
    from vasa_jax.audio import frame_features
    from vasa_jax.data import prepared

    skip = set(skip)
    counts = {} if counts is None else counts
    entries = prepared.load_index(root)["records"][split]
    if not entries:
        return
    data = prepared.open_split(root, split)
    for index, entry in enumerate(entries):
        name = prepared_clip_name(entry)
        if not entry["has_audio"]:
            counts["no_audio"] = counts.get("no_audio", 0) + 1
            continue
        if name in skip:
            continue
        record = data[index]
        frames = np.stack([prepared.resize_frame(prepared.decode_frame(record, i), resolution)
                           for i in range(len(record["jpeg_offsets"]) - 1)])
        motion = np.asarray(encode_frames(frames), np.float32)
        audio = frame_features(audio_encoder, np.asarray(record["audio"], np.float32) / 32768.0)
        yield name, {
            "motion": motion,
            "audio": audio,
            "has_audio": np.bool_(True),
            "gaze": np.asarray(record["main_gaze"], np.float32),
            "distance": np.float32([record["head_distance"]]),
            "emotion": np.asarray(record["emotion"], np.float32),
            "identity": np.int32(record["identity_index"]),
            "frame_gaze": np.asarray(record["gaze"], np.float32),
            "eye_open": np.asarray(record["eye_open"], np.float32),
            "mouth_open_ratio": np.asarray(record["mouth_open"], np.float32),
        }


def ground_truth_motion(render: Callable[[], np.ndarray], truth: Dict[str, np.ndarray]) -> np.ndarray:
    """The synthetic renderer's own per-frame state as a motion vector [T, 10]: yaw, pitch, roll (degrees),
    tx, ty, log(scale), gaze theta, gaze phi, eye openness, mouth openness. A stand-in for stage-1 latents when
    testing stage 2 alone (the known-answer test): it needs no trained stage 1 and renders nothing."""
    del render
    return np.concatenate(
        [truth["pose"], truth["gaze"], truth["eye_open"][:, None], truth["mouth_open"][:, None]], axis=1
    ).astype(np.float32)


# ------------------------------------------------------------------------------------------- pipeline
class MotionWindowSource:
    """grain RandomAccessDataSource of stage-2 training windows.

    Item i is the window starting at frame `stride * j` of clip c (every start with a full window of W frames),
    with its K context frames. Values are normalised with the dataset's stats.json. Keys:
      motion [W, M], audio [W, A], audio_valid [W] (False where the clip has no audio), previous_motion [K, M],
      previous_audio [K, A], previous_valid (), gaze [2] (radians), distance [1], emotion [E],
      and for synthetic clips mouth_open [W].
    """

    def __init__(self, root: str, split: str, window: int, context: int, stride: int | None = None):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        root = storage.location(root)  # a local folder or an object store's URL
        self.root, self.split, self.window, self.context = root, split, int(window), int(context)
        self.stride = int(stride or max(1, window // 2))
        self.stats = {k: np.asarray(v, np.float32) for k, v in read_json(storage.join(root, STATS)).items()}
        self.clips = [load_clip(root, split, name) for name in list_clips(root, split)]
        self.index = [
            (c, start)
            for c, clip in enumerate(self.clips)
            for start in range(0, len(clip["motion"]) - self.window + 1, self.stride)
        ]
        if not self.index:
            raise ValueError(f"{root} has no {split} clip of at least {window} frames")

    def __len__(self) -> int:
        return len(self.index)

    def __repr__(self) -> str:
        return f"MotionWindowSource(root={self.root!r}, split={self.split!r}, window={self.window})"

    def __getitem__(self, i) -> Dict[str, np.ndarray]:
        c, start = self.index[int(i)]
        clip = self.clips[c]
        s = self.stats
        motion = (clip["motion"] - s["motion_mean"]) / s["motion_std"]
        audio = (clip["audio"] - s["audio_mean"]) / s["audio_std"]
        end, k = start + self.window, self.context
        previous_valid = start >= k
        lo = max(0, start - k)
        pad = k - (start - lo)
        previous_motion = np.concatenate([np.zeros((pad, motion.shape[1]), np.float32), motion[lo:start]])
        previous_audio = np.concatenate([np.zeros((pad, audio.shape[1]), np.float32), audio[lo:start]])
        item = {
            "motion": motion[start:end].astype(np.float32),
            "audio": audio[start:end].astype(np.float32),
            "audio_valid": np.full((self.window,), bool(clip["has_audio"])),
            "previous_motion": previous_motion.astype(np.float32),
            "previous_audio": previous_audio.astype(np.float32),
            "previous_valid": np.bool_(previous_valid),
            "gaze": np.deg2rad(clip["gaze"]).astype(np.float32),
            "distance": ((clip["distance"] - s["distance_mean"]) / s["distance_std"]).astype(np.float32),
            "emotion": clip["emotion"].astype(np.float32),
        }
        if "mouth_open" in clip:
            item["mouth_open"] = clip["mouth_open"][start:end].astype(np.float32)
        return item
