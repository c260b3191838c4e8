"""Shared fixtures: tiny generated multi-domain video sets (real mp4 files) made by the tests."""
from __future__ import annotations

import os

import pytest

from vidlit.data import synthetic

@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> str:
    """4 domains x 5 classes x 6 videos, 32x32 px, 16 frames: ROOT/<domain>/<class>/<video>.mp4."""
    cache = tmp_path_factory.mktemp("vidlit-cache")
    return synthetic.generate(seed=0, videos_per_class=6, size=32, cache_dir=str(cache))


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path_factory):
    """No test reaches W&B servers or the user's cache."""
    monkeypatch.setenv("WANDB_MODE", os.environ.get("VIDLIT_TEST_WANDB_MODE", "disabled"))
    monkeypatch.setenv("VIDLIT_CACHE", str(tmp_path_factory.getbasetemp() / "vidlit-user-cache"))
    monkeypatch.delenv("VIDLIT_RUN_DIR", raising=False)
    monkeypatch.setenv("VIDLIT_OFFLINE", "1")  # no test downloads published weights
    # fp32 whatever the CPU (bf16-mixed is the default on CPUs with AVX-512 BF16/AMX): the same numerics
    # on every CI machine; tests/test_precision_choice.py removes it to test the detected default
    monkeypatch.setenv("VIDLIT_PRECISION", os.environ.get("VIDLIT_TEST_PRECISION", "32-true"))
