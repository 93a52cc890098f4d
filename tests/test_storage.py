"""Workdirs at URLs (issue 14): `vasa_jax.storage` turns what a user gives into a local path or an object-store URL,
refuses a scheme nobody serves, and the trainer's own writes (evaluation JSON, sample PNGs, TensorBoard events,
the data iterator's position) reach a gs:// workdir through etils.epath. No test can reach Cloud Storage: here
etils' public test hook (`etils.epath.testing.mock_epath`) serves gs:// from a temporary folder, so the test sees
every byte the trainer sends to the bucket, and that nothing lands in a local folder named after the scheme."""

import json
import os
import struct

import cv2
import numpy as np
import pytest
from etils.epath import testing as epath_testing

from vasa_jax import storage
from vasa_jax.train import checkpointing, loop, metrics

OPERATIONS = ("copy", "exists", "glob", "isdir", "listdir", "makedirs", "mkdir", "open", "remove", "rename",
              "replace", "rmtree", "stat", "walk")


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    """gs:// served from tmp_path/bucket for the test's duration; the working directory is an empty folder."""
    root = tmp_path / "bucket"
    root.mkdir()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)

    def local(path):
        text = os.fspath(path)
        return str(root / text[len("gs://"):]) if text.startswith("gs://") else text

    def redirect(original, path, *args, **kwargs):
        args = [local(a) if isinstance(a, str) and a.startswith("gs://") else a for a in args]
        return original(local(path), *args, **kwargs)

    with epath_testing.mock_epath(**{name: redirect for name in OPERATIONS}):
        yield root
    assert os.listdir(cwd) == [], "something was written to a local folder instead of the bucket"


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
