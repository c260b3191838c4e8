"""Helpers for tests: run the CLI as a user would, and flags for fast runs on the tiny set."""
from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_vidlit(*args: str, cwd: str | None = None, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m vidlit ARGS`` in a subprocess, as a user would."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "vidlit", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


# flags that make a CLI run on the tiny set fast
TINY_FLAGS = [
    "--data.size", "32", "--data.num_frames", "4", "--data.frame_stride", "2", "--data.batch_size", "12",
    "--data.num_workers", "0", "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
]
