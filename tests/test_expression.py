"""Expression reaches the pixels: the quickstart's tiny stage 1, trained once for this module on the synthetic heads,
re-enacts held-out neutral portraits with the motion of their clips, and the pixel judge (its own weights, trained
on true frames only) sees the mouth open in the rendered frames as in the true ones; with the portrait's own
dynamics (the driving pose alone) it does not. A stage 1 whose expression stopped reaching the pixels (a decoder
that only warps the portrait: the previous design scored r = 0.02 to 0.2 here) fails."""

import os
import subprocess
import sys

import pytest

from vasa_jax import evaluate
from vasa_jax.data import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 1000  # the quickstart's


@pytest.fixture(scope="module")
def transfer(tmp_path_factory, request):
    workdir = str(tmp_path_factory.mktemp("stage1"))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    # The stage 1 trains in its own process while this one trains (or waits for) the judge: the two are the
    # suite's longest pieces, and one after the other they made this file the suite's critical path.
    log_path = os.path.join(workdir, "train.log")  # a file, not a pipe nobody reads while the judge trains
    with open(log_path, "w") as log:
        training = subprocess.Popen([sys.executable, "-m", "vasa_jax.train", "--config=configs/stage1.py:tiny",
                                     f"--workdir={workdir}", f"--config.train.num_steps={STEPS}",
                                     "--config.train.eval_every=1000000", "--config.train.sample_every=1000000",
                                     f"--config.train.checkpoint_every={STEPS}"],
                                    cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            trained_judge = request.getfixturevalue("trained_judge")
            training.wait()
        finally:
            training.kill()
    assert training.returncode == 0, open(log_path).read()[-3000:]
    reenact, config = evaluate.stage1_reenactor(workdir)
    data = synthetic.from_stage1_config(config)
    clips = evaluate.held_out_clips(data, 8)
    return evaluate.expression_transfer(reenact, trained_judge, clips, data.resolution)


@pytest.mark.slow
@pytest.mark.long
def test_an_open_mouth_reaches_the_pixels(transfer):
    """Measured with this configuration (1000 steps, 16 clips): mouth PSNR +3.4 dB over copying the portrait on the
    frames whose mouth opens by more than 0.5, judged mouth r = 0.80, and -0.06 with the portrait's own dynamics
    (three seeds: 0.78 to 0.84, gain +3.4 to +3.5 dB); the bounds below leave room for run-to-run spread."""
    print({k: v for k, v in transfer.items() if k != "per_clip"})
    assert transfer["mouth_pairs"] > 100
    assert transfer["mouth_psnr_gain_over_copy_db"] > 2.0, transfer
    assert transfer["judge_r_mouth_open"] > 0.55, transfer
    assert abs(transfer["judge_r_mouth_open_own_dynamics"]) < 0.25, transfer
