"""The prepared real-video dataset (written by `python -m vasa_jax.data.prepare`): its TFDS builder, reading, and
the stage-1 grain source of (source, driving, cross) frames with augmentation.

Storage: TFDS ArrayRecord shards built without TensorFlow. Only Tensor/Scalar/Text features are used (TFDS's Image
feature needs TensorFlow), so each record holds its frames as one uint8 tensor of concatenated JPEG files plus
their offsets. Records are written in a fixed order (shuffling disabled) and `DIR/index.json` lists them per split
with the facts a sampler needs (identity, frame count, audio), so nothing has to decode records to plan a batch.

A record is one segment of a clip (at most `segment_seconds`):
  clip, identity (text), identity_index, segment, start_frame
  jpeg [bytes] uint8, jpeg_offsets [T + 1] int64     frame i = jpeg[jpeg_offsets[i]:jpeg_offsets[i + 1]]
  audio [T * 640] int16 (16 kHz mono), has_audio
  landmarks [T, 478, 3] float16 (crop pixels), pose [T, 6], gaze [T, 2], eye_open [T], mouth_open [T],
  face_found [T] (False where the landmarks were interpolated), main_gaze [2], head_distance,
  emotion [E] (mean class probabilities; E = 0 when the preparation had no emotion model)
Units as in `vasa_jax.data.prepare`.
"""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
from typing import Dict, Iterator, List, Tuple

import numpy as np

from vasa_jax import storage
from vasa_jax.data import face, regions

DATASET_NAME = "talking_heads"
DATASET_VERSION = "1.0.0"
SPLITS = ("train", "test")


def dataset_dir(root: str) -> str:
    return storage.join(root, "tfds", DATASET_NAME, DATASET_VERSION)


def _features():
    import tensorflow_datasets as tfds

    # Arrays are stored as raw bytes: TFDS's default puts every element in a protobuf int64/float list, which
    # made reading one 10 s record take 0.2-0.35 s on this CPU (a 5 MB JPEG tensor as 5 M int64 values).
    tensor = functools.partial(tfds.features.Tensor, encoding=tfds.features.Encoding.BYTES)
    scalar = tfds.features.Scalar
    return tfds.features.FeaturesDict({
        "clip": tfds.features.Text(),
        "identity": tfds.features.Text(),
        "identity_index": scalar(dtype=np.int64),
        "segment": scalar(dtype=np.int64),
        "start_frame": scalar(dtype=np.int64),
        "jpeg": tensor(shape=(None,), dtype=np.uint8),
        "jpeg_offsets": tensor(shape=(None,), dtype=np.int64),
        "audio": tensor(shape=(None,), dtype=np.int16),
        "has_audio": scalar(dtype=np.bool_),
        "landmarks": tensor(shape=(None, face.NUM_LANDMARKS, 3), dtype=np.float16),
        "pose": tensor(shape=(None, 6), dtype=np.float32),
        "gaze": tensor(shape=(None, 2), dtype=np.float32),
        "eye_open": tensor(shape=(None,), dtype=np.float32),
        "mouth_open": tensor(shape=(None,), dtype=np.float32),
        "face_found": tensor(shape=(None,), dtype=np.bool_),
        "main_gaze": tensor(shape=(2,), dtype=np.float32),
        "head_distance": scalar(dtype=np.float32),
        "emotion": tensor(shape=(None,), dtype=np.float32),
    })


