"""Layer 5, every feature a run switches on, as Lightning callbacks (and the loggers): checkpoints,
history and wall clock, weight averaging, test-time adaptation, background mixing, fine-tuning
schedules, foreground share, seeding, progress, media, predictions.

A callback that adds entries to ``results.json`` defines ``results_entries(trainer) -> dict``
(collected by :func:`vidlit.run.results.callback_entries`): a new feature touches no core file.
"""
from __future__ import annotations

#: names of vidlit 0.1's ``vidlit/callbacks.py`` module, now in this package's modules
_OLD_NAMES = {
    "default_callbacks": "vidlit.callbacks.defaults", "FaultInjection": "vidlit.callbacks.fault",
    "EpochSeedCallback": "vidlit.callbacks.seeding", "WandbMediaCallback": "vidlit.callbacks.media",
    "confusion_chart": "vidlit.callbacks.media", "FAULT_ENV": "vidlit.utils.fault", "fault_point": "vidlit.utils.fault",
}


def __getattr__(name: str):
    if name in _OLD_NAMES:
        import importlib

        return getattr(importlib.import_module(_OLD_NAMES[name]), name)
    raise AttributeError(f"module 'vidlit.callbacks' has no attribute '{name}'")
