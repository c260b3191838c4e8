"""Per-epoch history, ``results.json`` and the per-domain table printed at the end of ``fit``."""
from __future__ import annotations

import json
import math
import os
import re
import shutil
from typing import Any, Optional
from weakref import proxy

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from vidlit.errors import VidlitError

RESULTS_FILE = "results.json"


def _f(x: Any) -> Optional[float]:
    if x is None:
        return None
    v = float(x.item() if isinstance(x, torch.Tensor) else x)
    return None if math.isnan(v) else round(v, 6)


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
            _fsync(tmp)
            if os.path.isdir(tmp) and os.path.isdir(filepath):  # sharded checkpoints are folders
                shutil.rmtree(filepath)
            os.replace(tmp, filepath)
            _fsync(os.path.dirname(os.path.abspath(filepath)))
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


def _fsync(path: str) -> None:
    """Flush a file (or a folder's entries) to disk; a no-op where the OS does not allow it."""
    if os.path.isdir(path) and os.name == "nt":
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
            "val_acc": _f(m.get("val/acc")),
            "val_loss": _f(m.get("val/loss")),
            "bad_videos": int(_f(m.get("data/bad_videos")) or 0),
            "val_acc_per_domain": {d: _f(m.get(f"val/acc/{d}")) for d in names.get("val", [])},
        }
        if "val_target/acc" in m:
            row["target_acc"] = _f(m.get("val_target/acc"))
            row["target_acc_per_domain"] = {d: _f(m.get(f"val_target/acc/{d}")) for d in names.get("test", [])}
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


def best_epoch_from_path(path: str) -> Optional[int]:
    m = re.search(r"epoch=(\d+)", os.path.basename(path or ""))
    return int(m.group(1)) if m else None


def build_results(
    trainer: pl.Trainer,
    module: pl.LightningModule,
    datamodule: Any,
    history: list[dict],
    best_checkpoint: str,
    meta: dict,
) -> dict:
    """The results dictionary (accuracies are fractions in [0, 1])."""
    m = trainer.callback_metrics
    best_epoch = best_epoch_from_path(best_checkpoint)
    rows = [h for h in history if h["epoch"] == best_epoch]
    if not rows and history:  # no epoch in the file name: the first best, as ModelCheckpoint keeps it
        rows = [max(history, key=lambda h: (h["val_acc"] or -1, -(h.get("val_loss") if h.get("val_loss") is not None else math.inf), -h["epoch"]))]
    best = rows[0] if rows else {}
    targets = list(datamodule.target_domains)
    oracle = [h for h in history if h.get("target_acc") is not None]
    oracle_best = max(oracle, key=lambda h: (h["target_acc"], -h["epoch"])) if oracle else None
    return {
        **meta,
        "source_domains": list(datamodule.source_domains),
        "target_domains": targets,
        "class_names": list(datamodule.class_names),
        "val_acc": best.get("val_acc"),
        "val_loss": best.get("val_loss"),
        "val_acc_per_domain": best.get("val_acc_per_domain", {}),
        "test_acc": _f(m.get("test/acc")),
        "test_acc_per_domain": {d: _f(m.get(f"test/acc/{d}")) for d in targets},
        "best_epoch": best.get("epoch", best_epoch),
        "best_checkpoint": os.path.abspath(best_checkpoint) if best_checkpoint else None,
        "oracle_test_acc": oracle_best["target_acc"] if oracle_best else None,
        "oracle_epoch": oracle_best["epoch"] if oracle_best else None,
        "epochs_run": len(history),
        "bad_videos": int(sum(h.get("bad_videos") or 0 for h in history)),
        # videos left out before training by --data.on_bad_video skip, per split (bad_videos: training
        # clips replaced later, when a video failed to decode mid-run)
        "skipped_videos": datamodule.skipped_counts() if hasattr(datamodule, "skipped_counts") else {},
        # Grad-CAM mass inside the object mask per target domain (vidlit.saliency; null without masks)
        **_saliency_results(trainer),
        "history": history,
    }


def test_evaluation(trainer: pl.Trainer, datamodule: Any) -> dict:
    """How ``trainer.test`` evaluates: ``{"test_views": "CLIPSxCROPS", "tta": METHOD}``
    (``--data.test_views``, ``--tta.method``; ``"1x1"``/``"none"`` without them)."""
    from vidlit.tta import TestTimeAdaptation

    clips, crops = getattr(datamodule, "test_views", None) or (1, 1)
    method = next((cb.method for cb in trainer.callbacks if isinstance(cb, TestTimeAdaptation) and cb.active), "none")
    return {"test_views": f"{int(clips)}x{int(crops)}", "tta": method}


def test_metrics(trainer: pl.Trainer, datamodule: Any) -> dict:
    """``test_acc`` and ``test_acc_per_domain`` of the trainer's last test."""
    m = trainer.callback_metrics
    return {"test_acc": _f(m.get("test/acc")),
            "test_acc_per_domain": {d: _f(m.get(f"test/acc/{d}")) for d in datamodule.target_domains}}


