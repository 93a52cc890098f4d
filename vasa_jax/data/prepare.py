"""Raw talking-head videos -> a labelled, sharded dataset the trainers read.

    python -m vasa_jax.data.prepare --input DIR --output DIR [--resolution 256] [--layout auto] [--workers N]
        [--runner local|beam] [--beam_options "BEAM FLAGS"]

Each video under DIR (any container and codec FFmpeg decodes) becomes one or more records of at most
`--segment_seconds`: frames resampled to 25 fps, cropped around one tracked face (a smoothed square, VoxCeleb-like
framing, levelled by the clip's median eye line), resized to the training resolution and stored as JPEG; audio as
16 kHz mono; and per frame the labels VASA's two stages use: 478 landmarks in crop pixels, the pose vector
(yaw, pitch, roll in degrees, tx, ty, log scale; as `vasa_jax.data.synthetic.pose_vector`), gaze (theta, phi)
in degrees, eye openness, mouth opening. Per clip: the main gaze direction (the densest cell of a 2D histogram of
the gaze), a head distance (-log of the face's height over the frame's), the emotion (mean class probabilities of
an ONNX expression classifier, when `--emotion_model` is given), the identity (from the layout) and its
split, and whether usable audio is present (no audio stream and digital silence both count as none; such clips
are kept for stage 1).

Output layout:
  DIR/clips/<key>.npz            one finished clip (the resumable unit: a rerun does not redo it)
  DIR/clips/<key>.skipped.json   one skipped clip and the reason
  DIR/tfds/talking_heads/1.0.0/  the TFDS dataset: ArrayRecord shards, splits "train" and "test" (by identity)
  DIR/summary.json               counts of kept and skipped clips by reason, seconds of video, throughput

Bad clips (unreadable, truncated, a still image, too short, no face, several faces, a face too small or too often
lost) are skipped with their reason; nothing stops the run. Clip files are written atomically, so a killed run
leaves no half-written clip, and the TFDS dataset is rebuilt from the finished clips at the end of every run (TFDS
writes into a temporary directory and renames it, so the dataset on disk is always complete).

DIR and the output may be local folders or object-store URLs (`gs://...`, through `vasa_jax.storage`): each worker
downloads its video to a temporary file and writes its clip file to the output; the TFDS dataset is written in
the system's temporary folder and uploaded, index.json last.

`--runner=beam` does the same per-clip work and writes the same dataset as an Apache Beam pipeline, for Dataflow,
Flink or Spark (`vasa_jax.data.prepare_beam`); the local process pool is the default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import re
import sys
import time
import zipfile
from typing import Dict, List, Optional, Tuple

import numpy as np

from vasa_jax import storage
from vasa_jax.data import emotion, face

# Version of the clip files' contents: a rerun redoes clips written by another version instead of mixing formats.
CLIP_FORMAT = 1

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".flv", ".mpg", ".mpeg", ".ts")
LAYOUTS = ("auto", "voxceleb2", "hdtf", "celebvhq", "folder")


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    resolution: int = 256
    fps: int = 25
    sample_rate: int = 16000
    min_seconds: float = 2.0  # shorter clips are skipped
    segment_seconds: float = 10.0  # longer clips are stored as several records of at most this length
    min_face_size: float = 64.0  # median forehead-to-chin height in source pixels; smaller faces are skipped
    max_lost_fraction: float = 0.2  # skip when the face is not found in more than this fraction of frames
    several_faces_fraction: float = 0.1  # skip when a second face is seen in more than this fraction of frames
    second_face_ratio: float = 0.5  # ... counting a second face at least this fraction of the main face's height
    count_faces_every: int = 5  # frames between two face counts (by detection, not tracking)
    smoothing_seconds: float = 0.3  # Gaussian sigma of the crop's centre and size over time
    silence_db: float = -60.0  # audio whose RMS is below this (dB full scale) counts as no audio
    test_fraction: float = 0.05  # fraction of identities in the test split (at least one when there are two)
    jpeg_quality: int = 95
    layout: str = "folder"
    emotion_model: str = ""  # an ONNX expression classifier (vasa_jax.data.emotion); empty: no emotion labels


class SkipClip(Exception):
    """A clip that cannot be used; the message is the reason recorded in the summary."""


# ------------------------------------------------------------------------------------------ discovery
def find_videos(input_dir: str) -> List[str]:
    """Video files under `input_dir` (a local folder or a URL; recursive, by extension), as sorted paths relative
    to it."""
    return [relpath for relpath in storage.walk_files(input_dir)
            if relpath.lower().endswith(VIDEO_EXTENSIONS) and not os.path.basename(relpath).startswith(".")]


def detect_layout(relpaths: List[str]) -> str:
    """voxceleb2 when videos sit in <id#####>/<video id>/<n>.mp4; hdtf when the names are HDTF's
    (RD_|WDA_|WRA_<Name>_<n>); celebvhq for CelebV-HQ's <11-character YouTube id>_<n> names; folder otherwise."""
    if not relpaths:
        return "folder"
    parts = [p.split(os.sep) for p in relpaths]
    if all(len(p) == 3 and re.fullmatch(r"id\d+", p[0]) for p in parts):
        return "voxceleb2"
    stems = [os.path.splitext(p[-1])[0] for p in parts]
    if all(re.fullmatch(r"(RD|WDA|WRA)_\w+_\d+", s) for s in stems):
        return "hdtf"
    if all(re.fullmatch(r"[\w-]{11}_\d+", s) for s in stems):
        return "celebvhq"
    return "folder"


