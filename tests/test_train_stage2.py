"""The stage-2 trainer: the loss falls, a sharded step equals a single-device step, a SIGKILLed run resumes to
the same result."""

import json
import os
import signal
import subprocess
import sys
import time

import flax.linen as nn
import jax
import numpy as np
import pytest

from configs import stage2 as stage2_config
from vasa_jax.audio import LogMelEncoder
from vasa_jax.data import motion, synthetic
from vasa_jax.data.encode_motion import build
from test_train_stage1 import _final_params, tree_distance, tree_norm  # noqa: E402  (a step's parameters)
from vasa_jax.train import loop, sharding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = synthetic.SyntheticConfig(num_identities=16, num_test_identities=2, clips_per_identity=2,
                                 frames_per_clip=100, resolution=32)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("motion"))
    build(root, motion.ground_truth_motion, LogMelEncoder(num_mels=8), DATA, {"source": "synthetic"}, log=lambda _: None)
    return root


def small_config(root):
    config = stage2_config.get_config("tiny")
    config.model.update(window=16, context=4, width=32, num_layers=2, num_heads=4)
    config.data.update(root=root, batch_size=8, num_threads=1, eval_windows=8, stride=4)
    return config


def test_training_lowers_the_loss(dataset, tmp_path):
    config = small_config(dataset)
    config.train.update(num_steps=300, eval_every=300, checkpoint_every=300, log_every=300)
    task = loop.make_task(config)
    before = task.evaluate({"params": {"dit": jax.device_get(loop.create_sharded_state(
        task, config, sharding.make_mesh((1, 1), ("data", "fsdp"), devices=jax.devices()[:1]))[0]["params"]["dit"])}})
    after = loop.train(config, str(tmp_path / "run"))
    # The zero-initialised head leaves only the preconditioning's skip term, sqrt(abar) x_t (plus the anchor):
    # at half the schedule (abar about 1/2) an x0 error of about 1/2 on unit-variance motion.
    # Learning beats that most where the noise hides the most (measured: t50 0.36 -> 0.27, t75 0.47 -> 0.29).
    assert 0.25 < before["x0_mse_t50"] < 0.75
    assert after["x0_mse_t50"] < 0.85 * before["x0_mse_t50"], (before, after)
    assert after["x0_mse_t75"] < 0.75 * before["x0_mse_t75"], (before, after)


def test_sharded_step_equals_single_device_step(dataset):
    config = small_config(dataset)
    task = loop.make_task(config)
    batch_np = next(task.train_iterator(0, 1))
    results = {}
    for name, shape, devices in [("single", (1, 1), jax.devices()[:1]), ("mesh", (4, 2), jax.devices()[:8])]:
        mesh = sharding.make_mesh(shape, ("data", "fsdp"), devices=devices)
        state, state_shardings = loop.create_sharded_state(task, config, mesh)
        if name == "mesh":
            assert sharding.sharded_fraction(state["params"]) > 0.5, "large parameters must be sharded over fsdp"
        step = loop.compile_train_step(task, mesh, state_shardings, {})
        batch = sharding.global_batch(batch_np, mesh)
        # Two steps: the warm-up schedule starts at a learning rate of 0, so the first step alone moves nothing.
        state, metrics = step(state, batch, {})
        new_state, _ = step(state, batch, {})
        results[name] = jax.device_get((new_state["params"], metrics))
    (params_1, metrics_1), (params_8, metrics_8) = results["single"], results["mesh"]
    np.testing.assert_allclose(metrics_8["loss"], metrics_1["loss"], rtol=1e-5)
    initial = nn.unbox(task.init_boxed(jax.random.key(config.seed)))["params"]
    moved = max(float(np.max(np.abs(a - np.asarray(b)))) for a, b in zip(jax.tree.leaves(params_1),
                                                                         jax.tree.leaves(initial)))
    assert moved > 1e-6, "the compared steps must really update the parameters"
    worst = max(
        float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-12))
        for a, b in zip(jax.tree.leaves(params_8), jax.tree.leaves(params_1))
    )
    assert worst <= 1e-5, f"largest parameter difference relative to the tensor's scale: {worst:.3g}"