def segments(num_frames: int, max_frames: int) -> List[Tuple[int, int]]:
    """Split [0, num_frames) into the fewest near-equal segments of at most max_frames."""
    count = max(1, -(-num_frames // max_frames))
    bounds = np.round(np.linspace(0, num_frames, count + 1)).astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def _segment_record(arrays, start: int, end: int, samples_per_frame: int) -> Dict[str, np.ndarray]:
    offsets = arrays["jpeg_offsets"]
    return {
        "jpeg": arrays["jpeg"][offsets[start] : offsets[end]],
        "jpeg_offsets": offsets[start : end + 1] - offsets[start],
        "audio": arrays["audio"][start * samples_per_frame : end * samples_per_frame],
        "has_audio": bool(arrays["has_audio"]),
        "landmarks": arrays["landmarks"][start:end],
        **{k: arrays[k][start:end] for k in ("pose", "gaze", "eye_open", "mouth_open", "face_found")},
        "main_gaze": arrays["main_gaze"],
        "head_distance": float(arrays["head_distance"]),
        "emotion": arrays["emotion"],
    }


def clip_examples(entries: List[dict], root: str, samples_per_frame: int) -> Iterator[Tuple[int, dict]]:
    """The TFDS (key, example) pairs of one clip's planned segments (`entries`, all of one clip). The key is the
    record's position in its split: the Beam writer orders records by key, the in-process one by arrival, and
    both then store them in the index's order."""
    arrays = storage.load_npz(storage.join(root, "clips", entries[0]["clip"] + ".npz"))
    for entry in entries:
        start = entry["start_frame"]
        record = _segment_record(arrays, start, start + entry["num_frames"], samples_per_frame)
        record.update({k: entry[k] for k in ("clip", "identity", "identity_index", "segment", "start_frame")})
        yield entry["position"], record


def _by_clip(entries: List[dict]) -> List[List[dict]]:
    """The plan's entries grouped by clip (a clip's segments are consecutive), so each clip file is read once."""
    groups: List[List[dict]] = []
    for entry in entries:
        if groups and groups[-1][0]["clip"] == entry["clip"]:
            groups[-1].append(entry)
        else:
            groups.append([entry])
    return groups


def build_dataset(root: str, clips: List[Tuple[str, str, str]], config, beam_options=None) -> Dict[str, int]:
    """(Re)build the TFDS dataset of `root` from its finished clip files. `clips`: (key, identity, split) per kept
    clip. Writes DIR/index.json. Returns the number of records per split. With `beam_options` (Apache Beam
    `PipelineOptions`), the records are written by a Beam pipeline on the runner they name (TFDS's Beam writer):
    the same records, in the same order."""
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    identities = sorted({identity for _, identity, _ in clips})
    identity_index = {identity: i for i, identity in enumerate(identities)}
    max_frames = max(1, int(round(config.segment_seconds * config.fps)))
    samples_per_frame = config.sample_rate // config.fps

    # Plan the records (reading only the frame counts), so the index is known before TFDS writes them in order.
    plan = {split: [] for split in SPLITS}
    for key, identity, split in clips:
        with storage.open_npz(storage.join(root, "clips", key + ".npz")) as arrays:
            num_frames = len(arrays["jpeg_offsets"]) - 1
            has_audio = bool(arrays["has_audio"])
        for number, (start, end) in enumerate(segments(num_frames, max_frames)):
            plan[split].append({"clip": key, "identity": identity, "identity_index": identity_index[identity],
                                "segment": number, "start_frame": start, "num_frames": end - start,
                                "has_audio": has_audio})

    def positioned(split):
        return [dict(entry, position=position) for position, entry in enumerate(plan[split])]

    def examples(split):
        for group in _by_clip(positioned(split)):
            yield from clip_examples(group, root, samples_per_frame)

    def beam_examples(split):
        import apache_beam as beam

        # Reshuffle: one clip per work item, so that a runner spreads the clips over its workers.
        return (beam.Create(_by_clip(positioned(split))) | beam.Reshuffle()
                | beam.FlatMap(clip_examples, root=root, samples_per_frame=samples_per_frame))

    class TalkingHeads(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """Prepared talking-head clips (vasa_jax.data.prepare)."""

        name = DATASET_NAME
        VERSION = tfds.core.Version(DATASET_VERSION)

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=_features(), disable_shuffling=True,
                                         description="Talking-head clips prepared by vasa_jax.data.prepare")

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(split) for split in SPLITS if plan[split]}

        def _generate_examples(self, split):
            return examples(split) if beam_options is None else beam_examples(split)

    # The index is removed first and written last: a dataset without its index is not a dataset.
    index_path = storage.join(root, "index.json")
    storage.remove(index_path)
    storage.remove_tree(dataset_dir(root))
    if clips:
        download_config = tfds.download.DownloadConfig(beam_options=beam_options) if beam_options is not None else None
        # At a URL, the in-process writer writes in the system's temporary folder and uploads the result: the
        # ArrayRecord writer writes local files. TFDS's Beam writer is given the URL itself (its workers may be
        # other machines; it writes through Beam's file systems, which serve gs:// with apache-beam[gcp]).
        staging = tempfile.mkdtemp(prefix="tfds-") if storage.is_remote(root) and beam_options is None else None
        try:
            TalkingHeads(data_dir=staging or storage.join(root, "tfds"), file_format="array_record"
                         ).download_and_prepare(download_config=download_config)
            if staging:
                storage.upload_tree(staging, storage.join(root, "tfds"))
        finally:
            if staging:
                shutil.rmtree(staging, ignore_errors=True)
        storage.write_json(index_path, {"identities": identities, "fps": config.fps, "sample_rate": config.sample_rate,
                                       "resolution": config.resolution, "records": plan}, indent=None)
    return {split: len(plan[split]) for split in SPLITS}


# ---------------------------------------------------------------------------------------------- reading
def load_index(root: str) -> dict:
    """The dataset's index.json. `root` may be an object store's URL (`vasa_jax.storage`): TFDS reads the
    dataset's metadata through etils.epath and ArrayRecord reads gs:// shards itself."""
    path = storage.join(root, "index.json")
    if not storage.exists(path):
        raise FileNotFoundError(
            f"{root}: no prepared dataset here (index.json missing); run python -m vasa_jax.data.prepare --output {root}"
        )
    return json.loads(storage.read_text(path))


def open_split(root: str, split: str):
    """The records of one split as a random-access data source (decoded numpy dicts)."""
    import tensorflow_datasets as tfds

    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if not load_index(root)["records"][split]:
        raise ValueError(f"{root}: the {split} split is empty (too few identities were kept)")
    return tfds.builder_from_directory(dataset_dir(root)).as_data_source(split=split)


def decode_frame(record, index: int) -> np.ndarray:
    """Frame `index` of a record as uint8 RGB [H, W, 3]."""
    import cv2

    offsets = record["jpeg_offsets"]
    encoded = np.asarray(record["jpeg"][offsets[index] : offsets[index + 1]])
    image = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"frame {index} of {record['clip']!r} is not a decodable JPEG")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def resize_frame(image: np.ndarray, size: int) -> np.ndarray:
    import cv2

    if image.shape[0] == size:
        return image
    interpolation = cv2.INTER_AREA if image.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)