def identity_of(relpath: str, layout: str) -> str:
    """The identity a clip belongs to: VoxCeleb2's speaker id; HDTF's and CelebV-HQ's name without the trailing
    clip number; for a plain folder, the first sub-folder when the video is in one, else the file's stem."""
    parts = relpath.split(os.sep)
    stem = os.path.splitext(parts[-1])[0]
    if layout == "voxceleb2":
        return parts[0]
    if layout in ("hdtf", "celebvhq"):
        return re.sub(r"_\d+$", "", stem)
    if layout == "folder":
        return parts[0] if len(parts) > 1 else stem
    raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")


def clip_key(relpath: str) -> str:
    """A file-name-safe, unique key for a clip (its relative path without the extension)."""
    return re.sub(r"[^\w.-]", "_", os.path.splitext(relpath)[0].replace(os.sep, "__"))


def _identity_hash(identity: str) -> float:
    return int(hashlib.sha256(identity.encode()).hexdigest()[:8], 16) / 16**8


def split_identities(identities: List[str], test_fraction: float) -> Dict[str, str]:
    """identity -> "train" | "test". An identity is in test when its hash is below `test_fraction`, so adding
    videos never moves an identity between splits; with two or more identities and none hashed to test, the
    lowest-hashed one is (so a held-out evaluation always exists)."""
    unique = sorted(set(identities))
    split = {i: ("test" if _identity_hash(i) < test_fraction else "train") for i in unique}
    if len(unique) >= 2 and "test" not in split.values():
        split[min(unique, key=_identity_hash)] = "test"
    if unique and "train" not in split.values():
        split[max(unique, key=_identity_hash)] = "train"
    return split


