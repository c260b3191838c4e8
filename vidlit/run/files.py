"""Every file name inside a run folder (one place: results, wall clock, sweep record, predictions, checkpoints)."""
from __future__ import annotations

AVERAGED_CHECKPOINT = "best-averaged.ckpt"


SWEEP_FILE = "sweep.json"


RESULTS_FILE = "results.json"


WALL_TIME_FILE = ".wall_time.json"


PREDICTIONS_FILE = "predictions.csv"
