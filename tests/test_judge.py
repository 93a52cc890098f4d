"""The pixel judge: independent labels in its training frames, a save/load round trip, clear errors, and (trained
once for the session, `trained_judge` in conftest.py) readings that follow the true labels of held-out identities."""

import numpy as np
import pytest

from vasa_jax import evaluate, judge as judge_lib
from vasa_jax.data import synthetic
from vasa_jax.models.judge import OUTPUTS, FrameJudge


def test_training_states_have_independent_labels():
    states = judge_lib.random_states(np.random.default_rng(0), 5000)
    labels = judge_lib.state_labels(states)
    assert labels.shape == (5000, len(OUTPUTS))
    correlation = np.corrcoef(labels.T)
    off_diagonal = correlation[~np.eye(len(OUTPUTS), dtype=bool)]
    assert np.abs(off_diagonal).max() < 0.05  # nothing can be read off anything else (the clips' nod coupling)
    assert (labels[:, OUTPUTS.index("eye_open")] < 0.5).mean() > 0.1  # closed eyes are common, unlike in clips


def test_save_and_load_give_the_same_readings(tmp_path):
    import jax

    config = judge_lib.JudgeConfig(resolution=32)
    params = FrameJudge().init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))["params"]
    judge = judge_lib.Judge(params, config, {"validation": {"r_mouth_open": 0.5}})
    frames = synthetic.render_frames(synthetic.get_identity(0), judge_lib.random_states(np.random.default_rng(1), 5), 32)
    judge.save(str(tmp_path))
    loaded = judge_lib.Judge.load(str(tmp_path))
    assert loaded.config == config and loaded.info == judge.info
    for name, values in judge.read(frames).items():
        assert values.shape == (5,)
        np.testing.assert_array_equal(values, loaded.read(frames)[name])
    with pytest.raises(ValueError, match=r"reads frames \[T, 32, 32, 3\]"):
        judge.read(np.zeros((2, 64, 64, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match="no trained judge here"):
        judge_lib.Judge.load(str(tmp_path / "missing"))


@pytest.mark.long
def test_trained_judge_reads_held_out_identities(trained_judge):
    """Validation frames of the test identities (never trained on), labels drawn independently."""
    validation = trained_judge.info["validation"]
    assert validation["r_mouth_open"] > 0.9, validation
    assert validation["r_eye_open"] > 0.6, validation
    assert min(validation["r_yaw"], validation["r_pitch"], validation["r_roll"]) > 0.9, validation


@pytest.mark.long
def test_trained_judge_reads_a_talking_clip(trained_judge):
    """On the true frames of a held-out speaker's clip the judged mouth follows the speech's mouth opening, and a
    blink is seen as closed eyes. The 2026-11-29 judge read the clips' true blink frames at 0.33-0.76 against
    0.74-1.02 open; CI's machine trained one that read this clip's four blink frames at 0.63 against 0.88 (a gap of
    0.25), so the gap asked for is 0.15: a judge blind to blinks reads both alike."""
    clip = evaluate.held_out_clips(synthetic.SyntheticConfig(num_test_identities=8, clips_per_identity=2), 1)[0]
    readings = trained_judge.read(synthetic.render_clip(clip, trained_judge.resolution))
    assert evaluate.pearson(readings["mouth_open"], clip.states.mouth_open) > 0.8
    closed = np.asarray(clip.states.eye_open) < 0.2
    if closed.any():
        assert readings["eye_open"][closed].mean() < readings["eye_open"][~closed].mean() - 0.15
