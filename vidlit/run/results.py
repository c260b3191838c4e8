"""Per-epoch history, ``results.json`` and the per-domain table printed at the end of ``fit``."""
from __future__ import annotations

import json
import math
import os
import re
from typing import TYPE_CHECKING, Any, Optional, Sequence


from vidlit.run.files import RESULTS_FILE
from vidlit.run.metric_names import TEST, VAL, VAL_TARGET, acc_key, loss_key, metric, per_domain
from vidlit.utils.io import atomic_write

if TYPE_CHECKING:  # Lightning is imported only by the code that trains (report reads results without it)
    import lightning.pytorch as pl




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
        "val_class_mean_acc": best.get("val_class_mean_acc"),
        "test_acc": metric(m, acc_key(TEST)),
        "test_acc_per_domain": per_domain(m, TEST, targets),
        "best_epoch": best.get("epoch", best_epoch),
        "best_checkpoint": os.path.abspath(best_checkpoint) if best_checkpoint else None,
        "oracle_test_acc": oracle_best["target_acc"] if oracle_best else None,
        "oracle_epoch": oracle_best["epoch"] if oracle_best else None,
        "epochs_run": len(history),
        "bad_videos": int(sum(h.get("bad_videos") or 0 for h in history)),
        # videos left out before training by --data.on_bad_video skip, per split (bad_videos: training
        # clips replaced later, when a video failed to decode mid-run)
        "skipped_videos": datamodule.skipped_counts() if hasattr(datamodule, "skipped_counts") else {},
        # what the run's callbacks add (foreground share, test-time adaptation, ...)
        **callback_entries(trainer, "fit"),
        "history": history,
    }


def test_evaluation(trainer: pl.Trainer, datamodule: Any) -> dict:
    """How ``trainer.test`` evaluates: ``{"test_views": "CLIPSxCROPS", "tta": METHOD}``
    (``--data.test_views``, and the method of a callback that adapts the model during test, which
    says so with a ``test_adaptation`` attribute, e.g. ``--tta.method``; ``"1x1"``/``"none"`` without them)."""
    clips, crops = getattr(datamodule, "test_views", None) or (1, 1)
    method = next((cb.test_adaptation for cb in trainer.callbacks if getattr(cb, "test_adaptation", None)), "none")
    return {"test_views": f"{int(clips)}x{int(crops)}", "tta": method}


def test_metrics(trainer: pl.Trainer, datamodule: Any) -> dict:
    """``test_acc`` and ``test_acc_per_domain`` of the trainer's last test."""
    m = trainer.callback_metrics
    return {"test_acc": metric(m, acc_key(TEST)), "test_acc_per_domain": per_domain(m, TEST, datamodule.target_domains)}


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


def callback_entries(trainer: pl.Trainer, stage: str) -> dict:
    """The entries the trainer's callbacks add to a results file: every callback with a
    ``results_entries(trainer, stage) -> dict`` method (``stage``: ``fit`` for ``results.json``,
    ``validate`` or ``test`` for the eval commands' files), in callback order."""
    out: dict = {}
    for cb in trainer.callbacks:
        hook = getattr(cb, "results_entries", None)
        if callable(hook):
            out.update(hook(trainer, stage) or {})
    return out


def callback_lines(trainer: pl.Trainer, results: dict) -> list[str]:
    """Lines the trainer's callbacks print under a results table (``results_lines(results)``)."""
    lines: list[str] = []
    for cb in trainer.callbacks:
        hook = getattr(cb, "results_lines", None)
        if callable(hook):
            lines += list(hook(results) or [])
    return lines


def write_results(run_dir: str, results: dict, name: str = RESULTS_FILE) -> str:
    """Write ``<run_dir>/<name>`` (``results.json``, or an eval command's ``test_results.json``)
    atomically; returns its path."""
    from vidlit.utils.fault import fault_point

    path = os.path.join(run_dir, name)
    with atomic_write(path) as fh:
        json.dump(results, fh, indent=2)
        fh.flush()
        fault_point("results_write")
    return path


def results_head(kind: str, *, strategy: str, backbone: Optional[str], dataset: str, run_dir: str, datamodule: Any) -> dict:
    """The entries every results file starts with, the one schema of ``fit``'s ``results.json``,
    ``validate``/``test``'s ``<command>_results.json`` and ``adapt``'s ``results.json``: ``kind``
    (which command wrote it), the strategy, backbone and dataset, the run folder, and the domains
    and classes. Accuracies everywhere are fractions in [0, 1] under the same names (``val_acc``,
    ``val_acc_per_domain``, ``test_acc``, ``test_acc_per_domain``, ...)."""
    return {
        "kind": kind,
        "strategy": strategy,
        "backbone": backbone,
        "dataset": dataset,
        "run_dir": os.path.abspath(run_dir),
        "source_domains": [str(d) for d in getattr(datamodule, "source_domains", [])],
        "target_domains": [str(d) for d in getattr(datamodule, "target_domains", [])],
        "class_names": [str(c) for c in getattr(datamodule, "class_names", [])],
    }


def eval_results(kind: str, trainer: pl.Trainer, module: pl.LightningModule, head: dict) -> dict:
    """``validate``'s or ``test``'s results (``head``: :func:`results_head` plus what the command
    adds): per-domain accuracies of the source validation split and the held-out domains
    (``validate``) or of the held-out domains (``test``), and every callback's entries."""
    m = trainer.callback_metrics
    names = getattr(module, "domain_names", {})
    results = dict(head)
    parts = {"validate": (("val", VAL, "val"), ("target", VAL_TARGET, "test")), "test": (("test", TEST, "test"),)}
    for key, prefix, role in parts[kind]:
        results[f"{key}_acc"] = metric(m, acc_key(prefix))
        results[f"{key}_acc_per_domain"] = per_domain(m, prefix, names.get(role, []))
    if kind == "validate":
        results["val_loss"] = metric(m, loss_key(VAL))
    results.update(callback_entries(trainer, kind))  # --tta.*, foreground share, ...
    return results


def print_table(results: dict, path: str, lines: Sequence[str] = ()) -> None:
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
    # plain fine-tuning (no held-out domain): the test rows are each domain's own test split
    plain = bool(results.get("plain_finetune"))
    test_role, test_mean, gap_role = (("test split (in domain)", "test", "val - test") if plain
                                      else ("target (held out)", "target test", "source - target"))
    for d, v in results["test_acc_per_domain"].items():
        table.add_row(d, test_role, pct(v))
    table.add_section()
    table.add_row("mean", "source val", pct(results["val_acc"]))
    table.add_row("mean", test_mean, pct(results["test_acc"]))
    gap = None if results["val_acc"] is None or results["test_acc"] is None else results["val_acc"] - results["test_acc"]
    table.add_row("gap", gap_role, pct(gap))
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
    for line in lines:  # the callbacks' own lines (callback_lines)
        console.print(line)
    console.print(f"results: {path}")
