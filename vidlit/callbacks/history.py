"""Per-epoch history of validation accuracies and the run's wall clock, both kept in checkpoints."""
from __future__ import annotations

import json
import os
from typing import Any, Optional

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from vidlit.run.files import WALL_TIME_FILE
from vidlit.run.metric_names import (
    VAL,
    VAL_TARGET,
    acc_key,
    class_mean_key,
    loss_key,
    metric,
    per_domain,
)
from vidlit.utils.io import write_json


class HistoryCallback(Callback):
    """Records every validation epoch's per-domain accuracies (kept in checkpoints, so a resumed
    run has its whole history)."""

    def __init__(self) -> None:
        self.history: list[dict] = []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        m = trainer.callback_metrics
        names = getattr(pl_module, "domain_names", {})
        row = {
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            "val_acc": metric(m, acc_key(VAL)),
            "val_loss": metric(m, loss_key(VAL)),
            "bad_videos": int(metric(m, "data/bad_videos") or 0),
            "val_acc_per_domain": per_domain(m, VAL, names.get("val", [])),
            "val_class_mean_acc": metric(m, class_mean_key(VAL)),
        }
        if acc_key(VAL_TARGET) in m:
            row["target_acc"] = metric(m, acc_key(VAL_TARGET))
            row["target_acc_per_domain"] = per_domain(m, VAL_TARGET, names.get("test", []))
        self.history = [h for h in self.history if h["epoch"] != row["epoch"]] + [row]

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        """Rows already recorded win over the checkpoint's: Lightning restores callback states on
        every load, including ``trainer.test(ckpt_path=best)`` after fit, which would otherwise
        drop the epochs after the best one."""
        have = {h["epoch"] for h in self.history}
        loaded = [h for h in state_dict.get("history", []) if h["epoch"] not in have]
        self.history = sorted(loaded + self.history, key=lambda h: h["epoch"])


class WallClock(Callback):
    """Wall time of a run over all its processes (a run resumed after a kill has several).

    Each process owns one entry of ``<run_dir>/.wall_time.json`` (``{"<start time>-<pid>": seconds}``),
    refreshed at most every ``every_s`` seconds during training, at every checkpoint save and when
    results are written; :meth:`update` returns the sum. A run started from scratch (no ``--ckpt_path``)
    begins a new file. Only global rank 0 writes.
    """

    def __init__(self, run_dir: str, start_time: float, resume: bool, every_s: float = 10.0) -> None:
        self.path = os.path.join(run_dir, WALL_TIME_FILE)
        self.start_time, self.every_s = start_time, every_s
        self.key = f"{start_time:.3f}-{os.getpid()}"
        self._last = 0.0
        self._fresh = not resume

    def _entries(self) -> dict[str, float]:
        if self._fresh:
            return {}
        try:
            with open(self.path) as fh:
                data = json.load(fh)
            return {str(k): float(v) for k, v in data.items()} if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def update(self, now: Optional[float] = None) -> float:
        """Record this process's time so far; returns the run's total."""
        import time

        now = time.time() if now is None else now
        entries = self._entries()
        entries[self.key] = round(now - self.start_time, 3)
        if os.environ.get("LOCAL_RANK", "0") == "0" and int(os.environ.get("NODE_RANK", "0") or 0) == 0:
            try:
                write_json(self.path, entries, indent=None)
                self._fresh = False
            except OSError:
                pass
        self._last = now
        return round(sum(entries.values()), 2)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        import time

        if time.time() - self._last >= self.every_s:
            self.update()

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self.update()
