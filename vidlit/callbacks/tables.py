"""Tables printed by every trainer (callbacks in :func:`vidlit.callbacks.defaults.default_callbacks`).

* :class:`VidlitModelSummary`: the model summary without Lightning 2.6's FLOPs column (always 0
  here: FLOPs are not measured); it takes the place of Lightning's own summary and, like it, is
  off with ``--trainer.enable_model_summary false``.
* :class:`DomainResultsTable`: ``validate`` and ``test`` print accuracy per named domain (source
  / held out) instead of Lightning's table with ``DataLoader 0`` / ``DataLoader 1`` columns.
"""
from __future__ import annotations

import sys
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelSummary, RichModelSummary

from vidlit.run.metric_names import acc_key


class VidlitModelSummary(ModelSummary):
    """Lightning's model summary (a Rich table on a terminal, text otherwise) without the FLOPs
    column and total. Added to every trainer: it stands in for Lightning's default summary (same
    depth) and stays silent when that one is off or the user gave their own summary callback."""

    def __init__(self, max_depth: int = 1) -> None:
        super().__init__(max_depth=max_depth)
        self._active = True

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        others = [c for c in trainer.callbacks if isinstance(c, ModelSummary) and c is not self]
        defaults = [c for c in others if type(c) in (ModelSummary, RichModelSummary)]
        mine_first = next((c for c in trainer.callbacks if isinstance(c, VidlitModelSummary)), self)
        self._active = bool(defaults) and len(defaults) == len([c for c in others if not isinstance(c, VidlitModelSummary)]) and mine_first is self
        if self._active:
            self._max_depth = defaults[0]._max_depth
            for c in defaults:
                c._max_depth = 0  # Lightning's own summary: replaced by this one

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._active:
            super().on_fit_start(trainer, pl_module)

    @staticmethod
    def summarize(summary_data: list, total_parameters: int, trainable_parameters: int, model_size: float,
                  total_training_modes: dict, total_flops: int = 0, **kwargs: Any) -> None:
        from lightning.pytorch.utilities.model_summary.model_summary import (
            get_formatted_model_size,
            get_human_readable_count,
        )

        cols = [(name, values) for name, values in summary_data if name != "FLOPs"]
        totals = [
            ("Trainable params", get_human_readable_count(int(trainable_parameters))),
            ("Non-trainable params", get_human_readable_count(int(total_parameters - trainable_parameters))),
            ("Total params", get_human_readable_count(int(total_parameters))),
            ("Total estimated model params size (MB)", get_formatted_model_size(model_size)),
            ("Modules in train mode", str(total_training_modes.get("train", 0))),
            ("Modules in eval mode", str(total_training_modes.get("eval", 0))),
        ]
        if sys.stdout.isatty():
            from rich import get_console
            from rich.table import Table

            table = Table(header_style="bold magenta")
            table.add_column(" ", style="dim")
            for name, _ in cols[1:]:
                table.add_column(name, justify="right" if name in ("Params", "Params per Device", "In sizes", "Out sizes") else "left")
            for row in zip(*(values for _, values in cols)):
                table.add_row(*[str(v) for v in row])
            console = get_console()
            console.print(table)
            for label, value in totals:
                console.print(f"[bold]{label}[/]: {value}")
            return
        widths = [max([len(name)] + [len(str(v)) for v in values]) for name, values in cols]
        lines = [" | ".join(f"{name:<{w}}" for (name, _), w in zip(cols, widths))]
        lines.append("-" * len(lines[0]))
        for row in zip(*(values for _, values in cols)):
            lines.append(" | ".join(f"{str(v):<{w}}" for v, w in zip(row, widths)))
        lines.append("-" * len(lines[0]))
        lines += [f"{value:<10} {label}" for label, value in totals]
        print("\n".join(lines), flush=True)


class DomainResultsTable(pl.Callback):
    """``validate``/``test``: a table of accuracy per named domain (role: source validation split
    or held-out target) in place of Lightning's per-``DataLoader`` table, printed once the
    progress bar is done. In ``validate``/``test``/``predict``, Lightning's "The dirpath has
    changed" warning (a checkpoint evaluated from another folder: nothing is resumed) is dropped."""

    def __init__(self) -> None:
        self._print = False
        self._rows: list[tuple[str, str, str]] = []
        self._title, self._note = "", ""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage in ("validate", "test", "predict"):
            import warnings

            warnings.filterwarnings("ignore", message="The dirpath has changed from", category=UserWarning)

    def _quiet_loop(self, loop: Any) -> None:
        self._print = bool(getattr(loop, "verbose", False))
        if self._print:
            loop.verbose = False

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "validate" and not trainer.sanity_checking:
            self._quiet_loop(trainer.validate_loop)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "test":
            self._quiet_loop(trainer.test_loop)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._print or trainer.state.fn != "validate":
            return
        m, names = trainer.callback_metrics, getattr(pl_module, "domain_names", {})
        self._rows = _acc_rows(m, "val", names.get("val", []), "source (val split)") + _acc_rows(m, "val_target", names.get("test", []), "target (held out)")
        self._note = f"source val loss: {float(m['val/loss']):.4f}" if "val/loss" in m else ""
        self._title = "validate: accuracy (%) per domain"

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._print or trainer.state.fn != "test":
            return
        m, names = trainer.callback_metrics, getattr(pl_module, "domain_names", {})
        self._rows = _acc_rows(m, "test", names.get("test", []), "target (held out)")
        self._note, self._title = "", "test: accuracy (%) per held-out domain"

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self._print or not self._rows or not trainer.is_global_zero:
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(title=self._title)
        table.add_column("domain")
        table.add_column("role")
        table.add_column("accuracy", justify="right")
        for row in self._rows:
            table.add_row(*row)
        console = Console()
        console.print(table)
        if self._note:
            console.print(self._note)
        self._print, self._rows = False, []


def _acc_rows(metrics: dict, prefix: str, domains: list[str], role: str) -> list[tuple[str, str, str]]:
    rows = [(d, role, f"{100 * float(metrics[acc_key(prefix, d)]):.1f}") for d in domains if acc_key(prefix, d) in metrics]
    if rows and acc_key(prefix) in metrics:
        rows.append(("mean", role, f"{100 * float(metrics[acc_key(prefix)]):.1f}"))
    return rows
