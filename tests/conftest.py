"""Test setup: eight fake CPU devices so sharding is exercised without accelerators; the pixel judge trained once
per test run.

pytest.ini runs the suite on two pytest-xdist workers, each test file on one worker (`--dist loadfile`, so a
file's module fixtures, its trained checkpoints, are built once): XLA compiles on one core, so a second worker
keeps the other busy."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent compilation cache for the whole run, made by the controlling process and inherited by the xdist
# workers and by every command-line run the tests start: the same programs are compiled by many training processes
# (the SIGKILL tests' three runs each, the CLI fixtures, the expression test), and on a slow 2-core CPU the tiny
# stage-1 step's compile is 86 s cold and 27 s from the cache (a 6-step run: 3:13 against 1:00). A maximum size
# turns on the cache's file lock, so two workers never read an entry the other is still writing. Emptied at the
# end of the run: nothing carries over between runs.
if "PYTEST_XDIST_WORKER" not in os.environ and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    _compilation_cache = tempfile.mkdtemp(prefix="vasa_jax_tests_xla_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _compilation_cache
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(8 << 30))
    atexit.register(shutil.rmtree, _compilation_cache, ignore_errors=True)


import pytest


# The etils.epath operations a gs:// path goes through; the bucket fixture serves them from a folder.
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

    from etils.epath import testing as epath_testing

    with epath_testing.mock_epath(**{name: redirect for name in OPERATIONS}):
        yield root
    assert os.listdir(cwd) == [], "something was written to a local folder instead of the bucket"


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


# The longest files run first, so that neither worker is left with a long file at the end: with `-m long`, the
# expression test (the judge, then a 1000-step stage 1), then the files of the default run with the most training
# runs; the judge's own file last (it would wait for the judge the expression test trains). pytest.ini keeps this
# order for the workers (`--no-loadscope-reorder`).
FIRST = ("test_expression.py", "test_generate.py", "test_prepare.py", "test_train_stage1.py", "test_train_stage2.py")
LAST = "test_judge.py"


def _file_rank(item) -> int:
    name = item.path.name
    return FIRST.index(name) if name in FIRST else len(FIRST) + (name == LAST)


def pytest_collection_modifyitems(items):
    items.sort(key=_file_rank)
