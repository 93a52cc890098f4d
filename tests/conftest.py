"""Test setup: eight fake CPU devices so sharding is exercised without accelerators; the pixel judge trained once
per test run.

pytest.ini runs the suite on two pytest-xdist workers, each test file on one worker (`--dist loadfile`, so a
file's module fixtures, its trained checkpoints, are built once): XLA compiles on one core, so a second worker
keeps the other busy."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


import pytest


@pytest.fixture
def free_port() -> int:
    """A TCP port free on the loopback now: the coordinator address of a multi-process test's jax.distributed."""
    import socket

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def trained_judge(tmp_path_factory, worker_id):
    """The quickstart's pixel judge (64 x 64, default training), trained once per test run: the first worker to
    ask trains it into the run's shared temporary folder under a lock, the others wait and load it."""
    from filelock import FileLock

    from vasa_jax import judge

    run_dir = tmp_path_factory.getbasetemp()
    if worker_id != "master":  # xdist: each worker's folder sits in the run's
        run_dir = run_dir.parent
    with FileLock(str(run_dir / "judge.lock")):
        return judge.load_or_train(str(run_dir / "judge"), judge.JudgeConfig(), log=lambda message: None)


# The longest file runs first (the judge, then a 1000-step stage 1: about half the suite's time on one worker while
# the other takes the rest), and the judge's own file last (it would wait for that judge); pytest.ini keeps this
# order for the workers (`--no-loadscope-reorder`).
FIRST, LAST = "test_expression.py", "test_judge.py"


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: {FIRST: 0, LAST: 2}.get(item.path.name, 1))
