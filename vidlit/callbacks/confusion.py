"""Per-class results on disk: confusion matrices, per-class accuracy and class-mean accuracy.

After the test of every ``fit`` (the best checkpoint on the held-out domains) and every
``test``/``validate`` command, :class:`PerClassResults` writes into the run folder (``fit``) or the
eval command's folder, on global rank 0 and atomically:

* ``confusion_<split>.csv``: the confusion matrix of each domain and of all of them (``domain``
  ``all``), rows the true class (``true``), columns the predicted class, counts of videos;
* ``per_class_<split>.csv``: ``domain,class,videos,correct,accuracy`` per domain and for ``all``
  (accuracy: the fraction of the class's videos predicted as it, empty for a class with no videos);
* ``confusion_<split>.png``: the matrices drawn (matplotlib, Agg), all domains first.

``<split>`` is ``test`` (the held-out domains: ``fit`` and ``test``) or, for ``validate``, ``val``
(the source domains' validation split) and ``val_target`` (the held-out domains).

Its ``results_entries`` add the class-mean (balanced) accuracy, the mean of the per-class accuracies
over the classes that have videos, to ``results.json`` / ``<command>_results.json``:
``test_class_mean_acc`` (all held-out videos pooled) and ``test_class_mean_acc_per_domain`` (for
``validate``: ``val_class_mean_acc*`` and ``target_class_mean_acc*``), and ``per_class_files``.
The counts come from the strategy's :class:`vidlit.models.metrics.PerDomainConfusion` metrics
(``confusion_matrices``), counted on the device and moved to the CPU once per epoch.
"""
from __future__ import annotations

import csv
import io
import math
import os
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from vidlit.models.metrics import class_mean_accuracy, per_class_accuracy
from vidlit.run.files import confusion_file, confusion_png, per_class_file
from vidlit.run.metric_names import TEST, VAL, VAL_TARGET, value
from vidlit.utils.io import atomic_write

ALL = "all"  # the ``domain`` of the rows over every domain of a split
#: the results-file key of each split's class-mean accuracy (as ``eval_results`` names the accuracies)
RESULT_KEYS = {TEST: "test", VAL: "val", VAL_TARGET: "target"}
ROLE = {TEST: "test", VAL: "val", VAL_TARGET: "test"}  # which of the strategy's domain_names lists


class PerClassResults(Callback):
    """Writes the per-class files of each test (and ``validate``) and adds class-mean accuracy to the
    results files (see the module docstring)."""

    def __init__(self, png: bool = True) -> None:
        self.png = png
        self.splits: dict[str, dict[str, Any]] = {}  # split -> {"counts", "domains", "classes"} of the last evaluation

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.splits.pop(TEST, None)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._collect(trainer, pl_module, (TEST,))

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "validate":
            self.splits.pop(VAL, None)
            self.splits.pop(VAL_TARGET, None)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "validate" and not trainer.sanity_checking:  # fit's epochs: only the metrics
            self._collect(trainer, pl_module, (VAL, VAL_TARGET))

    def _collect(self, trainer: pl.Trainer, pl_module: pl.LightningModule, splits: tuple[str, ...]) -> None:
        matrices = getattr(pl_module, "confusion_matrices", None) or {}
        names = getattr(pl_module, "domain_names", {})
        classes = [str(c) for c in getattr(getattr(trainer, "datamodule", None), "class_names", None) or []]
        for split in splits:
            counts = matrices.get(split)
            if counts is None:
                continue
            k = counts.shape[-1]
            domains = [str(d) for d in names.get(ROLE[split], [])]
            if len(domains) != counts.shape[0]:
                domains = [str(i) for i in range(counts.shape[0])]
            self.splits[split] = {"counts": counts.long().cpu(), "domains": domains,
                                  "classes": classes if len(classes) == k else [str(i) for i in range(k)]}
            if trainer.is_global_zero:
                write_per_class_files(trainer.default_root_dir, split, **self.splits[split], png=self.png)

    def results_entries(self, trainer: pl.Trainer, stage: str) -> dict:
        """``<key>_class_mean_acc`` (all domains' videos pooled) and ``<key>_class_mean_acc_per_domain``
        for ``results.json`` (``stage`` fit) and the eval commands' files, and ``per_class_files``."""
        wanted = (VAL, VAL_TARGET) if stage == "validate" else (TEST,)
        out: dict[str, Any] = {}
        files: list[str] = []
        for split in wanted:
            key = RESULT_KEYS[split]
            got = self.splits.get(split)
            if got is None:
                out[f"{key}_class_mean_acc"], out[f"{key}_class_mean_acc_per_domain"] = None, {}
                continue
            counts = got["counts"]
            out[f"{key}_class_mean_acc"] = value(class_mean_accuracy(counts.sum(0)))
            out[f"{key}_class_mean_acc_per_domain"] = {d: value(v) for d, v in zip(got["domains"], class_mean_accuracy(counts))}
            files += [confusion_file(split), per_class_file(split)] + ([confusion_png(split)] if self.png else [])
        out["per_class_files"] = files
        return out

    def results_lines(self, results: dict) -> list[str]:
        """``class-mean accuracy (balanced): target test 45.0% (clean 40.0%, shaky 50.0%)``."""
        lines = []
        for key, label in (("val", "source val"), ("target", "target"), ("test", "target test")):
            mean = results.get(f"{key}_class_mean_acc")
            if f"{key}_class_mean_acc" not in results:
                continue
            per = results.get(f"{key}_class_mean_acc_per_domain") or {}
            cells = ", ".join(f"{d} {_pct(v)}" for d, v in per.items())
            lines.append(f"class-mean accuracy (balanced): {label} {_pct(mean)}" + (f" ({cells})" if cells else ""))
        return lines


