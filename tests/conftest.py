"""Test setup: eight fake CPU devices so sharding is exercised without accelerators."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


import pytest


@pytest.fixture(scope="session")
def trained_judge(tmp_path_factory):
    """The quickstart's pixel judge (64 x 64, default training), trained once per test session."""
    from vasa_jax import judge

    return judge.train_judge(judge.JudgeConfig(), str(tmp_path_factory.mktemp("judge")), log=lambda message: None)
