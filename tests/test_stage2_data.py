"""Stage-2 motion datasets: encoding (resumable, atomic), statistics, the window pipeline, and main gaze."""

import os

import numpy as np
import pytest

from vasa_jax.audio import LogMelEncoder, num_video_frames
from vasa_jax.data import motion, synthetic
from vasa_jax.data.encode_motion import build

SMALL = synthetic.SyntheticConfig(num_identities=3, num_test_identities=1, clips_per_identity=1, frames_per_clip=60,
                                  resolution=32)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("motion"))
    build(root, motion.ground_truth_motion, LogMelEncoder(num_mels=8), SMALL, {"source": "synthetic"}, log=lambda _: None)
    return root


def test_encoded_clips_line_up_with_the_video(dataset):
    names = motion.list_clips(dataset, "train")
    assert len(names) == 3 and len(motion.list_clips(dataset, "test")) == 1
    clip = motion.load_clip(dataset, "train", names[0])
    assert clip["motion"].shape == (60, 10) and clip["audio"].shape == (60, 16)
    assert num_video_frames(len(synthetic.get_clip(SMALL, 0, 0).audio)) == 60
    # the ground-truth motion's last column is the mouth opening, driven by the audio's loudness
    np.testing.assert_allclose(clip["motion"][:, -1], clip["mouth_open"])
    manifest = motion.read_json(os.path.join(dataset, motion.MANIFEST))
    assert (manifest["motion_dim"], manifest["audio_dim"], manifest["emotion_dim"]) == (10, 16, 4)
    stats = motion.read_json(os.path.join(dataset, motion.STATS))
    assert len(stats["motion_mean"]) == 10 and min(stats["motion_std"]) > 0


def test_encoding_resumes_without_redoing_clips(dataset, tmp_path):
    import shutil

    root = str(tmp_path / "copy")
    shutil.copytree(dataset, root)
    os.remove(motion.clip_path(root, "train", motion.list_clips(root, "train")[1]))
    calls = []

    def counting(render, truth):
        calls.append(len(render()))
        return motion.ground_truth_motion(render, truth)

    build(root, counting, LogMelEncoder(num_mels=8), SMALL, {"source": "synthetic"}, log=lambda _: None)
    assert calls == [60]  # only the missing clip was encoded
    assert len(motion.list_clips(root, "train")) == 3


def test_windows_with_context(dataset):
    source = motion.MotionWindowSource(dataset, "train", window=20, context=5, stride=10)
    assert len(source) == 3 * 5  # starts 0, 10, 20, 30, 40 in each 60-frame clip
    first, second = source[0], source[1]
    assert first["motion"].shape == (20, 10) and first["previous_motion"].shape == (5, 10)
    assert not first["previous_valid"] and second["previous_valid"]
    np.testing.assert_array_equal(first["previous_motion"], 0.0)
    # the context of the window at frame 10 is frames 5..9 of the same normalised sequence
    clip = motion.load_clip(dataset, "train", motion.list_clips(dataset, "train")[0])
    stats = source.stats
    expected = (clip["motion"][5:10] - stats["motion_mean"]) / stats["motion_std"]
    np.testing.assert_allclose(second["previous_motion"], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(second["motion"][0], (clip["motion"][10] - stats["motion_mean"]) / stats["motion_std"],
                               rtol=1e-5, atol=1e-5)
    assert second["mouth_open"].shape == (20,)
    with pytest.raises(ValueError, match="no train clip of at least"):
        motion.MotionWindowSource(dataset, "train", window=61, context=5)


def test_main_gaze_ignores_saccades():
    rng = np.random.default_rng(0)
    steady = np.array([8.0, -3.0]) + rng.normal(0, 0.5, (80, 2))
    saccades = rng.uniform(-30, 30, (20, 2))
    gaze = np.concatenate([steady, saccades])
    np.testing.assert_allclose(motion.main_gaze(gaze), [8.0, -3.0], atol=0.5)
    with pytest.raises(ValueError, match="per-frame gaze"):
        motion.main_gaze(np.zeros((0, 2)))


def test_missing_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="motion dataset"):
        motion.MotionWindowSource(str(tmp_path), "train", window=10, context=2)


@pytest.mark.slow
def test_encode_motion_with_a_stage1_checkpoint(tmp_path):
    """The command line end to end: a (barely trained) stage-1 workdir encodes every synthetic clip into
    [z_pose (7), z_dyn (3K + E)] per frame; a second run finds everything done."""
    import subprocess
    import sys

    from test_train_stage1 import ROOT, SMALL_MODEL, _train_command

    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    stage1 = tmp_path / "stage1"
    subprocess.run(_train_command(stage1, 1, 1), cwd=ROOT, env=env, check=True, capture_output=True)
    output = tmp_path / "motion"
    command = [sys.executable, "-m", "vasa_jax.data.encode_motion", f"--output={output}", f"--stage1={stage1}",
               "--batch_size=50"]
    first = subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    assert "(16 new)" in first.stdout, first.stdout  # 6 + 2 identities x 2 clips
    clip = motion.load_clip(str(output), "train", motion.list_clips(str(output), "train")[0])
    dynamics = 3 * SMALL_MODEL["num_keypoints"] + SMALL_MODEL["expression_code_dim"]  # z_dyn: deformations, code
    assert clip["motion"].shape == (100, 7 + dynamics) and np.all(np.isfinite(clip["motion"]))
    second = subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    assert "(0 new)" in second.stdout, second.stdout
