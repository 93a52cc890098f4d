"""launch/: the host setup installs jax's accelerator build at the version requirements.txt pins, and the pod and
multi-host scripts run the trainer's public command with what jax.distributed needs (read in their DRY_RUN
output: no cloud is reachable here)."""

import os
import shlex
import subprocess

import pytest
from packaging.requirements import Requirement

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch")


def _run(script, *args, **env):
    return subprocess.run(["bash", os.path.join(LAUNCH, script), *args], capture_output=True, text=True,
                          env=dict(os.environ, DRY_RUN="1", **env), cwd="/")


def _pinned_jax() -> str:
    for line in open(os.path.join(ROOT, "requirements.txt")):
        line = line.split("#")[0].strip()
        if line and Requirement(line).name == "jax":
            (spec,) = Requirement(line).specifier
            return spec.version
    raise AssertionError("requirements.txt pins no jax")


@pytest.mark.parametrize("script", sorted(f for f in os.listdir(LAUNCH) if f.endswith(".sh")))
def test_scripts_parse(script):
    assert subprocess.run(["bash", "-n", os.path.join(LAUNCH, script)]).returncode == 0


@pytest.mark.parametrize("accelerator", ["tpu", "cuda12", "cuda13", "cpu"])
def test_setup_installs_the_pinned_jax_for_the_accelerator(accelerator):
    result = _run("setup_host.sh", accelerator, "--gcs")
    assert result.returncode == 0, result.stderr
    commands = result.stdout.splitlines()
    assert commands[0] == "python3 -m pip install -r requirements.txt"
    accelerator_builds = [c for c in commands if "jax[" in c]
    if accelerator == "cpu":
        assert accelerator_builds == []
    else:
        assert accelerator_builds == [f"python3 -m pip install jax[{accelerator}]=={_pinned_jax()}"]
    assert commands[-1] == "python3 -m pip install gcsfs"
    assert "gcsfs" not in _run("setup_host.sh", accelerator).stdout


@pytest.mark.parametrize("args", [(), ("rocm",), ("tpu", "--s3")])
def test_setup_refuses_what_it_does_not_know(args):
    result = _run("setup_host.sh", *args)
    assert result.returncode == 2 and "usage:" in result.stderr and result.stdout == ""


def test_tpu_pod_sets_up_every_host_then_trains_on_all_of_them():
    result = _run("tpu_pod.sh", "my-tpu", "us-central2-b", "gs://bucket/runs/stage1", "configs/stage1.py",
                  "--config.train.compute_dtype=bfloat16", SETUP="1")
    assert result.returncode == 0, result.stderr
    setup, train = [shlex.split(line) for line in result.stdout.splitlines()]
    for command in (setup, train):
        assert command[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"] and "--worker=all" in command
        assert command[command.index("--zone") + 1] == "us-central2-b"
    assert shlex.split(setup[-1]) == ["cd", "vasa_jax", "&&", "launch/setup_host.sh", "tpu", "--gcs"]
    remote = shlex.split(train[-1])
    assert remote[:4] == ["cd", "vasa_jax", "&&", "VASA_DISTRIBUTED=1"]
    assert remote[4:7] == ["python3", "-m", "vasa_jax.train"]
    assert {"--config=configs/stage1.py", "--workdir=gs://bucket/runs/stage1", "--config.mesh.shape=(-1,1)",
            "--config.train.compute_dtype=bfloat16"} <= set(remote[7:])
    assert len(_run("tpu_pod.sh", "t", "z", "gs://b/r", "configs/stage1.py").stdout.splitlines()) == 1
    assert _run("tpu_pod.sh", "t", "z").returncode == 2


def test_multihost_gpu_needs_the_coordinator_and_passes_it_to_jax():
    missing = _run("multihost_gpu.sh", "gs://b/r", "configs/stage1.py", NUM_PROCESSES="2", PROCESS_ID="0")
    assert missing.returncode != 0 and "set COORDINATOR" in missing.stderr
    result = _run("multihost_gpu.sh", "gs://b/r", "configs/stage2.py", "--config.train.num_steps=5",
                  COORDINATOR="10.0.0.1:1234", NUM_PROCESSES="2", PROCESS_ID="1")
    assert result.returncode == 0, result.stderr
    assert shlex.split(result.stdout) == [
        "JAX_COORDINATOR_ADDRESS=10.0.0.1:1234", "JAX_NUM_PROCESSES=2", "JAX_PROCESS_ID=1", "python3", "-m",
        "vasa_jax.train", "--config=configs/stage2.py", "--workdir=gs://b/r", "--config.train.num_steps=5"]