def _pct(v: Optional[float]) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}%"


def write_per_class_files(folder: str, split: str, counts: torch.Tensor, domains: list[str], classes: list[str],
                          png: bool = True) -> list[str]:
    """Write ``confusion_<split>.csv``, ``per_class_<split>.csv`` and (``png``) ``confusion_<split>.png``
    into ``folder`` from ``counts`` (domains, C, C); returns their paths."""
    os.makedirs(folder, exist_ok=True)
    blocks = [(ALL, counts.sum(0))] + list(zip(domains, counts))
    paths = [os.path.join(folder, confusion_file(split)), os.path.join(folder, per_class_file(split))]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["domain", "true", *classes])
    for d, m in blocks:
        for c, row in zip(classes, m.tolist()):
            w.writerow([d, c, *row])
    with atomic_write(paths[0]) as fh:
        fh.write(buf.getvalue())
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["domain", "class", "videos", "correct", "accuracy"])
    for d, m in blocks:
        acc = per_class_accuracy(m)
        for i, c in enumerate(classes):
            total, correct = int(m[i].sum()), int(m[i, i])
            w.writerow([d, c, total, correct, "" if total == 0 else f"{float(acc[i]):.6f}"])
    with atomic_write(paths[1]) as fh:
        fh.write(buf.getvalue())
    if png:
        paths.append(os.path.join(folder, confusion_png(split)))
        draw_confusion(paths[2], blocks, classes, split)
    return paths


def draw_confusion(path: str, blocks: list[tuple[str, torch.Tensor]], classes: list[str], split: str) -> None:
    """One panel per ``(domain, (C, C) counts)``: counts in each cell, shaded by the row's fraction."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k, n = len(classes), len(blocks)
    side = min(16.0, max(3.0, 0.45 * k + 1.5))  # many classes (UCF101: 101): bounded, labels smaller
    font = 7 if k <= 20 else 5
    fig = Figure(figsize=(side * n, side + 0.3))
    FigureCanvasAgg(fig)
    for j, (domain, m) in enumerate(blocks):
        ax = fig.add_subplot(1, n, j + 1)
        m = m.double()
        frac = m / m.sum(1, keepdim=True).clamp_min(1)
        ax.imshow(frac.numpy(), cmap="Blues", vmin=0, vmax=1)
        ax.set_title(f"{split}: {domain}", fontsize=9)
        if k <= 40:
            ax.set_xticks(range(k), classes, rotation=90, fontsize=font)
            ax.set_yticks(range(k), classes if j == 0 else [""] * k, fontsize=font)
        else:  # hundreds of tick labels would take seconds to draw and not be readable: the CSV's order
            ax.set_xticks([])
            ax.set_yticks([])
        ax.set_xlabel("predicted" if k <= 40 else "predicted (classes in the CSV's order)", fontsize=8)
        if j == 0:
            ax.set_ylabel("true", fontsize=8)
        if k <= 30:
            for r in range(k):
                for c in range(k):
                    if m[r, c]:
                        ax.text(c, r, str(int(m[r, c])), ha="center", va="center", fontsize=6,
                                color="white" if frac[r, c] > 0.5 else "black")
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100, bbox_inches="tight")
