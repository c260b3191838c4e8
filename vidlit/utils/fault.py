"""Crash-safety tests only: ``VIDLIT_FAULT=<name>`` kills the process at a named point."""
from __future__ import annotations

import os

FAULT_ENV = "VIDLIT_FAULT"


def fault_point(name: str) -> None:
    """For crash-safety tests only: ``VIDLIT_FAULT=<name>`` kills this process (SIGKILL, as ``kill
    -9`` or a power loss would) when it reaches the point ``name``. Points: ``train_batch:E:B``
    (after training batch B of epoch E), ``validation_end:E`` (after epoch E's validation, before
    its checkpoints), ``test_start``, ``results_write`` (``results.json`` half written)."""
    if os.environ.get(FAULT_ENV) == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
