"""A default run prints only what a user can act on.

:func:`install` (called when :mod:`vidlit` is imported) filters the libraries' known-harmless
messages, each narrowly by its text (and category for warnings):

* Lightning's "💡 Tip: ... litlogger" advertisement and "TPU available: False ..." line;
* "Loading `train_dataloader` to estimate number of stepping batches." (our schedule asks for it);
* torch's ``FutureWarning`` "`isinstance(treespec, LeafSpec)` is deprecated" raised from inside
  Lightning (nothing in our code to change);
* (only when resuming, for the run's own folder: :func:`expect_checkpoint_dir_warning`) Lightning's
  "Checkpoint directory ... exists and is not empty.";
* "You have overridden `on_after_batch_transfer` in `LightningModule` but have passed in a
  `LightningDataModule`": intended (the strategy normalises clips on the device).

The model summary without FLOPs and the per-domain validate/test table are callbacks in
:mod:`vidlit.tables`. This module imports neither torch nor Lightning.
"""
from __future__ import annotations

import logging
import re
import warnings

#: (category, message start) of library warnings that say nothing a vidlit user can act on
WARNINGS = (
    (FutureWarning, "`isinstance(treespec, LeafSpec)` is deprecated"),
    (UserWarning, "You have overridden `on_after_batch_transfer` in `LightningModule` but have passed in a `LightningDataModule`"),
    # the model summary's size estimate under mixed precision (the default on bf16 hardware): nothing to act on
    (UserWarning, "Precision bf16-mixed is not supported by the model summary"),
    (UserWarning, "Precision 16-mixed is not supported by the model summary"),
)
#: start of Lightning info lines dropped (the litlogger tip; no TPU; the stepping-batches estimate)
LOG_LINES = (
    "💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]",
    "TPU available: False",
    "Loading `train_dataloader` to estimate number of stepping batches.",
)
_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero", "lightning_utilities.core.rank_zero")


class _DropLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is not ours to judge
            return True
        return not msg.startswith(LOG_LINES)


def expect_checkpoint_dir_warning(dirpath: str) -> None:
    """A resumed run (``fit --ckpt_path``) writes into its own checkpoint folder: drop Lightning's
    "Checkpoint directory DIRPATH exists and is not empty." for exactly that folder (it still warns
    when a new run is pointed at a folder holding checkpoints)."""
    import os

    for path in {str(dirpath), os.path.realpath(os.path.expanduser(str(dirpath)))}:
        warnings.filterwarnings("ignore", message=re.escape(f"Checkpoint directory {path} exists and is not empty.") + r"\Z")


_installed = False


def install() -> None:
    """Install the filters (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    for category, start in WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(start), category=category)
    drop = _DropLines()
    for name in _LOGGERS:
        logging.getLogger(name).addFilter(drop)
