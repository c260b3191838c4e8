"""Progress display: Rich bars on a terminal, plain flushed lines otherwise.

:func:`progress_bar` picks one by ``sys.stdout.isatty()``:

* :class:`VidlitRichProgressBar` (terminal): Lightning's Rich bar with one sanity-check bar and
  one validation bar across the source and target loaders (Lightning draws one per loader), and
  no validation metrics in the first epoch's bar until a real validation has run (the
  sanity check's accuracy on a few batches of an untrained model is not a result).
* :class:`PlainProgressBar` (a file, a pipe, ``nohup``, a cluster job, ``vidlit sweep``): one line
  per epoch (``Epoch 3/11  train/loss 0.412  val/acc 0.917  val/loss 0.301  | 25 steps in 41.2s,
  7.3 clips/s, ETA 5m40s``), and in long epochs a line every ``every_n_steps`` steps or every
  ``every_s`` seconds (step, loss, throughput, ETA of the epoch); flushed at once.
"""
from __future__ import annotations

import math
import sys
import time
from typing import Any, Optional, TextIO

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar


def progress_bar() -> ProgressBar:
    """The progress bar for this process: Rich on a terminal, plain lines when stdout is not one."""
    return VidlitRichProgressBar() if sys.stdout.isatty() else PlainProgressBar()


def _is_val_key(key: str) -> bool:
    return key.startswith(("val/", "val_target/", "val_"))


class _SanityMetricsFilter:
    """Hides validation metrics in fit until the first real validation has ended."""

    _real_val_done = False

    def _filter(self, trainer: pl.Trainer, items: dict) -> dict:
        if trainer.state.fn == "fit" and not self._real_val_done:
            return {k: v for k, v in items.items() if not _is_val_key(k)}
        return items

    def _note_validation_end(self, trainer: pl.Trainer) -> None:
        if not trainer.sanity_checking:
            self._real_val_done = True