def epoch_selected(history: list[dict], epoch: Optional[int], tested: Optional[dict] = None) -> Optional[dict]:
    """The epoch-selected model of a weight-averaged run (``--average.method swad|ema``), the run
    *without* averaging: its epoch, source-validation accuracy and loss (the history's at that
    epoch: one view, no test-time adaptation, as the averaged model is validated), and its held-out
    accuracy. Averaging does not change the training trajectory, so one averaged run also gives the
    comparison without it.

    ``tested``: the held-out accuracies of ``trainer.test`` on the epoch-selected checkpoint, run as
    the averaged model's test (the same ``--data.test_views`` and ``--tta.*``), with ``evaluation``
    (:func:`test_evaluation`) and ``checkpoint``; ``fit`` always passes it. Without it (a run whose
    epoch-selected checkpoint is missing, or results written before) the held-out accuracy measured
    at that epoch's validation (``val_target``: one view, no adaptation) is used, recorded as
    ``source: history``; None when the history has no held-out accuracy for ``epoch``."""
    rows = [h for h in history if h.get("epoch") == epoch]
    row = rows[0] if rows else {}
    if tested is not None:
        return {"best_epoch": epoch, "val_acc": row.get("val_acc"), "val_loss": row.get("val_loss"), "source": "test", **tested}
    if row.get("target_acc") is None:
        return None
    return {"best_epoch": epoch, "val_acc": row.get("val_acc"), "val_loss": row.get("val_loss"),
            "test_acc": row["target_acc"], "test_acc_per_domain": row.get("target_acc_per_domain", {}),
            "source": "history", "evaluation": {"test_views": "1x1", "tta": "none"}}


def unaveraged(results: dict) -> Optional[dict]:
    """:func:`epoch_selected` of a finished averaged run's ``results.json`` (its
    ``average.unaveraged``, or, for runs written before that entry existed, the history at
    ``best_epoch``); None for a run without averaging or whose averaging was interrupted."""
    avg = results.get("average") or {}
    if avg.get("method") in (None, "none") or avg.get("interrupted"):
        return None
    return avg.get("unaveraged") or epoch_selected(results.get("history") or [], results.get("best_epoch"))


def _saliency_results(trainer: pl.Trainer) -> dict:
    from vidlit.saliency import saliency_results

    return saliency_results(trainer)


def write_results(run_dir: str, results: dict) -> str:
    """Write ``results.json`` atomically; returns its path."""
    from vidlit.callbacks import fault_point

    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, RESULTS_FILE)
    with open(path + ".tmp", "w") as fh:
        json.dump(results, fh, indent=2)
        fh.flush()
        fault_point("results_write")
    _fsync(path + ".tmp")
    os.replace(path + ".tmp", path)
    return path


WALL_TIME_FILE = ".wall_time.json"


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
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
                with open(self.path + ".tmp", "w") as fh:
                    json.dump(entries, fh)
                os.replace(self.path + ".tmp", self.path)
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


def print_table(results: dict, path: str) -> None:
    """Per-domain table: source-domain validation and held-out target-domain test accuracy."""
    from rich.console import Console
    from rich.table import Table

    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    raw = unaveraged(results)
    which = f"of the {results['average']['method'].upper()}-averaged model" if raw is not None else f"at best epoch {results['best_epoch']}"
    table = Table(title=f"{results['strategy']} on {results['backbone']}: accuracy (%) {which}")
    table.add_column("domain")
    table.add_column("role")
    table.add_column("accuracy", justify="right")
    for d, v in results["val_acc_per_domain"].items():
        table.add_row(d, "source (val split)", pct(v))
    for d, v in results["test_acc_per_domain"].items():
        table.add_row(d, "target (held out)", pct(v))
    table.add_section()
    table.add_row("mean", "source val", pct(results["val_acc"]))
    table.add_row("mean", "target test", pct(results["test_acc"]))
    gap = None if results["val_acc"] is None or results["test_acc"] is None else results["val_acc"] - results["test_acc"]
    table.add_row("gap", "source - target", pct(gap))
    console = Console()
    console.print(table)
    if raw is not None:
        ev, same = raw.get("evaluation") or {}, ""
        if ev and ev == results["average"].get("evaluation"):
            same = f", tested as the averaged model: {ev['test_views']} views, tta {ev['tta']}"
        elif ev:
            same = f"; not comparable: tested with {ev['test_views']} views, tta {ev['tta']}"
        console.print(f"without averaging (best epoch {raw['best_epoch']}): source val {pct(raw['val_acc'])}, "
                      f"target test {pct(raw['test_acc'])}{same}")
    if results.get("bad_videos"):
        console.print(f"bad videos replaced during training: {results['bad_videos']}")
    if any((results.get("skipped_videos") or {}).values()):
        counts = ", ".join(f"{k} {v}" for k, v in results["skipped_videos"].items())
        console.print(f"unreadable videos left out (--data.on_bad_video skip): {counts}")
    if results.get("foreground_share"):
        from vidlit.saliency import foreground_line

        console.print(foreground_line(results["foreground_share"]))
    console.print(f"results: {path}")
