"""Workdirs and datasets at URLs (issue 14): `vasa_jax.storage` turns what a user gives into a local path or an
object-store URL, refuses a scheme nobody serves, and the trainer's own writes (evaluation JSON, sample PNGs,
TensorBoard events, the data iterator's position) and the motion datasets reach a gs:// folder through etils.epath.
No test can reach Cloud Storage: here etils' public test hook (`etils.epath.testing.mock_epath`, the `bucket`
fixture of conftest.py) serves gs:// from a temporary folder, so the test sees every byte sent to the bucket, and
that nothing lands in a local folder named after the scheme."""

import json
import os
import struct

import cv2
import numpy as np
import pytest

from vasa_jax import storage
from vasa_jax.train import checkpointing, loop, metrics


def test_location_of_paths_and_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.location("run") == str(tmp_path / "run")
    assert storage.location(f"file://{tmp_path}/run") == str(tmp_path / "run")
    assert storage.location("file:///a%20b/run") == "/a b/run"
    assert storage.location("gs://bucket/runs/a/") == "gs://bucket/runs/a"
    assert storage.join("gs://bucket/runs", "checkpoints") == "gs://bucket/runs/checkpoints"
    with pytest.raises(ValueError, match=r"unsupported URL scheme memory://.*gs://"):
        storage.location("memory://runs/a")
    with pytest.raises(ValueError, match="not host 'server'"):
        storage.location("file://server/runs/a")
    from vasa_jax import export

    with pytest.raises(export.ExportError, match="unsupported URL scheme memory://"):  # (the CLI's one line)
        export.export(str(tmp_path / "stage1"), str(tmp_path / "stage2"), "memory://models/a")


def test_the_trainers_writes_reach_a_gs_workdir(bucket):
    workdir = storage.location("gs://runs/a")
    storage.makedirs(workdir)
    storage.write_json(storage.join(workdir, "eval.json"), {"step": 3, "loss": 0.5})
    assert json.loads((bucket / "runs/a/eval.json").read_text()) == {"step": 3, "loss": 0.5}
    assert not (bucket / f"runs/a/eval.json{storage.TMP}").exists()

    image = np.random.default_rng(0).integers(0, 256, (8, 12, 3), dtype=np.uint8)
    loop.write_png(storage.join(workdir, "samples", "step_0000003.png"), image)
    decoded = cv2.imread(str(bucket / "runs/a/samples/step_0000003.png"))
    np.testing.assert_array_equal(decoded[..., ::-1], image)

    writer = metrics.MetricWriter(workdir, num_steps=3, batch_size=2)
    writer.write_scalars(1, {"loss": 2.0})
    writer.write_scalars(2, {"loss": 1.5})
    writer.close()
    (events,) = (bucket / "runs/a/tensorboard").iterdir()
    assert _scalar_events(events.read_bytes()) == [("train/loss", 1, 2.0), ("train/loss", 2, 1.5)]

    # The data iterator's position, as every process writes it beside a checkpoint, read back from the bucket.
    data_dir = storage.join(workdir, "checkpoints", "3", "data")
    for process in range(2):
        storage.write_json(storage.join(data_dir, f"process_{process}-of-2.json"), {"position": 12})
    assert storage.glob(data_dir, "process_*-of-*.json") == [f"{data_dir}/process_0-of-2.json",
                                                            f"{data_dir}/process_1-of-2.json"]
    assert checkpointing.saved_position(data_dir) == {"position": 12}
    assert storage.isdir(data_dir) and not storage.exists(storage.join(workdir, "checkpoints", "4"))


def _scalar_events(data: bytes) -> list:
    """(tag, step, value) of every scalar in a TensorBoard event file (TFRecord framing: length, its CRC, the
    record, its CRC)."""
    from tensorboardX.proto import event_pb2

    found, offset = [], 0
    while offset < len(data):
        (length,) = struct.unpack_from("<Q", data, offset)
        event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
        offset += 12 + length + 4
        found += [(value.tag, event.step, value.simple_value) for value in event.summary.value]
    return found


def test_a_motion_dataset_is_written_to_and_read_from_a_gs_url(bucket):
    """encode_motion's writer (clips, statistics, manifest) into gs://, and stage 2's window source reading it
    back: the same windows as from the bucket's folder read as a local path."""
    from vasa_jax.data import encode_motion, motion

    rng = np.random.default_rng(0)

    def clip_records(split, done):
        for number in range(2 if split == "train" else 1):
            frames = 40 + 7 * number
            yield f"{split}_{number}", {
                "motion": rng.normal(size=(frames, 5)).astype(np.float32),
                "audio": rng.normal(size=(frames, 3)).astype(np.float32), "has_audio": np.bool_(True),
                "gaze": rng.normal(size=2).astype(np.float32), "distance": rng.normal(size=1).astype(np.float32),
                "emotion": np.zeros(0, np.float32), "identity": np.str_(f"person{number}")}

    summary = encode_motion.write_dataset("gs://data/motion", clip_records, {"source": "test"}, log=lambda _: None)
    assert summary["counts"] == {"train": 2, "test": 1}
    assert sorted(os.listdir(bucket / "data" / "motion" / "clips" / "train")) == ["train_0.npz", "train_1.npz"]
    assert json.loads((bucket / "data" / "motion" / motion.MANIFEST).read_text())["motion_dim"] == 5
    remote = motion.MotionWindowSource("gs://data/motion", "train", window=16, context=4, stride=8)
    local = motion.MotionWindowSource(str(bucket / "data" / "motion"), "train", window=16, context=4, stride=8)
    assert remote.root == "gs://data/motion" and len(remote) == len(local) > 4
    for index in range(len(local)):
        for key, value in local[index].items():
            np.testing.assert_array_equal(remote[index][key], value)
    with pytest.raises(FileNotFoundError, match="is this a motion dataset"):
        motion.MotionWindowSource("gs://data/nothing", "train", window=16, context=4)