def test_bfloat16_compute_keeps_the_float32_loss_and_gradients(dataset):
    """train.compute_dtype=bfloat16: the transformer's matrix products run in bfloat16, the loss matches float32's
    within bfloat16 rounding, the gradients come back float32 and point the same way."""
    results, programs = {}, {}
    for dtype in ("float32", "bfloat16"):
        config = small_config(dataset)
        config.train.compute_dtype = dtype
        task = loop.make_task(config)
        batch = next(task.train_iterator(0, 1))
        params = nn.unbox(task.init_boxed(jax.random.key(0)))["params"]["dit"]
        # A trained-looking head: the zero-initialised output layer would make every prediction the skip term.
        params = jax.tree.map(lambda x: x + 0.05 * np.random.default_rng(x.size).normal(size=x.shape), params)
        loss_and_grad = jax.jit(jax.value_and_grad(task.loss, has_aux=True))
        programs[dtype] = loss_and_grad.lower(params, batch, jax.random.key(1)).as_text()
        (loss, _), grads = loss_and_grad(params, batch, jax.random.key(1))
        results[dtype] = jax.device_get((loss, grads))
    products = lambda text: sum("dot_general" in line and "bf16" in line for line in text.splitlines())
    assert products(programs["bfloat16"]) > 4 and products(programs["float32"]) == 0
    (loss, grads), (loss32, grads32) = results["bfloat16"], results["float32"]
    assert loss != loss32 and abs(loss - loss32) < 2e-2 * loss32, (loss, loss32)
    assert {x.dtype for x in jax.tree.leaves(grads)} == {np.dtype(np.float32)}
    flat, flat32 = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)]) for g in (grads, grads32))
    assert flat @ flat32 / np.linalg.norm(flat) / np.linalg.norm(flat32) > 0.99


def _train_command(root, workdir, num_steps, checkpoint_every):
    overrides = {
        "train.num_steps": num_steps, "train.checkpoint_every": checkpoint_every, "train.eval_every": 1000,
        "train.log_every": 1, "train.keep_checkpoints": 10, "data.root": root, "data.batch_size": 8,
        "data.num_threads": 1, "data.eval_windows": 8, "data.stride": 4, "model.window": 16, "model.context": 4,
        "model.width": 32,
    }
    return [sys.executable, "-m", "vasa_jax.train", "--config=configs/stage2.py:tiny", f"--workdir={workdir}",
            *[f"--config.{k}={v}" for k, v in overrides.items()]]


