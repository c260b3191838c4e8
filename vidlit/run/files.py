"""Every file name inside a run folder (one place: results, wall clock, sweep record, predictions, per-class results, checkpoints)."""
from __future__ import annotations

AVERAGED_CHECKPOINT = "best-averaged.ckpt"


SWEEP_FILE = "sweep.json"


RESULTS_FILE = "results.json"


WALL_TIME_FILE = ".wall_time.json"


PREDICTIONS_FILE = "predictions.csv"


def confusion_file(split: str) -> str:
    """The confusion matrices of ``split`` (``test``, ``val``, ``val_target``), CSV."""
    return f"confusion_{split}.csv"


def per_class_file(split: str) -> str:
    """Per-class accuracy of ``split``, CSV."""
    return f"per_class_{split}.csv"


def confusion_png(split: str) -> str:
    """The confusion matrices of ``split`` drawn."""
    return f"confusion_{split}.png"
