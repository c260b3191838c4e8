"""``hmdb51``: HMDB51 with its official split files (``<class>_test_split{1,2,3}.txt``);
domains ``train`` and ``test`` are the official split N."""
from __future__ import annotations

import os
import re
from typing import Iterable, Optional

from datamodules._common import (
    OfficialSplitDataModule, Problems, SplitEntry, find_dir, read_list,
)
from vidlit.data.datamodule import register_datamodule

_SPLIT_FILE = re.compile(r"^(?P<cls>.+)_test_split(?P<n>\d)\.txt$")
SPLITS_FOLDER = "testTrainMulti_7030_splits"
PARTS = {"1": "train", "2": "test"}  # "0": not used in this split


def hmdb51_splits_dir(root: Optional[str], given: Optional[str], split: int) -> Optional[str]:
    """``given``, else the first of ``root/testTrainMulti_7030_splits``, ``root``,
    ``root/../testTrainMulti_7030_splits`` holding ``*_test_split<split>.txt`` files."""
    cands = [os.path.join(root, SPLITS_FOLDER), root, os.path.join(os.path.dirname(os.path.abspath(root)), SPLITS_FOLDER)] if root else []
    return find_dir(given, cands, f"_test_split{split}.txt")


def hmdb51_entries(
    root: Optional[str], splits_dir: Optional[str], split: int, problems: Problems,
    classes: Optional[Iterable[str]] = None, flag: str = "--data.splits_dir",
) -> list[SplitEntry]:
    """Videos of split ``split`` (flag 1 -> part ``train``, 2 -> ``test``, 0 unused) of every class
    (or of ``classes``). A class with a video folder under ``root`` but no split file is a problem."""
    if not splits_dir or not os.path.isdir(splits_dir):
        problems.add(f"{flag}: no HMDB51 split files (<class>_test_split{split}.txt) found{f' in {splits_dir}' if splits_dir else ''}; pass the folder extracted from test_train_splits.rar")
        return []
    found: set[str] = set()
    for name in os.listdir(splits_dir):
        m = _SPLIT_FILE.match(name)
        if m:
            found.add(m["cls"])
    if classes is not None:
        wanted = list(classes)
    else:
        folders = {d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))} if root and os.path.isdir(root) else set()
        wanted = sorted(found | {d for d in folders if not d.startswith(".") and d != SPLITS_FOLDER})
    entries = []
    for cls in wanted:
        file = os.path.join(splits_dir, f"{cls}_test_split{split}.txt")
        if not os.path.isfile(file):
            problems.add(f"{file}: split file of class '{cls}' is missing; restore it from test_train_splits.rar (or remove the class folder)")
            continue
        for n, tokens in read_list(file, problems, "HMDB51 split file"):
            if len(tokens) != 2:
                problems.add(f"{file} line {n}: expected '<video>.avi 0|1|2', got '{' '.join(tokens)}'")
                continue
            flag_value = tokens[1]
            if flag_value == "0":
                continue
            if flag_value not in PARTS:
                problems.unknown_label(file, flag_value, n, "HMDB51 split labels are 0 (unused), 1 (train) and 2 (test)")
                continue
            entries.append(SplitEntry(file, n, f"{cls}/{tokens[0]}", cls, PARTS[flag_value]))
    return entries


@register_datamodule("hmdb51")
class HMDB51DataModule(OfficialSplitDataModule):
    """HMDB51 with its official split N: domains ``train`` (label 1) and ``test`` (label 2).

    Plain fine-tuning evaluated on the official split: ``train`` is the source (its held-out part
    is the validation set), ``test`` the default target.

    Videos (``<class>/<video>.avi``) or frame folders (``<class>/<video>/``) under ``--data.root``.

    Args:
        splits_dir: folder of ``<class>_test_split{1,2,3}.txt`` (default:
            ``<root>/testTrainMulti_7030_splits``, ``<root>`` or ``<root>/../testTrainMulti_7030_splits``).
        split: official split 1, 2 or 3.
        frame_template: file names in frame folders (default: derived from the folder).
        **kwargs: see :class:`vidlit.data.MultiDomainDataModule`.
    """

    dataset_name = "HMDB51"
    root_hint = "pass the folder holding the class folders"

    def split_entries(self, problems: Problems) -> tuple[Optional[list[str]], list[SplitEntry]]:
        entries = hmdb51_entries(self.root, hmdb51_splits_dir(self.root, self.splits_dir, self.split), self.split, problems)
        return None, entries
