"""Data preparation: video decoding at 25 fps, the prepare command on the shared real videos and on bad inputs,
kill-and-resume, the stage-1 source and its augmentation, and a short stage-1 run on the prepared data."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from test_face import _photo  # a shared real photo, resized
from vasa_jax import video
from vasa_jax import storage
from vasa_jax.data import face, prepare, prepared

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEDIA = os.environ.get("VASA_MEDIA_DIR")
needs_media = pytest.mark.skipif(not MEDIA, reason="VASA_MEDIA_DIR is not set (the shared real videos)")

# The shared videos the preparation test uses: a frontal talking head with speech (h264, 25 fps), a 30 fps clip with a
# silent audio stream, an hevc 1080x1920 half-body clip, a clip without an audio stream, an mpeg4 clip.
REAL = {
    "real3dportrait_May_5s.mp4": "ok",
    "liveportrait_d18.mp4": "silent",
    "latentsync_demo1_video.mp4": "ok",
    "liveportrait_d0.mp4": "none",
    "sadtalker_WDA_KatieHill_000.mp4": "ok",
}
# Bad inputs made by the test, and the start of the reason each must be skipped with.
BAD = {
    "empty.mp4": "unreadable",
    "truncated.mp4": "truncated",
    "truncated_index.mp4": "unreadable",
    "no_face.mp4": "no face",
    "two_faces.mp4": "several faces",
    "one_second.mp4": "too short",
    "still_image.mp4": "a still image",
}


def _media(kind, name):
    return os.path.join(MEDIA, kind, name)


def _make_bad_inputs(folder):
    open(os.path.join(folder, "empty.mp4"), "wb").close()
    # Cut after 40% of the bytes. s18's index (moov atom) is at the file's start, so the cut file opens and decodes
    # partly; d18's is at the end, so its cut file does not open at all.
    for source, name in (("liveportrait_s18.mp4", "truncated.mp4"), ("liveportrait_d18.mp4", "truncated_index.mp4")):
        data = open(_media("video", source), "rb").read()
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data[: int(0.4 * len(data))])
    t = np.arange(75)[:, None, None, None]
    y, x = np.mgrid[0:128, 0:128]
    gradient = (((x + y)[None, :, :, None] + 3 * t) % 256).astype(np.uint8)
    video.write_mp4(os.path.join(folder, "no_face.mp4"), np.broadcast_to(gradient, (75, 128, 128, 3)))
    pair = np.concatenate([_photo("hallo_ref6.jpg", 256), _photo("real3dportrait_Macron.png", 256)], axis=1)
    video.write_mp4(os.path.join(folder, "two_faces.mp4"), [np.roll(pair, k % 5, axis=0) for k in range(75)])
    first_second = video.read_mp4(_media("video", "real3dportrait_May_5s.mp4"))
    video.write_mp4(os.path.join(folder, "one_second.mp4"), first_second["frames"][:25])
    shutil.copy(_media("images", "hallo_ref6.jpg"), os.path.join(folder, "still_image.mp4"))


# The stand-in expression classifier: the crop's mean normalised colour times a fixed matrix, 8 logits.
EMOTION_WEIGHTS = np.random.default_rng(3).normal(0, 4.0, (3, 8)).astype(np.float32)
EMOTION_BIAS = np.linspace(-1, 1, 8).astype(np.float32)


def _make_emotion_model(path):
    """An ONNX model with HSEmotion's interface (NCHW 224x224 input, batch 1, 8 logits) the test can compute by hand."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("Gemm", ["flat", "weights", "bias"], ["logits"])],
        "mean_colour_classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 8])],
        initializer=[numpy_helper.from_array(EMOTION_WEIGHTS, "weights"), numpy_helper.from_array(EMOTION_BIAS, "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


@pytest.fixture(scope="module")
def prepared_media(tmp_path_factory):
    """The REAL videos and the BAD inputs prepared in one run with two worker processes and an emotion model."""
    if not MEDIA:
        pytest.skip("VASA_MEDIA_DIR is not set (the shared real videos)")
    folder = tmp_path_factory.mktemp("raw")
    for name in REAL:
        os.symlink(_media("video", name), folder / name)
    _make_bad_inputs(str(folder))
    output = str(tmp_path_factory.mktemp("prepared"))
    emotion_model = str(tmp_path_factory.mktemp("models") / "emotion.onnx")
    _make_emotion_model(emotion_model)
    config = prepare.PrepareConfig(resolution=128, layout="auto", emotion_model=emotion_model)
    summary = prepare.prepare(str(folder), output, config, workers=2, log=lambda *_: None)
    return {"input": str(folder), "output": output, "summary": summary, "config": config}


def _records(output):
    out = {}
    for split in prepared.SPLITS:
        if prepared.load_index(output)["records"][split]:
            source = prepared.open_split(output, split)
            for i in range(len(source)):
                record = source[i]
                out[(record["clip"].decode(), int(record["segment"]))] = record
    return out


# ----------------------------------------------------------------------------------------------- decoding
def test_frames_are_resampled_from_30_to_25_fps(tmp_path):
    """Output frame k shows the source frame on screen at k / 25 s: frame floor(k * 30 / 25) of a 30 fps video whose
    frames carry their own index as brightness."""
    path = str(tmp_path / "counter.mp4")
    source_frames = [np.full((32, 32, 3), 5 * i, np.uint8) for i in range(45)]  # 1.5 s at 30 fps
    video.write_mp4(path, source_frames, fps=30)
    frames = list(video.iter_video_frames(path, fps=25))
    assert len(frames) == 38  # the instants 0, 1/25, ..., 37/25 s fall before the end at 1.5 s
    shown = np.array([round(float(f.mean()) / 5) for f in frames])
    np.testing.assert_array_equal(shown, np.floor(np.arange(38) * 30 / 25 + 1e-9).astype(int))


def test_integer_pcm_audio_of_a_video_is_scaled_to_unit_range(tmp_path):
    """A video whose audio is 16-bit PCM at 48 kHz stereo (as .mov and .avi files often carry): the waveform comes
    back mono, at 16 kHz, with the amplitude it was written with, aligned to the video."""
    import av

    path = str(tmp_path / "pcm.mov")
    rate, seconds = 48000, 1.0
    t = np.arange(int(rate * seconds)) / rate
    tone = (0.5 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
    with av.open(path, mode="w") as container:
        picture = container.add_stream("mpeg4", rate=25)
        picture.width, picture.height, picture.pix_fmt = 32, 32, "yuv420p"
        sound = container.add_stream("pcm_s16le", rate=rate, layout="stereo")
        for _ in range(25):
            container.mux(picture.encode(av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")))
        container.mux(picture.encode())
        frame = av.AudioFrame.from_ndarray(np.stack([tone, tone]).T.reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate, frame.pts = rate, 0
        container.mux(sound.encode(frame))
        container.mux(sound.encode())
    waveform = video.read_video_audio(path, 16000)
    assert abs(len(waveform) - 16000) <= 320
    assert abs(np.abs(waveform[1000:-1000]).max() - 0.5) < 0.02


def test_unreadable_videos_raise_video_error(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "text.mp4"
    text.write_text("not a video at all\n" * 20)
    for path, message in ((empty, "empty"), (text, "not a readable video"), (tmp_path / "missing.mp4", "not found")):
        with pytest.raises(video.VideoError, match=message):
            list(video.iter_video_frames(path))


# ------------------------------------------------------------------------------------------- pure pieces
def test_layouts_identities_and_splits():
    vox = [os.path.join("id00012", "abc", "00001.mp4"), os.path.join("id00012", "abd", "00002.mp4")]
    assert prepare.detect_layout(vox) == "voxceleb2"
    assert prepare.identity_of(vox[1], "voxceleb2") == "id00012"
    hdtf = ["WDA_KatieHill_000.mp4", "RD_Radio31_000.mp4"]
    assert prepare.detect_layout(hdtf) == "hdtf"
    assert prepare.identity_of(hdtf[0], "hdtf") == "WDA_KatieHill"
    assert prepare.detect_layout(["-0S5SPVqRRw_3.mp4"]) == "celebvhq"
    assert prepare.identity_of("-0S5SPVqRRw_3.mp4", "celebvhq") == "-0S5SPVqRRw"
    assert prepare.detect_layout(["a.mp4", os.path.join("bob", "b.mp4")]) == "folder"
    assert prepare.identity_of(os.path.join("bob", "x", "b.mp4"), "folder") == "bob"

    names = [f"speaker{i}" for i in range(200)]
    split = prepare.split_identities(names, 0.1)
    assert 5 < sum(v == "test" for v in split.values()) < 40
    # Stable: adding identities never moves an existing one.
    bigger = prepare.split_identities(names + [f"new{i}" for i in range(50)], 0.1)
    assert all(bigger[n] == split[n] for n in names)
    # Two identities: one of each, whatever the hash says.
    assert sorted(prepare.split_identities(["a", "b"], 0.0).values()) == ["test", "train"]
    assert prepare.split_identities(["only"], 0.5) == {"only": "train"}


def test_segments_cover_the_clip_without_overlap():
    for frames, most in ((250, 250), (251, 250), (840, 250), (78, 250)):
        parts = prepared.segments(frames, most)
        assert parts[0][0] == 0 and parts[-1][1] == frames
        assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
        assert max(b - a for a, b in parts) <= most
        assert len(parts) == -(-frames // most)


def test_main_gaze_ignores_glances():
    rng = np.random.default_rng(0)
    steady = rng.normal([4.0, -3.0], 0.5, size=(200, 2))
    glances = rng.normal([25.0, 10.0], 0.5, size=(60, 2))
    np.testing.assert_allclose(prepare.main_gaze(np.concatenate([steady, glances])), [4.0, -3.0], atol=0.5)


def test_horizontal_flip_mirrors_the_labels():
    rng = np.random.default_rng(0)
    item = {k: rng.integers(0, 255, (8, 8, 3), dtype=np.uint8) for k in ("source", "driving", "cross")}
    pose = np.array([10.0, 5.0, -3.0, 0.1, -0.2, 0.05], np.float32)
    item.update(source_pose=pose, driving_pose=pose + 1, cross_pose=pose - 1,
                source_gaze=np.array([7.0, 2.0], np.float32), driving_gaze=np.array([-4.0, 1.0], np.float32),
                driving_regions=rng.integers(0, 2, (8, 8, 2), dtype=np.uint8),
                driving_layout=rng.integers(0, 2, (8, 8, 3), dtype=np.uint8),
                source_layout=rng.integers(0, 2, (8, 8, 3), dtype=np.uint8),
                extra_frames=rng.integers(0, 255, (3, 8, 8, 3), dtype=np.uint8), extra_pose=np.stack([pose] * 3),
                extra_gaze=np.array([[5.0, -1.0]] * 3, np.float32))

    class Always:  # a generator whose draws always flip
        def random(self):
            return 0.0

    out = prepared.augment_stage1(item, Always(), colour=0.0)
    np.testing.assert_array_equal(out["source"], item["source"][:, ::-1])
    np.testing.assert_array_equal(out["cross"], item["cross"][:, ::-1])
    np.testing.assert_allclose(out["source_pose"], [-10.0, 5.0, 3.0, -0.1, -0.2, 0.05])
    np.testing.assert_allclose(out["driving_gaze"], [4.0, 1.0])
    np.testing.assert_array_equal(out["driving_regions"], item["driving_regions"][:, ::-1])
    np.testing.assert_array_equal(out["driving_layout"], item["driving_layout"][:, ::-1])
    np.testing.assert_array_equal(out["source_layout"], item["source_layout"][:, ::-1])
    np.testing.assert_array_equal(out["extra_frames"], item["extra_frames"][:, :, ::-1])
    np.testing.assert_allclose(out["extra_pose"][2], [-10.0, 5.0, 3.0, -0.1, -0.2, 0.05])
    np.testing.assert_allclose(out["extra_gaze"][0], [-5.0, -1.0])
    jittered = prepared.augment_stage1(item, np.random.default_rng(1), flip=False, colour=0.3)
    assert not np.array_equal(jittered["source"], item["source"])
    np.testing.assert_array_equal(jittered["source_pose"], pose)


# ---------------------------------------------------------------------------------------- on real videos
@needs_media
def test_prepare_keeps_the_real_videos_and_skips_each_bad_input_with_its_reason(prepared_media):
    summary = prepared_media["summary"]
    assert summary["kept"] == len(REAL) and summary["skipped"] == len(BAD), summary["skipped_clips"]
    for name, reason in BAD.items():
        assert summary["skipped_clips"][name].startswith(reason), (name, summary["skipped_clips"][name])
    assert summary["identities"]["test"] and summary["identities"]["train"]
    on_disk = json.load(open(os.path.join(prepared_media["output"], "summary.json")))
    assert on_disk["kept"] == len(REAL)


@needs_media
def test_prepared_frames_audio_and_labels(prepared_media):
    output, config = prepared_media["output"], prepared_media["config"]
    records = _records(output)
    with face.FaceMesh(max_faces=1) as mesh:
        for name, audio_status in REAL.items():
            clip = prepare.clip_key(name)
            parts = [records[k] for k in sorted(records) if k[0] == clip]
            frames = sum(len(r["jpeg_offsets"]) - 1 for r in parts)
            duration = video.probe_video(_media("video", name))["duration"]
            assert abs(frames - duration * 25) <= 1, (name, frames, duration)
            for record in parts:
                count = len(record["jpeg_offsets"]) - 1
                assert len(record["audio"]) == count * config.sample_rate // config.fps
                assert bool(record["has_audio"]) == (audio_status == "ok"), name
                for key in ("pose", "gaze", "eye_open", "mouth_open", "landmarks", "face_found"):
                    assert len(record[key]) == count, (name, key)
                # A face is found again in every stored crop, where the stored landmarks say it is.
                for i in range(count):
                    image = prepared.decode_frame(record, i)
                    assert image.shape == (config.resolution, config.resolution, 3)
                    found = mesh(image)
                    assert found, f"{name}: no face in stored frame {i} of segment {record['segment']}"
                    error = np.linalg.norm(found[0][:, :2] - record["landmarks"][i, :, :2], axis=-1)
                    assert np.median(error) < 0.05 * config.resolution, (name, i, np.median(error))
            if audio_status == "ok":
                assert np.abs(np.concatenate([r["audio"] for r in parts])).max() > 1000  # speech is there
    # The frontal clip: plausible head pose, open eyes.
    may = records[(prepare.clip_key("real3dportrait_May_5s.mp4"), 0)]
    yaw, pitch, roll = np.median(may["pose"][:, :3], axis=0)
    assert abs(yaw) < 15 and abs(pitch) < 20 and abs(roll) < 10, (yaw, pitch, roll)
    assert 0.15 < np.median(may["eye_open"]) < 0.5
    assert np.abs(may["pose"][:, 3:5]).max() < 0.3  # the smoothed crop stays on the face


@needs_media
def test_emotion_is_the_classifier_mean_over_the_clip(prepared_media):
    """The stored emotion equals the stand-in classifier computed by hand on the stored crops (up to their JPEG
    compression): every fifth frame, tight face crop, ImageNet normalisation, softmax, mean."""
    from vasa_jax.data import emotion

    config = prepared_media["config"]
    records = _records(prepared_media["output"])
    vectors = {}
    for name in REAL:
        parts = [records[k] for k in sorted(records) if k[0] == prepare.clip_key(name)]
        probabilities = []
        for record in parts:
            for i in range(len(record["jpeg_offsets"]) - 1):
                if (int(record["start_frame"]) + i) % config.count_faces_every or not record["face_found"][i]:
                    continue
                crop = emotion.tight_face_crop(prepared.decode_frame(record, i), record["landmarks"][i].astype(
                    np.float32), 224)
                mean_colour = ((crop.astype(np.float32) / 255 - emotion.IMAGENET_MEAN) / emotion.IMAGENET_STD).mean((0, 1))
                logits = mean_colour @ EMOTION_WEIGHTS + EMOTION_BIAS
                probabilities.append(np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum())
        expected = np.mean(probabilities, axis=0)
        stored = parts[0]["emotion"]
        assert stored.shape == (8,) and abs(stored.sum() - 1) < 1e-5
        np.testing.assert_allclose(stored, expected, atol=1e-2)  # measured 0.0075; swapping RGB for BGR: 0.96
        vectors[name] = stored
    assert np.ptp(np.stack(list(vectors.values())), axis=0).max() > 0.05  # the clips differ


@needs_media
def test_stage1_source_reads_the_prepared_data(prepared_media):
    output = prepared_media["output"]
    source = prepared.PreparedStage1Source(output, "train", resolution=64, pairs_per_record=3)
    index = prepared.load_index(output)
    assert len(source) == 3 * len(index["records"]["train"])
    item = source[len(source) - 1]
    assert item["source"].shape == item["driving"].shape == item["cross"].shape == (64, 64, 3)
    assert item["source"].dtype == np.uint8
    assert item["identity"] != item["cross_identity"]
    assert item["source_pose"].shape == (6,) and item["source_gaze"].shape == (2,)
    # The driving frame's regions from its landmarks: a mouth below two eyes, each a few percent of the crop.
    regions = item["driving_regions"]
    assert regions.shape == (64, 64, 2) and 0.003 < regions[..., 0].mean() < 0.08 and 0.003 < regions[..., 1].mean()
    assert np.nonzero(regions[..., 1])[0].mean() < np.nonzero(regions[..., 0])[0].mean()
    with_extra = prepared.PreparedStage1Source(output, "train", resolution=64, pairs_per_record=3, extra_frames=4)
    extra_item = with_extra[len(source) - 1]
    assert extra_item["extra_frames"].shape == (4, 64, 64, 3) and extra_item["extra_eye_open"].shape == (4,)
    np.testing.assert_array_equal(extra_item["driving"], item["driving"])
    from vasa_jax.data import synthetic

    synthetic_item = synthetic.SyntheticStage1Source(synthetic.SyntheticConfig(resolution=64))[0]
    assert set(item) == set(synthetic_item)  # the trainer reads either
    with pytest.raises(IndexError):
        source[len(source)]


@needs_media
def test_augmented_iterator_restores_to_the_same_batches(prepared_media):
    """The stage-1 training iterator on prepared data (shuffled, augmented, one of two hosts) is checkpointable:
    a fresh iterator set to a saved state yields exactly the batches the original yields next."""
    import functools
    import types

    from vasa_jax.train.loop import training_iterator

    source = prepared.PreparedStage1Source(prepared_media["output"], "train", resolution=32, pairs_per_record=2)
    data = types.SimpleNamespace(batch_size=4, seed=3, num_threads=1)
    augment = functools.partial(prepared.augment_stage1, colour=0.2)
    make = lambda: training_iterator(source, data, process_index=1, process_count=2, random_transform=augment)
    iterator = make()
    for _ in range(3):
        next(iterator)
    state = iterator.get_state()
    expected = [next(iterator) for _ in range(2)]
    restored = make()
    restored.set_state(state)
    for batch, again in zip(expected, (next(restored) for _ in range(2))):
        assert batch["source"].shape == (2, 32, 32, 3)  # this host's half of the batch
        for key in batch:
            np.testing.assert_array_equal(batch[key], again[key])
    other_host = training_iterator(source, data, process_index=0, process_count=2, random_transform=augment)
    assert not np.array_equal(next(other_host)["source"], next(make())["source"])


@needs_media
def test_killed_preparation_resumes_without_duplicates(tmp_path):
    folder = tmp_path / "raw"
    folder.mkdir()
    names = ["liveportrait_d0.mp4", "real3dportrait_May_5s.mp4", "liveportrait_d18.mp4"]
    for name in names:
        os.symlink(_media("video", name), folder / name)
    output = tmp_path / "out"
    command = [sys.executable, "-m", "vasa_jax.data.prepare", "--input", str(folder), "--output", str(output),
               "--resolution", "64", "--workers", "1"]
    # Its own process group, killed whole below, as a preempted machine or a killed job would be: the worker
    # processes die with the main one.
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    clips = output / "clips"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if clips.exists() and any(p.suffix == ".npz" and storage.TMP not in p.name for p in clips.iterdir()):
            break
        time.sleep(0.02)
    assert process.poll() is None, "the preparation ended before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    time.sleep(0.5)  # let the kernel finish removing the workers
    done_before = {p.name: p.stat().st_mtime_ns for p in clips.iterdir()
                   if p.name.endswith(".npz") and storage.TMP not in p.name}
    assert 1 <= len(done_before) < len(names)

    rerun = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    assert f"{len(done_before)} already done" in rerun.stdout, rerun.stdout
    index = prepared.load_index(str(output))
    listed = [(r["clip"], r["segment"]) for split in prepared.SPLITS for r in index["records"][split]]
    assert sorted(listed) == sorted({(prepare.clip_key(n), 0) for n in names})
    stored = _records(str(output))
    assert sorted(stored) == sorted(listed)  # every clip once, nothing half-written
    assert not [p for p in clips.iterdir() if storage.TMP in p.name]
    # The clips finished before the kill were not redone: their files are untouched.
    assert {name: (clips / name).stat().st_mtime_ns for name in done_before} == done_before


def _double_or_die(task):
    """A worker function for the isolation test: a native crash (the process exits at once) on "die"."""
    if task == "die":
        os._exit(3)
    return 2 * task


def test_a_task_that_kills_its_process_is_isolated():
    tasks = [1, 2, "die", 3, 4, 5, 6]
    results = list(prepare.map_isolating_crashes(_double_or_die, tasks, 2, lambda task: f"crashed on {task}"))
    assert sorted(map(str, results)) == sorted(map(str, [2, 4, "crashed on die", 6, 8, 10, 12]))


@needs_media
def test_command_line_reports_a_missing_input(tmp_path):
    result = subprocess.run([sys.executable, "-m", "vasa_jax.data.prepare", "--input", str(tmp_path / "nowhere"),
                             "--output", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: --input")


@needs_media
def test_beam_runner_prepares_the_same_clips_and_records_as_the_process_pool(prepared_media, tmp_path):
    """--runner=beam through the command line (DirectRunner, two worker processes) on part of the fixture's input:
    the same clips kept and skipped with the same reasons, clip files and records identical to the pool's."""
    pytest.importorskip("apache_beam", reason="requirements-beam.txt is not installed")
    names = ["real3dportrait_May_5s.mp4", "liveportrait_d0.mp4", "empty.mp4", "one_second.mp4"]
    folder, output = tmp_path / "raw", tmp_path / "beam"
    folder.mkdir()
    for name in names:
        os.symlink(os.path.realpath(os.path.join(prepared_media["input"], name)), folder / name)
    result = subprocess.run(
        [sys.executable, "-m", "vasa_jax.data.prepare", "--input", str(folder), "--output", str(output),
         "--resolution", "128", "--layout", "auto", "--emotion_model", prepared_media["config"].emotion_model,
         "--runner=beam", "--beam_options=--direct_num_workers=2 --direct_running_mode=multi_processing"],
        cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.load(open(output / "summary.json"))
    pool = prepared_media["summary"]
    assert summary["kept"] == 2 and summary["this_run"]["runner"] == "beam"
    reasons = {n: reason.replace(str(folder), prepared_media["input"]) for n, reason in summary["skipped_clips"].items()}
    assert reasons == {n: pool["skipped_clips"][n] for n in names if n in BAD}  # (the reasons name the input path)
    assert not (output / "beam").exists()  # the results' hand-over folder is removed

    pool_clips = os.path.join(prepared_media["output"], "clips")
    for name in names[:2]:
        with np.load(output / "clips" / (prepare.clip_key(name) + ".npz")) as beam_clip, \
                np.load(os.path.join(pool_clips, prepare.clip_key(name) + ".npz")) as pool_clip:
            assert sorted(beam_clip.files) == sorted(pool_clip.files)
            for key in beam_clip.files:
                assert np.array_equal(beam_clip[key], pool_clip[key]), (name, key)
    ours, theirs = _records(str(output)), _records(prepared_media["output"])
    assert sorted(ours) == sorted(k for k in theirs if k[0] in {prepare.clip_key(n) for n in names[:2]})
    for key, record in ours.items():
        for field, value in record.items():
            if field != "identity_index":  # the index among the identities of each run
                assert np.array_equal(np.asarray(value), np.asarray(theirs[key][field])), (key, field)

    # TFDS's Beam writer orders the records by key, the in-process writer by arrival: both must store them in the
    # index's order. Rebuilt from the same clip files with short segments (over ten records in a split, where
    # keys sorted as text would put record 10 before record 2), with Beam and without.
    from vasa_jax.data import prepare_beam

    short = dataclasses.replace(prepared_media["config"], segment_seconds=0.4)
    clips = [(prepare.clip_key(names[0]), "a", "train"), (prepare.clip_key(names[1]), "b", "test")]
    copy = tmp_path / "pool"
    shutil.copytree(output / "clips", copy / "clips")
    counts = prepared.build_dataset(str(output), clips, short, prepare_beam.pipeline_options(""))
    assert counts == prepared.build_dataset(str(copy), clips, short) and counts["train"] > 10
    index = prepared.load_index(str(output))
    assert index == prepared.load_index(str(copy))
    for split in prepared.SPLITS:
        beam_split, pool_split = prepared.open_split(str(output), split), prepared.open_split(str(copy), split)
        assert len(beam_split) == len(pool_split) == len(index["records"][split])
        for position, entry in enumerate(index["records"][split]):
            record = beam_split[position]
            assert (record["clip"].decode(), int(record["segment"])) == (entry["clip"], entry["segment"])
            assert all(np.array_equal(np.asarray(v), np.asarray(pool_split[position][k])) for k, v in record.items())


def test_beam_options_are_checked_before_any_clip(tmp_path):
    pytest.importorskip("apache_beam", reason="requirements-beam.txt is not installed")
    command = [sys.executable, "-m", "vasa_jax.data.prepare", "--input", str(tmp_path), "--output",
               str(tmp_path / "out")]
    unknown = subprocess.run(command + ["--runner=beam", "--beam_options=--direct_num_workers=2 --no_such=1"],
                             cwd=ROOT, capture_output=True, text=True)
    assert unknown.returncode == 1
    assert unknown.stderr.strip().splitlines()[-1] == "error: --beam_options: unknown Beam option(s) --no_such"
    assert not (tmp_path / "out").exists()
    without_beam = subprocess.run(command + ["--beam_options=--direct_num_workers=2"], cwd=ROOT,
                                  capture_output=True, text=True)
    assert without_beam.returncode == 2 and "--beam_options needs --runner=beam" in without_beam.stderr


def test_videos_and_dataset_at_urls(prepared_media, bucket):
    """Input and output at gs:// (the bucket fixture serves it from a folder): each clip as a worker prepares it
    (the video downloaded, the clip file written to the bucket), then a rerun that finds every clip done and builds
    the TFDS dataset into the bucket. The same clips, skip reasons and records as the local run's."""
    names = ["real3dportrait_May_5s.mp4", "liveportrait_d0.mp4", "empty.mp4"]
    relpaths = [names[0], names[1], "more/" + names[2]]  # (one in a subfolder: paths relative to the input URL)
    for name, relpath in zip(names, relpaths):
        (bucket / "raw" / relpath).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.join(prepared_media["input"], name), bucket / "raw" / relpath)
    config = dataclasses.replace(prepared_media["config"], layout="folder")
    assert prepare.find_videos("gs://raw") == sorted(relpaths)
    for relpath in relpaths:  # what each worker process runs (the bucket is this process's)
        result = prepare.prepare_task(("gs://raw", relpath, "gs://out", config))
        assert result["relpath"] == relpath and result["status"] == ("skipped" if "empty" in relpath else "kept")
    summary = prepare.prepare("gs://raw", "gs://out", config, workers=2, log=lambda *_: None)
    assert summary["this_run"]["clips"] == 0 and summary["input"] == "gs://raw"  # all done by the calls above
    assert summary["kept"] == 2 and list(summary["skipped_clips"]) == ["more/empty.mp4"]
    reason = summary["skipped_clips"]["more/empty.mp4"]
    assert "gs://raw/more/empty.mp4" in reason  # the URL, not the worker's temporary copy
    local_reason = prepared_media["summary"]["skipped_clips"]["empty.mp4"]
    assert reason == local_reason.replace(os.path.join(prepared_media["input"], "empty.mp4"), "gs://raw/more/empty.mp4")
    assert json.loads(storage.read_text("gs://out/summary.json")) == summary

    for name in names[:2]:
        ours = storage.load_npz(f"gs://out/clips/{prepare.clip_key(name)}.npz")
        theirs = storage.load_npz(os.path.join(prepared_media["output"], "clips", prepare.clip_key(name) + ".npz"))
        assert ours.keys() == theirs.keys() and all(np.array_equal(ours[k], theirs[k]) for k in ours), name
    # The dataset uploaded to the bucket reads as a TFDS dataset (from the bucket's folder: TFDS's readers open
    # gs:// themselves, beyond the fixture) with the local run's records.
    index = prepared.load_index("gs://out")
    assert sum(map(len, index["records"].values())) == sum(summary["records"].values())
    ours, theirs = _records(str(bucket / "out")), _records(prepared_media["output"])
    assert sorted(ours) == sorted(k for k in theirs if k[0] in {prepare.clip_key(n) for n in names[:2]})
    for key, record in ours.items():
        for field, value in record.items():
            if field not in ("identity", "identity_index"):  # (the identities of each run's layout)
                assert np.array_equal(np.asarray(value), np.asarray(theirs[key][field])), (key, field)


@pytest.fixture(scope="module")
def stage1_on_prepared(prepared_media, tmp_path_factory):
    """A few steps of the real trainer, through the command line, on the prepared real videos."""
    from test_stage1_model import SMALL

    workdir = str(tmp_path_factory.mktemp("stage1_real") / "run")
    overrides = {f"model.{k}": v for k, v in SMALL.items()}
    overrides.update({"data.root": prepared_media["output"], "data.resolution": 32, "data.batch_size": 2,
                      "data.eval_pairs": 2, "data.num_threads": 1, "train.num_steps": 3, "train.eval_every": 3,
                      "train.log_every": 1, "discriminator.channels": "(8,16)"})
    command = [sys.executable, "-m", "vasa_jax.train", "--config=configs/stage1.py:real_tiny",
               f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in overrides.items()]
    result = subprocess.run(command, cwd=ROOT, env=ONE_DEVICE, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir, result


ONE_DEVICE = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")


@needs_media
@pytest.mark.slow
def test_stage1_trainer_runs_on_the_prepared_dataset(stage1_on_prepared):
    _, result = stage1_on_prepared
    assert "step 3/3" in result.stdout and "eval step 3" in result.stdout
    losses = [float(line.split("generator_loss=")[1].split(",")[0]) for line in result.stdout.splitlines()
              if "generator_loss=" in line]
    assert len(losses) == 3 and np.all(np.isfinite(losses))


@needs_media
@pytest.mark.slow
def test_liveportrait_fine_tunes_on_the_prepared_videos(prepared_media, tmp_path):
    """configs/stage1.py:liveportrait_tiny from checkpoints of LivePortrait's layout (built with the PyTorch
    reference modules, random weights, saved as the published files): the run starts from the imported weights,
    its reconstruction loss falls on the prepared real videos, and a second run in the workdir resumes from the
    checkpoint instead of importing again. Its motion then trains a stage 2, and the two generate a video for
    every shared photo (2 s of speech each), exported as one model folder too."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("mimic_head")
    from configs.stage1 import get_config
    from test_liveportrait import randomise, save_published_files, torch_networks
    from vasa_jax.models.liveportrait import LivePortraitConfig

    cfg = LivePortraitConfig.from_config(get_config("liveportrait_tiny").model)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    folder = tmp_path / "liveportrait"
    folder.mkdir()
    save_published_files({name: randomise(module, generator) for name, module in torch_networks(cfg).items()},
                         str(folder))
    workdir = str(tmp_path / "run")

    def train(num_steps):
        overrides = {"liveportrait_dir": str(folder), "data.root": prepared_media["output"], "data.eval_pairs": 4,
                     "data.num_threads": 1, "train.num_steps": num_steps, "train.log_every": 1,
                     "train.eval_every": 20, "train.checkpoint_every": 10, "train.sample_every": 20}
        return _run("vasa_jax.train", "--config=configs/stage1.py:liveportrait_tiny", f"--workdir={workdir}",
                    *[f"--config.{key}={value}" for key, value in overrides.items()])

    first = train(20)
    assert f"LivePortrait imported from {folder}" in first.stdout
    losses = [float(line.split("reconstruction_l1=")[1].split(",")[0]) for line in first.stdout.splitlines()
              if "reconstruction_l1=" in line and "eval" not in line]
    assert len(losses) == 20 and np.all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5]), losses  # (0.75 -> 0.62 when written)
    assert "eval step 20" in first.stdout and "copy_source_psnr" in first.stdout

    second = train(24)
    assert "resumed from" in second.stdout and "at step 20" in second.stdout
    assert "LivePortrait imported" not in second.stdout and "step 24/24" in second.stdout

    # LivePortrait's motion as the stage-2 motion space, and generation with the fine-tuned renderer on every
    # shared photo, with the shared speech in turn.
    from vasa_jax import audio
    from vasa_jax.data import motion
    from vasa_jax.generate import TalkingHeadPipeline, load_image

    motion_dir, stage2 = str(tmp_path / "motion"), str(tmp_path / "stage2")
    _run("vasa_jax.data.encode_motion", f"--prepared={prepared_media['output']}", f"--stage1={workdir}",
         f"--output={motion_dir}", "--batch_size=16")
    assert json.load(open(os.path.join(motion_dir, motion.MANIFEST)))["motion_dim"] == 7 + cfg.dynamics_dim
    _run("vasa_jax.train", "--config=configs/stage2.py:real_tiny", f"--workdir={stage2}",
         f"--config.data.root={motion_dir}", "--config.train.num_steps=2", "--config.data.eval_split=train",
         "--config.train.checkpoint_every=2", "--config.train.eval_every=2", "--config.data.eval_windows=8")
    pipeline = TalkingHeadPipeline.from_workdirs(workdir, stage2)
    assert pipeline.crop == "face"  # fine-tuned on our prepared data: our framing
    photos = sorted(os.listdir(os.path.join(MEDIA, "images")))
    speeches = sorted(os.listdir(os.path.join(MEDIA, "audio")))
    for index, photo in enumerate(photos):
        speech = audio.load_audio(_media("audio", speeches[index % len(speeches)]))[: 2 * audio.SAMPLE_RATE]
        frames = pipeline.generate(_media("images", photo), speech, num_steps=2).frames
        assert frames.shape == (audio.num_video_frames(len(speech)), cfg.output_size, cfg.output_size, 3), photo
        assert frames.std() > 0, photo
    # Exported with it: the model folder renders what the workdirs render.
    model = str(tmp_path / "model")
    _run("vasa_jax.export", f"--stage1={workdir}", f"--stage2={stage2}", f"--out={model}")
    assert "LivePortrait's renderer" in open(os.path.join(model, "README.md")).read()
    exported = TalkingHeadPipeline.from_model(model).generate(_media("images", photos[0]), speech, num_steps=2)
    np.testing.assert_array_equal(
        exported.frames, pipeline.generate(_media("images", photos[0]), speech, num_steps=2).frames)
    # Pasted back into the photo (LivePortrait's stitching on), at the photo's size with even sides.
    pasted = TalkingHeadPipeline.from_workdirs(workdir, stage2, paste_back=True)
    frames = pasted.generate(_media("images", photos[0]), speech, num_steps=2).frames
    height, width = load_image(_media("images", photos[0])).shape[:2]
    assert frames.shape[1:] == (height // 2 * 2, width // 2 * 2, 3)


def _run(*args, env=ONE_DEVICE):
    result = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, " ".join(args) + "\n" + result.stdout[-3000:] + result.stderr[-3000:]
    return result


@needs_media
@pytest.mark.slow
def test_real_videos_end_to_end_to_an_exported_model(prepared_media, stage1_on_prepared, tmp_path):
    """Prepared real videos -> stage-1 motion dataset (every clip with audio kept, the preparation's labels as its
    conditions, features by the one audio policy) -> stage 2 -> exported model -> with the workdirs and datasets
    gone, a talking video from the model folder alone that decodes with the right frames and speech."""
    from vasa_jax import audio
    from vasa_jax.data import motion

    stage1, output = stage1_on_prepared[0], prepared_media["output"]
    motion_dir, stage2, model = str(tmp_path / "motion"), str(tmp_path / "stage2"), str(tmp_path / "model")
    # Two devices: the encoder's batches are split over them.
    result = _run("vasa_jax.data.encode_motion", f"--prepared={output}", f"--stage1={stage1}",
                  f"--output={motion_dir}", "--batch_size=16",
                  env=dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2"))
    index = prepared.load_index(output)["records"]
    records = _records(output)
    without_audio = 0
    for split in prepared.SPLITS:
        kept = motion.list_clips(motion_dir, split)
        with_audio = sorted(motion.prepared_clip_name(r) for r in index[split] if r["has_audio"])
        without_audio += sum(not r["has_audio"] for r in index[split])
        assert kept == with_audio, (split, kept, with_audio)
        for entry in index[split]:
            if not entry["has_audio"]:
                continue
            clip = motion.load_clip(motion_dir, split, motion.prepared_clip_name(entry))
            record = records[(entry["clip"], entry["segment"])]
            np.testing.assert_array_equal(clip["gaze"], record["main_gaze"])
            np.testing.assert_array_equal(clip["distance"], [record["head_distance"]])
            np.testing.assert_array_equal(clip["emotion"], record["emotion"])
            assert clip["identity"] == record["identity_index"] and len(clip["motion"]) == entry["num_frames"]
            # Training's features are generation's: frame_features of the record's speech, bit for bit.
            speech = np.asarray(record["audio"], np.float32) / 32768.0
            np.testing.assert_array_equal(clip["audio"], audio.frame_features(audio.make_audio_encoder("log_mel"),
                                                                              speech))
    assert without_audio == 2 and f"{without_audio} without audio left out" in result.stdout
    manifest = json.load(open(os.path.join(motion_dir, motion.MANIFEST)))
    assert manifest["source"] == "prepared" and manifest["emotion_dim"] == 8
    assert manifest["emotion_classes"][4] == "happiness" and manifest["audio_encoder"]["kind"] == "log_mel"

    # The shared videos' held-out identities have no speech, so the run evaluates on the train split.
    assert not motion.list_clips(motion_dir, "test")
    result = _run("vasa_jax.train", "--config=configs/stage2.py:real_tiny", f"--workdir={stage2}",
                  f"--config.data.root={motion_dir}", "--config.train.num_steps=2", "--config.data.eval_split=train",
                  "--config.train.checkpoint_every=2", "--config.train.eval_every=2", "--config.data.eval_windows=8")
    assert "x0_mse_t50_no_audio=" in result.stdout
    _run("vasa_jax.export", f"--stage1={stage1}", f"--stage2={stage2}", f"--out={model}")
    assert sorted(os.listdir(model)) == ["README.md", "model.json", "stage1.safetensors", "stage2.safetensors"]
    assert "x0_mse_t50" in open(os.path.join(model, "README.md")).read()

    shutil.rmtree(stage1)
    shutil.rmtree(stage2)
    shutil.rmtree(motion_dir)
    hidden = output + ".hidden"
    os.rename(output, hidden)  # the prepared dataset is the module's: moved away while generating, then back
    try:
        speech = os.path.join(MEDIA, "audio", "echomimic_echomimic_en_girl.wav")
        out = str(tmp_path / "talking.mp4")
        _run("vasa_jax.generate", f"--model={model}", f"--image={_media('images', 'hallo_ref6.jpg')}",
             f"--audio={speech}", f"--out={out}", "--num_steps=2")
    finally:
        os.rename(hidden, output)
    decoded = video.read_mp4(out)
    speech_seconds = len(audio.load_audio(speech)) / audio.SAMPLE_RATE
    assert decoded["frames"].shape == (audio.num_video_frames(len(audio.load_audio(speech))), 32, 32, 3)
    assert abs(decoded["audio_duration"] - speech_seconds) < 0.03, (decoded["audio_duration"], speech_seconds)


@needs_media
@pytest.mark.slow
def test_capp_trains_on_the_prepared_videos_and_scores_a_real_one(prepared_media, tmp_path):
    """configs/capp.py:tiny on the prepared real videos (pose angles and speech of every record with audio): the
    contrastive loss falls, the workdir's evaluation says whether it was held out, and CAPP scores a real video
    through `evaluate videos` (its table has the CAPP column). A few clips of speech are learnt by heart: on its
    own training windows the true audio scores far above the audio shifted by 1 s (held-out figures need hours of
    speech; see NOTES)."""
    from vasa_jax import evaluate
    from vasa_jax.data import capp as capp_data

    workdir = str(tmp_path / "capp")
    result = _run("vasa_jax.train", "--config=configs/capp.py:tiny", f"--workdir={workdir}",
                  f"--config.data.root={prepared_media['output']}", "--config.train.num_steps=100",
                  "--config.train.eval_every=100", "--config.data.num_threads=1")
    losses = [float(line.split("loss=")[1].split(",")[0].split()[0]) for line in result.stdout.splitlines()
              if "loss=" in line and not line.startswith("eval")]
    assert losses[-1] < 0.5 * losses[0], losses
    held_out = bool(capp_data.audio_pose_clips(prepared_media["output"], "test", _log_mel_encoder()))
    assert f"eval_is_held_out={int(held_out)}" in result.stdout
    report = evaluate.capp_shift_report(workdir, "train")
    assert report["clips"] >= 2 and report["shift"]["0"] > report["shift"]["25"] + 0.3, report
    videos = evaluate.evaluate_videos(_media("video", "sadtalker_WDA_KatieHill_000.mp4"), capp_dir=workdir,
                                      log=lambda *_: None)
    (metrics,) = videos["generated"]["videos"].values()
    assert -1 <= metrics["capp"] <= 1 and "CAPP" in videos["table"]


def _log_mel_encoder():
    from vasa_jax.audio import make_audio_encoder

    return make_audio_encoder("log_mel")
