"""Fault injection at named training, validation and test points (crash-safety tests)."""
from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from vidlit.utils.fault import fault_point


class FaultInjection(Callback):
    """Calls :func:`fault_point` at the training, validation and test points it names."""

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        fault_point(f"train_batch:{trainer.current_epoch}:{batch_idx}")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            fault_point(f"validation_end:{trainer.current_epoch}")

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        fault_point("test_start")