_TAG_PAIR = 0x5E1A


class PreparedStage1Source:
    """grain RandomAccessDataSource of (source, driving, cross) frames from the prepared dataset, with the same keys
    and units as `vasa_jax.data.synthetic.SyntheticStage1Source` (gaze in degrees; eye_open and mouth_open are
    the landmark ratios of `vasa_jax.data.face`, not the renderer's [0, 1] controls; the driving frame's mouth
    and eye regions and the layouts of both frames come from their landmarks; `extra_frames` more frames of the
    record with their labels).

    Item i belongs to record i // pairs_per_record; source and driving are random frames of that record where
    the face was found; cross is such a frame of a record of another identity (of the same split)."""

    def __init__(self, root: str, split: str = "train", resolution: int = 256, pairs_per_record: int = 50,
                 seed: int = 0, extra_frames: int = 0):
        root = storage.location(root)  # a local folder or an object store's URL
        self.root, self.split, self.resolution = root, split, resolution
        self.pairs_per_record, self.seed, self.extra_frames = pairs_per_record, seed, int(extra_frames)
        self.records = load_index(root)["records"].get(split, [])
        self._data = open_split(root, split)
        if len(self._data) != len(self.records):
            raise ValueError(f"{root}: index.json lists {len(self.records)} {split} records, the dataset has "
                             f"{len(self._data)}; rerun the preparation")
        self._identity = np.array([r["identity_index"] for r in self.records])

    def __len__(self) -> int:
        return len(self.records) * self.pairs_per_record

    def __repr__(self) -> str:
        return f"PreparedStage1Source(root={self.root!r}, split={self.split!r}, records={len(self.records)})"

    def _frames(self, rng, record, count: int) -> np.ndarray:
        usable = np.flatnonzero(record["face_found"])
        return rng.choice(usable if len(usable) else np.arange(len(record["face_found"])), size=count)

    def __getitem__(self, index) -> Dict[str, np.ndarray]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        record_number = index // self.pairs_per_record
        rng = np.random.default_rng([self.seed, _TAG_PAIR, SPLITS.index(self.split), index])
        others = np.flatnonzero(self._identity != self._identity[record_number])
        cross_number = int(rng.choice(others)) if len(others) else record_number
        record = self._data[record_number]
        cross_record = record if cross_number == record_number else self._data[cross_number]
        source, driving = self._frames(rng, record, 2)
        (cross,) = self._frames(rng, cross_record, 1)
        image = lambda r, i: resize_frame(decode_frame(r, int(i)), self.resolution)
        # Landmarks are in the pixels of the stored crops.
        stored_source, stored_driving = decode_frame(record, int(source)), decode_frame(record, int(driving))
        f32 = np.float32
        extra = {}
        if self.extra_frames:
            frames = self._frames(rng, record, self.extra_frames)
            # Half of them from the record's blinks (lids under 60% of its median openness), if it has any: too rare
            # for the encoder to learn them from uniformly drawn frames.
            openness = np.asarray(record["eye_open"], np.float64)
            blinks = np.flatnonzero(record["face_found"] & (openness < 0.6 * np.median(openness)))
            if len(blinks):
                half = self.extra_frames // 2
                frames[:half] = blinks[frames[:half] % len(blinks)]
            extra = {
                "extra_frames": np.stack([image(record, i) for i in frames]),
                "extra_pose": record["pose"][frames].astype(f32),
                "extra_gaze": record["gaze"][frames].astype(f32),
                "extra_eye_open": record["eye_open"][frames].astype(f32),
                "extra_mouth_open": record["mouth_open"][frames].astype(f32),
            }
        return extra | {
            "source": resize_frame(stored_source, self.resolution),
            "driving": resize_frame(stored_driving, self.resolution),
            "cross": image(cross_record, cross),
            "source_pose": record["pose"][source].astype(f32),
            "driving_pose": record["pose"][driving].astype(f32),
            "cross_pose": cross_record["pose"][cross].astype(f32),
            "source_gaze": record["gaze"][source].astype(f32),
            "driving_gaze": record["gaze"][driving].astype(f32),
            "source_eye_open": f32(record["eye_open"][source]),
            "driving_eye_open": f32(record["eye_open"][driving]),
            "source_mouth_open": f32(record["mouth_open"][source]),
            "driving_mouth_open": f32(record["mouth_open"][driving]),
            "driving_regions": regions.from_landmarks(record["landmarks"][driving], self.resolution,
                                                      stored_driving.shape[0]),
            "driving_layout": regions.layout_from_landmarks(record["landmarks"][driving], self.resolution,
                                                            stored_driving.shape[0]),
            "source_layout": regions.layout_from_landmarks(record["landmarks"][source], self.resolution,
                                                           stored_source.shape[0]),
            "identity": np.int32(record["identity_index"]),
            "cross_identity": np.int32(cross_record["identity_index"]),
        }


