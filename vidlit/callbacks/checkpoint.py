"""Checkpoint callbacks: atomic ModelCheckpoint and the metadata stamped into every checkpoint."""
from __future__ import annotations

import math
import os
import shutil
from typing import Any, Optional
from weakref import proxy

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn

from vidlit.run.checkpoint import stamp
from vidlit.utils.errors import VidlitError
from vidlit.utils.io import fsync


class AtomicModelCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose files are written to a temporary name, flushed to disk and renamed into
    place, so a crash (even ``kill -9`` or a power loss) mid-write never leaves a truncated
    ``best``/``last`` checkpoint.

    ``last`` is refreshed after every validation (or training epoch, when validation does not
    run), as resuming needs: since Lightning 2.6 ``save_last`` alone rewrites it only when a
    top-k (best) checkpoint is saved at the same step.

    Ties in the monitored value are broken by ``tie_break_monitor`` (default ``val/loss``, lower
    is better): when source-validation accuracy saturates (every epoch from some point on at
    100%), the checkpoint kept is the one with the lowest source-validation loss, not the first.

    Args:
        tie_break_monitor: metric that decides between equal ``monitor`` values; None: the first.
        tie_break_mode: ``min`` or ``max`` for ``tie_break_monitor``.
        **kwargs: Lightning's ModelCheckpoint arguments.
    """

    _last_refreshed_step: int = -1

    def __init__(self, tie_break_monitor: Optional[str] = "val/loss", tie_break_mode: str = "min", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if tie_break_mode not in ("min", "max"):
            raise VidlitError(f"--checkpoint.tie_break_mode must be min or max, got '{tie_break_mode}'")
        self.tie_break_monitor, self.tie_break_mode = tie_break_monitor, tie_break_mode
        self.tie_scores: dict[str, float] = {}  # checkpoint path -> its tie-break value
        self._pending_tie: Optional[float] = None

    def _tie_value(self, trainer: pl.Trainer) -> Optional[float]:
        value = trainer.callback_metrics.get(self.tie_break_monitor) if self.tie_break_monitor else None
        if value is None:
            return None
        value = float(value)
        return None if math.isnan(value) else value

    def _better_tie(self, value: Optional[float], other: Optional[float]) -> bool:
        if value is None or other is None:
            return False
        return value < other if self.tie_break_mode == "min" else value > other

    def check_monitor_top_k(self, trainer: pl.Trainer, current: Optional[torch.Tensor] = None) -> bool:
        decision = super().check_monitor_top_k(trainer, current)
        if decision or current is None or not self.best_k_models or self.kth_best_model_path not in self.best_k_models:
            return decision
        kth = self.best_k_models[self.kth_best_model_path]
        tie = float(current) == float(kth) and self._better_tie(self._tie_value(trainer), self.tie_scores.get(self.kth_best_model_path))
        return trainer.strategy.reduce_boolean_decision(bool(tie))

    def _update_best_and_save(self, current: torch.Tensor, trainer: pl.Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        self._pending_tie = self._tie_value(trainer)  # recorded under the new path in _save_checkpoint
        try:
            super()._update_best_and_save(current, trainer, monitor_candidates)
        finally:
            self._pending_tie = None
        self.tie_scores = {p: v for p, v in self.tie_scores.items() if p in self.best_k_models}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "tie_scores": dict(self.tie_scores)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.tie_scores = dict(state_dict.get("tie_scores", {}))

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        if self._pending_tie is not None and filepath in self.best_k_models:  # a new top-k file: before its state is saved
            kept = {p: v for p, v in self.tie_scores.items() if p in self.best_k_models}
            self.tie_scores = {**kept, filepath: self._pending_tie}
        tmp = filepath + ".tmp"
        trainer.save_checkpoint(tmp, self.save_weights_only)
        if trainer.is_global_zero:
            fsync(tmp)
            if os.path.isdir(tmp) and os.path.isdir(filepath):  # sharded checkpoints are folders
                shutil.rmtree(filepath)
            os.replace(tmp, filepath)
            fsync(os.path.dirname(os.path.abspath(filepath)))
        trainer.strategy.barrier("vidlit.atomic_checkpoint")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        if self.save_last:
            self._last_refreshed_step = trainer.global_step

    def _refresh_last(self, trainer: pl.Trainer) -> None:
        if (
            not self.save_last
            or trainer.fast_dev_run
            or trainer.state.fn != TrainerFn.FITTING
            or trainer.sanity_checking
            or self._last_refreshed_step == trainer.global_step
        ):
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)


class RunStampCallback(Callback):
    """Stamps every checkpoint with what a checkpoint alone must tell (:data:`vidlit.run.checkpoint.STAMP_KEY`):
    the strategy and dataset names, the class names and the source and target domains, so that
    ``validate``/``test``/``predict``/``export``/``explain --ckpt_path`` work on a checkpoint moved
    away from its run's ``config.yaml`` and ``results.json``."""

    def __init__(self, strategy: Optional[str] = None, dataset: Optional[str] = None) -> None:
        self.strategy, self.dataset = strategy, dataset

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        meta: dict = {}
        if self.strategy is not None:
            meta.update(strategy=self.strategy, dataset=self.dataset)
        dm = getattr(trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "class_names"):
            meta.update(class_names=[str(c) for c in dm.class_names],
                        source_domains=[str(d) for d in getattr(dm, "source_domains", [])],
                        target_domains=[str(d) for d in getattr(dm, "target_domains", [])])
        stamp(checkpoint, meta)