class VidlitRichProgressBar(_SanityMetricsFilter, RichProgressBar):
    """:class:`RichProgressBar` with one bar per validation run (not one per loader) and no sanity-check metrics."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loader_offset = 0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._real_val_done = False
        super().on_fit_start(trainer, pl_module)

    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        if self.is_disabled or not self.has_dataloader_changed(dataloader_idx):
            return
        assert self.progress is not None
        sanity = trainer.sanity_checking
        totals = list(trainer.num_sanity_val_batches if sanity else trainer.num_val_batches)
        self._loader_offset = sum(totals[:dataloader_idx])
        attr = "val_sanity_progress_bar_id" if sanity else "val_progress_bar_id"
        task = getattr(self, attr)
        if task is None or dataloader_idx == 0:  # one bar for every loader of this validation
            if task is not None:
                self.progress.update(task, advance=0, visible=False)
            desc = self.sanity_check_description if sanity else self.validation_description
            setattr(self, attr, self._add_task(sum(totals), desc, visible=False))
        self.refresh()

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.is_disabled:
            return
        task = self.val_sanity_progress_bar_id if trainer.sanity_checking else self.val_progress_bar_id
        if task is not None:
            self._update(task, self._loader_offset + batch_idx + 1)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._note_validation_end(trainer)
        super().on_validation_end(trainer, pl_module)

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
        return self._filter(trainer, super().get_metrics(trainer, pl_module))


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def _value(v: Any) -> str:
    if isinstance(v, torch.Tensor):
        v = v.item()
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _batch_size(batch: Any) -> int:
    if isinstance(batch, dict):
        for key in ("label", "video"):
            v = batch.get(key)
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                return int(v.shape[0])
    return 0


class PlainProgressBar(_SanityMetricsFilter, ProgressBar):
    """Plain, flushed lines for logs written to a file (see the module docstring).

    Args:
        every_n_steps: also print a line every N training steps (0: by time, see ``every_s``).
        every_s: with ``every_n_steps`` 0, print a line when this many seconds passed since the
            last one (long epochs; also long validation, test and predict runs).
        stream: where to write (default ``sys.stdout``).
    """

    def __init__(self, every_n_steps: int = 0, every_s: float = 30.0, stream: Optional[TextIO] = None) -> None:
        super().__init__()
        self.every_n_steps, self.every_s, self.stream = int(every_n_steps), float(every_s), stream
        self._enabled = True
        self._fit_start = self._epoch_start = self._last_line = 0.0
        self._clips = 0
        self._epoch_times: list[float] = []
        self._eval_start = 0.0
        self._eval_done = 0

    # ------------------------------------------------------------------ ProgressBar API
    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    @property
    def is_disabled(self) -> bool:
        return not self._enabled

    def print(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("file", self.stream or sys.stdout)
        kwargs.setdefault("flush", True)
        print(*args, **kwargs)

    def _line(self, text: str) -> None:
        if self._enabled:
            self.print(text)
            self._last_line = time.monotonic()

    def _due(self, step: int) -> bool:
        if self.every_n_steps > 0:
            return step % self.every_n_steps == 0
        return time.monotonic() - self._last_line >= self.every_s

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
        items = self._filter(trainer, super().get_metrics(trainer, pl_module))
        items.pop("v_num", None)
        if "val/loss" in trainer.callback_metrics and "val/loss" not in items and (self._real_val_done or trainer.state.fn != "fit"):
            items["val/loss"] = trainer.callback_metrics["val/loss"]
        return items

    def _metrics_text(self, trainer: pl.Trainer, pl_module: pl.LightningModule, only_train: bool = False) -> str:
        items = self.get_metrics(trainer, pl_module)
        if only_train:
            items = {k: v for k, v in items.items() if not _is_val_key(k)}
        return "  ".join(f"{k} {_value(v)}" for k, v in items.items())

    def _epoch_label(self, trainer: pl.Trainer) -> str:
        last = f"/{trainer.max_epochs - 1}" if trainer.max_epochs not in (None, -1) else ""
        return f"Epoch {trainer.current_epoch}{last}"

    # ------------------------------------------------------------------ training
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_start = self._last_line = time.monotonic()
        self._epoch_times = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._real_val_done = False

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = self._last_line = time.monotonic()
        self._clips = 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._clips += _batch_size(batch)
        step, total = batch_idx + 1, self.total_train_batches
        if not self._due(step) or (isinstance(total, int) and step >= total):
            return
        elapsed = time.monotonic() - self._epoch_start
        rate = step / elapsed if elapsed > 0 else float("nan")
        eta = (total - step) / rate if isinstance(total, int) and rate > 0 else float("nan")
        clips = f", {self._clips / elapsed:.1f} clips/s" if self._clips and elapsed > 0 else ""
        of = f"/{total}" if isinstance(total, int) else ""
        metrics = self._metrics_text(trainer, pl_module, only_train=True)
        self._line(f"{self._epoch_label(trainer)}  step {step}{of}  {metrics}  | {rate:.2f} steps/s{clips}, epoch ETA {_duration(eta)}")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        now = time.monotonic()
        took = now - self._epoch_start
        self._epoch_times.append(took)
        steps = trainer.fit_loop.epoch_loop.batch_progress.current.completed if hasattr(trainer, "fit_loop") else 0
        left = (trainer.max_epochs - trainer.current_epoch - 1) if trainer.max_epochs not in (None, -1) else None
        eta = f", ETA {_duration(left * sum(self._epoch_times) / len(self._epoch_times))}" if left else ""
        clips = f", {self._clips / took:.1f} clips/s" if self._clips and took > 0 else ""
        metrics = self._metrics_text(trainer, pl_module)
        self._line(f"{self._epoch_label(trainer)}  {metrics}  | {steps} steps in {_duration(took)}{clips}{eta}")

    # ------------------------------------------------------------------ evaluation
    def _eval_start_hook(self) -> None:
        self._eval_start = self._last_line = time.monotonic()
        self._eval_done = 0

    def _eval_batch(self, trainer: pl.Trainer, name: str, total: Any) -> None:
        self._eval_done += 1
        if self.every_n_steps > 0 or not self._due(self._eval_done):
            return  # step-counted lines are for training; long evaluations get a line every every_s seconds
        elapsed = time.monotonic() - self._eval_start
        rate = self._eval_done / elapsed if elapsed > 0 else float("nan")
        eta = (total - self._eval_done) / rate if isinstance(total, (int, float)) and math.isfinite(total) and rate > 0 else float("nan")
        of = f"/{int(total)}" if isinstance(total, (int, float)) and math.isfinite(total) else ""
        self._line(f"{name}  batch {self._eval_done}{of}  | {rate:.2f} batches/s, ETA {_duration(eta)}")

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._eval_start_hook()

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if not trainer.sanity_checking:
            self._eval_batch(trainer, "Validation", self.total_val_batches)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._note_validation_end(trainer)
        if trainer.state.fn != "fit" and not trainer.sanity_checking:
            took = time.monotonic() - self._eval_start
            self._line(f"Validation  {self._metrics_text(trainer, pl_module)}  | {self._eval_done} batches in {_duration(took)}")

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._eval_start_hook()

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_batch(trainer, "Testing", sum(trainer.num_test_batches))

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._line(f"Testing  | {self._eval_done} batches in {_duration(time.monotonic() - self._eval_start)}")

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._eval_start_hook()

    def on_predict_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_batch(trainer, "Predicting", sum(trainer.num_predict_batches))

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._line(f"Predicting  | {self._eval_done} batches in {_duration(time.monotonic() - self._eval_start)}")