# Pose components that change sign under a horizontal flip: yaw, roll and tx (pitch, ty and scale do not).
_FLIP_POSE = np.array([-1, 1, -1, -1, 1, 1], np.float32)
_FLIP_GAZE = np.array([-1, 1], np.float32)


def _colour_jitter(images: List[np.ndarray], rng, strength: float) -> List[np.ndarray]:
    """One random brightness, contrast and saturation change applied to all `images` alike."""
    brightness = rng.uniform(-strength, strength)
    contrast = rng.uniform(1 - strength, 1 + strength)
    saturation = rng.uniform(1 - strength, 1 + strength)
    out = []
    for image in images:
        x = image.astype(np.float32) / 255.0
        grey = x.mean(axis=-1, keepdims=True)
        x = grey + saturation * (x - grey)
        x = (x - x.mean()) * contrast + x.mean() + brightness
        out.append(np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8))
    return out


def augment_stage1(item: Dict[str, np.ndarray], rng: np.random.Generator, flip: bool = True,
                   colour: float = 0.1) -> Dict[str, np.ndarray]:
    """Training augmentation of a stage-1 item: a horizontal flip (p = 0.5) of the source/driving pair together
    and, independently, of the cross frame and of the extra frames, with their pose and gaze labels mirrored; and
    one colour jitter for the pair, another for the cross frame, another for the extra frames. Geometry between
    source and driving is never changed."""
    item = dict(item)
    if flip and rng.random() < 0.5:
        for name in ("driving_regions", "driving_layout", "source_layout"):
            item[name] = np.ascontiguousarray(item[name][:, ::-1])
        for name in ("source", "driving"):
            item[name] = np.ascontiguousarray(item[name][:, ::-1])
            item[f"{name}_pose"] = item[f"{name}_pose"] * _FLIP_POSE
            item[f"{name}_gaze"] = item[f"{name}_gaze"] * _FLIP_GAZE
    if flip and rng.random() < 0.5:
        item["cross"] = np.ascontiguousarray(item["cross"][:, ::-1])
        item["cross_pose"] = item["cross_pose"] * _FLIP_POSE
    has_extra = "extra_frames" in item
    if has_extra and flip and rng.random() < 0.5:
        item["extra_frames"] = np.ascontiguousarray(item["extra_frames"][:, :, ::-1])
        item["extra_pose"] = item["extra_pose"] * _FLIP_POSE
        item["extra_gaze"] = item["extra_gaze"] * _FLIP_GAZE
    if colour > 0:
        item["source"], item["driving"] = _colour_jitter([item["source"], item["driving"]], rng, colour)
        (item["cross"],) = _colour_jitter([item["cross"]], rng, colour)
        if has_extra:
            item["extra_frames"] = np.stack(_colour_jitter(list(item["extra_frames"]), rng, colour))
    return item
