"""Default loggers of a run: CSV always (``<run_dir>/metrics.csv``)."""
from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import CSVLogger, Logger


def build_loggers(run_dir: str, config: Any, subcommand: str) -> list[Logger]:
    """Loggers used when ``--trainer.logger`` is not given."""
    return [CSVLogger(save_dir=run_dir, name="", version="")]


def finish_loggers(trainer: pl.Trainer, module: pl.LightningModule, results: dict) -> None:
    """Called on rank 0 after ``results.json`` is written."""
    for logger in trainer.loggers:
        logger.log_hyperparams({"results/" + k: v for k, v in results.items() if isinstance(v, (int, float, str)) and v is not None})
        logger.save()