@pytest.mark.slow
def test_sigkill_and_resume_matches_uninterrupted_run(dataset, tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    num_steps, every = 30, 10
    straight = tmp_path / "straight"
    subprocess.run(_train_command(dataset, straight, num_steps, every), cwd=ROOT, env=env, check=True,
                   capture_output=True)
    killed = tmp_path / "killed"
    process = subprocess.Popen(_train_command(dataset, killed, num_steps, every), cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    first_checkpoint = killed / "checkpoints" / str(every)
    deadline = time.time() + 600
    while not first_checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    steps_done = sorted(int(p.name) for p in (killed / "checkpoints").iterdir() if p.name.isdigit())
    assert steps_done and max(steps_done) < num_steps, steps_done
    resumed = subprocess.run(_train_command(dataset, killed, num_steps, every), cwd=ROOT, env=env, check=True,
                             capture_output=True, text=True)
    assert "resumed from" in resumed.stdout
    for a, b in zip(jax.tree.leaves(_final_params(killed, num_steps)), jax.tree.leaves(_final_params(straight, num_steps))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_a_url_workdir_trains_and_resumes_with_no_folder_named_after_the_scheme(dataset, tmp_path):
    """Issue 14: `--workdir=file:///...` through the public CLI, run from another folder: the checkpoints,
    TensorBoard events and evaluation land at the URL's path, a second run resumes from them, and the working
    directory stays empty (before, a URL went through os.path.abspath into `<cwd>/file:/...`). Object-store URLs
    take the same path functions (tests/test_storage.py serves gs:// from a folder)."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", PYTHONPATH=ROOT)
    cwd, run = tmp_path / "cwd", tmp_path / "run"
    cwd.mkdir()
    command = _train_command(dataset, f"file://{run}", 30, 10)  # the SIGKILL test's program: compiled once
    command[3] = f"--config={os.path.join(ROOT, 'configs', 'stage2.py')}:tiny"
    first = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    assert f"done; outputs in {run} (tensorboard/, checkpoints/)" in first.stdout
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == ["10", "20", "30"]
    assert json.loads((run / "eval.json").read_text())["step"] == 30
    assert any(p.name.startswith("events.") for p in (run / "tensorboard").iterdir())
    second = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resumed from {run / 'checkpoints'} at step 30" in second.stdout
    assert os.listdir(cwd) == []


@pytest.mark.slow
def test_two_processes_train_as_one_and_a_checkpoint_moves_between_process_counts(dataset, tmp_path, free_port):
    """Issue 14: the public CLI under jax.distributed on the loopback, 2 processes of 4 CPU devices, makes the
    parameters of 1 process of 8 devices after each step (relative 1e-5, and within 1% of the single run's update)
    with the same losses (the global batch is the same examples in the same order); its checkpoint, written by
    both processes, continues in 1 process to the single run's parameters. Adam's eps is raised far above the
    gradients, which makes each update proportional to the gradient, as in stage 1's test: with the default eps an
    early update is lr * sign(g), and rounding decides the sign of gradients that are near zero."""
    # A constant learning rate after the first step's warmup (the runs have different lengths, which would
    # stretch a decaying schedule differently) and no weight decay (lr 10 would scale it to a wipe).
    linear_adam = ["--config.optimizer.eps=1000", "--config.optimizer.learning_rate=10.0",
                   "--config.optimizer.end_learning_rate=10.0", "--config.optimizer.warmup_steps=1",
                   "--config.optimizer.weight_decay=0.0"]
    command = lambda workdir, steps: _train_command(dataset, workdir, steps, 1) + linear_adam
    one_env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    single, two = tmp_path / "one", tmp_path / "two"
    straight = subprocess.run(command(single, 5), cwd=ROOT, env=one_env, capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr[-3000:]
    processes = [
        subprocess.Popen(command(two, 3), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
                                  JAX_COORDINATOR_ADDRESS=f"localhost:{free_port}", JAX_NUM_PROCESSES="2",
                                  JAX_PROCESS_ID=str(index)))
        for index in range(2)]
    outputs = [process.communicate(timeout=600) for process in processes]
    for process, (stdout, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stdout[-2000:] + stderr[-3000:]
    assert "mesh {'data': 8, 'fsdp': 1}" in outputs[0][0]

    def losses(stdout):
        return np.array([float(line.split("loss=")[1].split()[0].rstrip(",")) for line in stdout.splitlines()
                         if line.startswith("step ") and "loss=" in line])

    np.testing.assert_allclose(losses(outputs[0][0]), losses(straight.stdout)[:3], rtol=1e-3)  # (as printed)
    norm, distance = tree_norm, tree_distance
    params = {("one", step): _final_params(single, step) for step in range(1, 6)}
    params.update({("two", step): _final_params(two, step, like=params["one", step]) for step in (1, 2, 3)})
    for step in (1, 2, 3):
        difference = distance(params["two", step], params["one", step])
        assert difference <= 1e-5 * norm(params["one", step]), f"step {step}: parameters differ by {difference}"
        if step > 1:  # (the first step's learning rate is the warmup's 0)
            update = distance(params["one", step], params["one", step - 1])
            assert update > 1e-6 * norm(params["one", step]), "the compared steps must really update the parameters"
            assert difference <= 1e-2 * update, f"step {step}: {difference / update:.3g} of the update"

    resumed = subprocess.run(command(two, 5), cwd=ROOT, env=one_env, capture_output=True, text=True)
    assert resumed.returncode == 0 and "at step 3" in resumed.stdout, resumed.stderr[-3000:]
    reference = params["one", 5]
    final = _final_params(two, 5, like=reference)
    difference = distance(final, reference)
    assert difference <= 1e-5 * norm(reference)
    assert difference <= 1e-2 * distance(reference, params["one", 3]), "the resumed steps differ from the single run's"