# ------------------------------------------------------------------------------------------ one clip
def _interpolate_missing(values: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Fill the rows of `values` [T, ...] where `found` is False by linear interpolation in time."""
    t = np.arange(len(values))
    flat = values.reshape(len(values), -1).copy()
    for column in range(flat.shape[1]):
        flat[~found, column] = np.interp(t[~found], t[found], flat[found, column])
    return flat.reshape(values.shape)


def smooth_boxes(boxes: np.ndarray, sigma_frames: float) -> np.ndarray:
    """Stable crops over a clip: centre and log-size Gaussian-smoothed in time, one angle (the median) for all."""
    from scipy.ndimage import gaussian_filter1d

    out = boxes.astype(np.float64).copy()
    if sigma_frames > 0:
        out[:, :2] = gaussian_filter1d(out[:, :2], sigma_frames, axis=0, mode="nearest")
        out[:, 2] = np.exp(gaussian_filter1d(np.log(out[:, 2]), sigma_frames, mode="nearest"))
    out[:, 3] = np.median(boxes[:, 3])
    return out


def main_gaze(gaze: np.ndarray, cell_degrees: float = 3.0) -> np.ndarray:
    """VASA's main gaze direction of a clip: the centre of mass of the gaze samples [T, 2] in the most populated
    cell of a 2D histogram (and its 8 neighbours), which ignores glances away."""
    cells = np.floor(gaze / cell_degrees).astype(np.int64)
    unique, counts = np.unique(cells, axis=0, return_counts=True)
    best = unique[np.argmax(counts)]
    near = np.all(np.abs(cells - best) <= 1, axis=1)
    return gaze[near].mean(axis=0).astype(np.float32)


def pose_vectors(crop_landmarks: np.ndarray, size: int) -> np.ndarray:
    """[T, 6] (yaw, pitch, roll, tx, ty, log scale) from landmarks in crop pixels: the angles from `face.head_pose`,
    the crop centre of the face in normalised crop units ([-1, 1]) and the log of the face's height over the
    framing's default (`face.FACE_HEIGHT_IN_CROP` of the crop), as the synthetic renderer's pose vectors."""
    boxes = face.crop_boxes(crop_landmarks)
    centre = (boxes[:, :2] - size / 2) / (size / 2)
    log_scale = np.log(boxes[:, 2] / size)
    return np.concatenate([face.head_pose(crop_landmarks), centre, log_scale[:, None]], -1).astype(np.float32)


def analyse_clip(path: str, config: PrepareConfig) -> dict:
    """First pass: track the faces of every frame at config.fps. Returns {"landmarks" [T, 478, 3] of the main face
    in source pixels (interpolated where it was lost), "found" [T], "frame_size" (H, W)}.
    Raises SkipClip for a clip that is too short, has no face, several faces, a face too small or too often lost."""
    from vasa_jax import video

    # The main face is tracked from frame to frame. Faces are counted separately, by detection on every
    # `count_faces_every`-th frame: a tracker that once latched onto a face-like patch of background keeps it
    # (seen on the shared media: a blurred background "face" tracked in 21% of a clip's frames, detected in 4%).
    landmarks, found, several, counted, frame_size = [], [], 0, 0, None
    with face.FaceMesh(max_faces=1, tracking=True) as tracker, face.FaceMesh(max_faces=2) as detector:
        for index, frame in enumerate(video.iter_video_frames(path, config.fps)):
            frame_size = frame.shape[:2]
            faces = tracker(frame)
            found.append(bool(faces))
            landmarks.append(faces[0] if faces else np.zeros((face.NUM_LANDMARKS, 3), np.float32))
            if index % config.count_faces_every == 0:
                faces = detector(frame)
                counted += 1
                if len(faces) > 1 and (face.face_height(faces[1])
                                       >= config.second_face_ratio * face.face_height(faces[0])):
                    several += 1
    count = len(found)
    seconds = count / config.fps
    if count == 1:
        raise SkipClip("a still image, not a video (one frame)")
    declared = video.probe_video(path)["duration"]
    if declared is not None and declared - seconds > max(1.0, 0.1 * declared):
        raise SkipClip(f"truncated: {seconds:.2f} s of the {declared:.2f} s the container declares decode")
    if seconds < config.min_seconds:
        raise SkipClip(f"too short: {seconds:.2f} s (minimum {config.min_seconds:g} s)")
    found = np.array(found)
    if not found.any():
        raise SkipClip("no face found")
    if several > config.several_faces_fraction * counted:
        raise SkipClip(f"several faces: a second face in {several} of {counted} frames checked")
    lost = 1.0 - found.mean()
    if lost > config.max_lost_fraction:
        raise SkipClip(f"face lost in {lost:.0%} of frames (maximum {config.max_lost_fraction:.0%})")
    landmarks = np.stack(landmarks)
    height = float(np.median(face.face_height(landmarks[found])))
    if height < config.min_face_size:
        raise SkipClip(f"face too small: {height:.0f} px forehead to chin (minimum {config.min_face_size:g})")
    if not found.all():
        landmarks = _interpolate_missing(landmarks, found)
    return {"landmarks": landmarks, "found": found, "frame_size": frame_size}


def prepare_clip(path: str, config: PrepareConfig) -> Dict[str, np.ndarray]:
    """One video -> the arrays of one prepared clip (see the module docstring). Raises SkipClip with the reason."""
    import cv2

    from vasa_jax import video

    try:
        analysis = analyse_clip(path, config)
    except video.VideoError as error:
        raise SkipClip(f"unreadable: {error}") from None
    landmarks, found = analysis["landmarks"], analysis["found"]
    count, size = len(found), config.resolution
    boxes = smooth_boxes(face.crop_boxes(landmarks), config.smoothing_seconds * config.fps)

    jpegs, crop_landmarks, emotion_frames = [], [], []
    params = [cv2.IMWRITE_JPEG_QUALITY, config.jpeg_quality]
    for index, frame in enumerate(video.iter_video_frames(path, config.fps)):
        if index >= count:
            break
        crop = face.apply_crop(frame, boxes[index], size)
        ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), params)
        if not ok:
            raise SkipClip(f"JPEG encoding failed at frame {index}")
        jpegs.append(encoded.reshape(-1))
        crop_landmarks.append(face.landmarks_to_crop(landmarks[index], boxes[index], size))
        if config.emotion_model and found[index] and index % config.count_faces_every == 0:
            emotion_frames.append((crop, crop_landmarks[-1]))
    if len(jpegs) != count:
        raise SkipClip(f"unreadable: the second decoding gave {len(jpegs)} frames, the first {count}")
    crop_landmarks = np.stack(crop_landmarks)
    emotion_vector = np.zeros(0, np.float32)
    if emotion_frames:  # the expression classifier sees the stored crops, as a trained model would
        model = emotion.load_emotion_model(config.emotion_model)
        emotion_vector = emotion.clip_emotion(model, *zip(*emotion_frames))

    samples_per_frame = config.sample_rate // config.fps
    audio = video.read_video_audio(path, config.sample_rate)
    audio_status = "none" if audio is None else "ok"
    audio = np.zeros(0, np.float32) if audio is None else audio
    audio = np.pad(audio, (0, max(0, count * samples_per_frame - len(audio))))[: count * samples_per_frame]
    if audio_status == "ok":
        rms_db = 10 * np.log10(np.mean(np.square(audio, dtype=np.float64)) + 1e-20)
        if rms_db < config.silence_db:
            audio_status = "silent"

    gaze = face.gaze_angles(crop_landmarks)
    frame_height = analysis["frame_size"][0]
    offsets = np.concatenate([[0], np.cumsum([len(j) for j in jpegs])]).astype(np.int64)
    return {
        "jpeg": np.concatenate(jpegs).astype(np.uint8),
        "jpeg_offsets": offsets,
        "audio": np.round(np.clip(audio, -1, 1) * 32767).astype(np.int16),
        "has_audio": np.bool_(audio_status == "ok"),
        "audio_status": np.array(audio_status),
        "landmarks": crop_landmarks.astype(np.float16),
        "pose": pose_vectors(crop_landmarks, size),
        "gaze": gaze,
        "eye_open": face.eye_openness(crop_landmarks),
        "mouth_open": face.mouth_opening(crop_landmarks),
        "face_found": found,
        "main_gaze": main_gaze(gaze[found]),
        "head_distance": np.float32(-np.log(np.median(face.face_height(landmarks[found])) / frame_height)),
        "emotion": emotion_vector,
        "format": np.int64(CLIP_FORMAT),
    }


# ------------------------------------------------------------------------------------------ the run
def _clip_paths(output_dir: str, key: str) -> Tuple[str, str]:
    clips = storage.join(output_dir, "clips")
    return storage.join(clips, key + ".npz"), storage.join(clips, key + ".skipped.json")


def prepare_task(task) -> dict:
    """Prepare one clip into its cache file (or its skip record). Never raises: any failure is a skip reason.
    A video at a URL is downloaded to a temporary file first (the decoders open files by name)."""
    input_dir, relpath, output_dir, config = task
    key = clip_key(relpath)
    done_path, skipped_path = _clip_paths(output_dir, key)
    path = storage.join(input_dir, *relpath.split(os.sep))
    start = time.perf_counter()
    local = path
    try:
        with storage.local_file(path) as local:
            arrays = prepare_clip(local, config)
        storage.save_npz(done_path, arrays)
        result = {"status": "kept", "seconds": (len(arrays["jpeg_offsets"]) - 1) / config.fps,
                  "audio": str(arrays["audio_status"])}
    except SkipClip as skip:
        result = {"status": "skipped", "reason": str(skip).replace(local, path)}
    except Exception as error:  # noqa: BLE001 (a damaged file must not stop the run; its reason is recorded)
        result = {"status": "skipped", "reason": f"error: {type(error).__name__}: {error}".replace(local, path)}
    result.update(key=key, relpath=relpath, time=time.perf_counter() - start)
    if result["status"] == "skipped":
        storage.write_json(skipped_path, result)
    return result


def _crashed(task) -> dict:
    """The skip record of a clip whose worker process died (a native crash in a decoder or in MediaPipe)."""
    _, relpath, output_dir, _ = task
    key = clip_key(relpath)
    result = {"status": "skipped", "reason": "error: the worker process died while preparing this clip",
              "key": key, "relpath": relpath, "time": 0.0}
    storage.write_json(_clip_paths(output_dir, key)[1], result)
    return result


def map_isolating_crashes(function, tasks, workers: int, crashed):
    """Yield function(task) for every task, in completion order, from `workers` spawned processes. A task whose
    process dies (a segfault in native code, say) yields crashed(task) instead, and the other tasks still run:
    at most `workers` tasks are in flight, so when the pool breaks the suspects are known; each is retried alone
    in a fresh process, and the one that kills that process too is the culprit."""
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    context = multiprocessing.get_context("spawn")
    pending = list(reversed(tasks))
    while pending:
        suspects = []
        with ProcessPoolExecutor(max(1, workers), mp_context=context) as pool:
            running = {}
            while (pending or running) and not suspects:
                while pending and len(running) < max(1, workers):
                    task = pending.pop()
                    running[pool.submit(function, task)] = task
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                results = []
                for future in done:
                    task = running.pop(future)
                    try:
                        results.append(future.result())
                    except BrokenProcessPool:
                        suspects.append(task)
                yield from results
            suspects += list(running.values())
        for task in suspects:
            with ProcessPoolExecutor(1, mp_context=context) as alone:
                try:
                    result = alone.submit(function, task).result()
                except BrokenProcessPool:
                    result = crashed(task)
            yield result


def _finished(output_dir: str, key: str) -> Optional[dict]:
    """The recorded result of a clip a previous run finished (kept with a current-format file, or skipped)."""
    done_path, skipped_path = _clip_paths(output_dir, key)
    if storage.exists(skipped_path):
        return json.loads(storage.read_text(skipped_path))
    if storage.exists(done_path):
        try:
            with storage.open_npz(done_path) as arrays:
                current = "format" in arrays.files and int(arrays["format"]) == CLIP_FORMAT
        except (OSError, ValueError, zipfile.BadZipFile):  # not a readable npz: redo it
            current = False
        if current:
            return {"status": "kept", "key": key, "cached": True}
    return None


def prepare(input_dir: str, output_dir: str, config: PrepareConfig, workers: int = 1, log=print,
            beam_options=None) -> dict:
    """Prepare every video under `input_dir` into `output_dir` (see the module docstring). Returns the summary.
    The clips are prepared by `workers` local processes, or, given `beam_options` (Apache Beam `PipelineOptions`,
    see `vasa_jax.data.prepare_beam`), by a Beam pipeline on the runner they name, which also writes the dataset."""
    from vasa_jax.data import prepared

    input_dir, output_dir = storage.location(input_dir), storage.location(output_dir)
    if not storage.isdir(input_dir):
        raise FileNotFoundError(f"--input {input_dir}: not a directory")
    relpaths = find_videos(input_dir)
    layout = detect_layout(relpaths) if config.layout == "auto" else config.layout
    config = dataclasses.replace(config, layout=layout)
    clips_dir = storage.join(output_dir, "clips")
    storage.makedirs(clips_dir)
    for name in storage.listdir(clips_dir):  # leftovers of a killed run (local only: URLs are written whole)
        if storage.TMP in name:
            storage.remove(storage.join(clips_dir, name))

    results, todo = {}, []
    for relpath in relpaths:
        previous = _finished(output_dir, clip_key(relpath))
        if previous is None:
            todo.append(relpath)
        else:
            results[relpath] = dict(previous, relpath=relpath)
    how = f"{workers} worker(s)" if beam_options is None else "Apache Beam"
    log(f"prepare: {len(relpaths)} videos in {input_dir} (layout {layout}); {len(results)} already done, "
        f"{len(todo)} to do with {how}")

    start = time.perf_counter()
    seconds_done = 0.0
    tasks = [(input_dir, relpath, output_dir, config) for relpath in todo]
    if beam_options is None:
        finished = map_isolating_crashes(prepare_task, tasks, workers, _crashed)
    else:
        from vasa_jax.data import prepare_beam

        finished = prepare_beam.prepare_clips(tasks, output_dir, beam_options)  # all at once, when the run ends
    for number, result in enumerate(finished, 1):
        results[result["relpath"]] = result
        elapsed = time.perf_counter() - start
        seconds_done += result.get("seconds", 0.0)
        what = (f"kept, {result['seconds']:.1f} s, audio {result['audio']}" if result["status"] == "kept"
                else f"skipped: {result['reason']}")
        progress = ""
        if beam_options is None:  # (Beam's results all arrive when its pipeline has finished)
            eta = elapsed / number * (len(tasks) - number)
            progress = f"; {seconds_done / max(elapsed, 1e-9):.2f} s of video per s; ETA {eta:.0f} s"
        log(f"[{number}/{len(tasks)}] {result['relpath']}: {what} ({result['time']:.1f} s{progress})")
    elapsed = time.perf_counter() - start

    kept = sorted(r for r, v in results.items() if v["status"] == "kept")
    identities = {r: identity_of(r, layout) for r in kept}
    splits = split_identities(list(identities.values()), config.test_fraction)
    records = prepared.build_dataset(
        output_dir, [(clip_key(r), identities[r], splits[identities[r]]) for r in kept], config, beam_options
    )
    skipped = {r: v["reason"] for r, v in results.items() if v["status"] == "skipped"}
    reasons: Dict[str, int] = {}
    for reason in skipped.values():
        category = reason.split(":")[0]
        reasons[category] = reasons.get(category, 0) + 1
    summary = {
        "input": input_dir, "layout": layout, "config": dataclasses.asdict(config),
        "videos": len(relpaths), "kept": len(kept), "skipped": len(skipped), "skipped_by_reason": reasons,
        "skipped_clips": skipped, "records": records,
        "identities": {split: sorted({i for i in identities.values() if splits[i] == split}) for split in ("train", "test")},
        "this_run": {"clips": len(tasks), "seconds_of_video": seconds_done, "wall_seconds": elapsed,
                     "workers": workers if beam_options is None else None,
                     "runner": "local" if beam_options is None else "beam",
                     "video_seconds_per_second": seconds_done / elapsed if elapsed > 0 else None},
    }
    storage.write_json(storage.join(output_dir, "summary.json"), summary)
    log(f"prepare: kept {len(kept)} clips ({records['train']} train / {records['test']} test records), skipped "
        f"{len(skipped)} {reasons if reasons else ''}; dataset in {prepared.dataset_dir(output_dir)}")
    return summary


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(prog="python -m vasa_jax.data.prepare", description=__doc__.split("\n")[0])
    parser.add_argument("--input", required=True, help="folder or URL of raw videos (searched recursively)")
    parser.add_argument("--output", required=True, help="dataset folder or URL (created; a rerun resumes)")
    parser.add_argument("--resolution", type=int, default=PrepareConfig.resolution)
    parser.add_argument("--layout", choices=LAYOUTS, default="auto")
    parser.add_argument("--workers", type=int, default=1, help="local worker processes (with --runner=local)")
    parser.add_argument("--runner", choices=("local", "beam"), default="local",
                        help="local: a process pool on this machine; beam: an Apache Beam pipeline "
                             "(requirements-beam.txt; see vasa_jax/data/prepare_beam.py)")
    parser.add_argument("--beam_options", default="",
                        help="Beam pipeline flags with --runner=beam, e.g. \"--direct_num_workers=8 "
                             "--direct_running_mode=multi_processing\" or \"--runner=DataflowRunner ...\"")
    parser.add_argument("--segment_seconds", type=float, default=PrepareConfig.segment_seconds)
    parser.add_argument("--min_seconds", type=float, default=PrepareConfig.min_seconds)
    parser.add_argument("--min_face_size", type=float, default=PrepareConfig.min_face_size)
    parser.add_argument("--test_fraction", type=float, default=PrepareConfig.test_fraction)
    parser.add_argument("--emotion_model", default="",
                        help="ONNX facial-expression classifier (e.g. HSEmotion enet_b0_8) for per-clip emotion")
    args = parser.parse_args(argv)
    if args.resolution < 16 or args.resolution % 2:
        parser.error("--resolution must be an even number of at least 16")
    config = PrepareConfig(resolution=args.resolution, layout=args.layout, segment_seconds=args.segment_seconds,
                           min_seconds=args.min_seconds, min_face_size=args.min_face_size,
                           test_fraction=args.test_fraction, emotion_model=args.emotion_model)
    if args.beam_options and args.runner != "beam":
        parser.error("--beam_options needs --runner=beam")
    try:
        beam_options = None
        if args.runner == "beam":
            from vasa_jax.data import prepare_beam

            beam_options = prepare_beam.pipeline_options(args.beam_options)  # bad flags fail here, before any clip
        if config.emotion_model:
            emotion.load_emotion_model(config.emotion_model)  # a bad model file fails here, before any clip
        prepare(args.input, args.output, config, workers=max(1, args.workers), beam_options=beam_options)
    except (FileNotFoundError, ValueError, face.FaceAnalysisError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    # Through the module's importable name: a Beam worker unpickles the tasks' PrepareConfig by its module's name,
    # which under `python -m` would otherwise be __main__ (the worker's own).
    from vasa_jax.data import prepare as importable

    sys.exit(importable.main())
