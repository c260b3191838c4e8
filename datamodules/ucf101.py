"""``ucf101``: UCF101 with its official split files (``classInd.txt``, ``trainlist0N.txt``,
``testlist0N.txt``); domains ``train`` and ``test`` are the official split N."""
from __future__ import annotations

import os
import re
from typing import Optional

from datamodules._common import (
    OfficialSplitDataModule, Problems, SplitEntry, find_dir, read_list,
)
from vidlit.data.datamodule import register_datamodule

_GROUP = re.compile(r"_(g\d+)_c\d+", re.IGNORECASE)
SPLITS_FOLDER = "ucfTrainTestlist"


def ucf101_splits_dir(root: Optional[str], given: Optional[str]) -> Optional[str]:
    """``given``, else the first of ``root/ucfTrainTestlist``, ``root``, ``root/../ucfTrainTestlist``
    that holds ``classInd.txt``."""
    cands = [os.path.join(root, SPLITS_FOLDER), root, os.path.join(os.path.dirname(os.path.abspath(root)), SPLITS_FOLDER)] if root else []
    return find_dir(given, cands, "classInd.txt")


def ucf101_entries(splits_dir: Optional[str], split: int, problems: Problems, flag: str = "--data.splits_dir") -> tuple[list[str], list[SplitEntry]]:
    """Class names in ``classInd.txt`` order and the videos of split ``split`` (part ``train`` from
    ``trainlist0N.txt``, ``test`` from ``testlist0N.txt``); bad lines go to ``problems``."""
    if not splits_dir:
        problems.add(f"{flag}: classInd.txt not found; pass the folder holding classInd.txt, trainlist0N.txt and testlist0N.txt (ucfTrainTestlist/)")
        return [], []
    class_file = os.path.join(splits_dir, "classInd.txt")
    by_index: dict[str, str] = {}
    for n, tokens in read_list(class_file, problems, "UCF101 class list (classInd.txt)"):
        if len(tokens) != 2 or not tokens[0].isdigit():
            problems.add(f"{class_file} line {n}: expected '<index> <ClassName>', got '{' '.join(tokens)}'")
            continue
        by_index[tokens[0]] = tokens[1]
    names = list(by_index.values())
    known = set(names)
    hint = f"labels must be the class indices (or class folders) of {class_file}"
    entries = []
    for part, stem in (("train", "trainlist"), ("test", "testlist")):
        file = os.path.join(splits_dir, f"{stem}0{split}.txt")
        for n, tokens in read_list(file, problems, f"UCF101 split file ({stem}0{split}.txt)"):
            entry = tokens[0]
            folder = entry.replace("\\", "/").split("/")[0] if "/" in entry or "\\" in entry else None
            if len(tokens) > 2 or (part == "train" and len(tokens) != 2):
                problems.add(f"{file} line {n}: expected '{'Class/video.avi <index>' if part == 'train' else 'Class/video.avi'}', got '{' '.join(tokens)}'")
                continue
            if len(tokens) == 2:
                label = by_index.get(tokens[1])
                if label is None:
                    problems.unknown_label(file, tokens[1], n, hint)
                    continue
                if folder is not None and folder != label:
                    problems.add(f"{file} line {n}: {entry} is in folder '{folder}' but label {tokens[1]} is '{label}' in {class_file}; fix the line")
                    continue
            elif folder is None:
                problems.add(f"{file} line {n}: expected 'Class/video.avi' (the class folder names the label), got '{entry}'")
                continue
            elif folder in known:
                label = folder
            else:
                problems.unknown_label(file, folder, n, hint)
                continue
            m = _GROUP.search(os.path.basename(entry))
            entries.append(SplitEntry(file, n, entry, label, part, m.group(1).lower() if m else None))
    return names, entries


@register_datamodule("ucf101")
class UCF101DataModule(OfficialSplitDataModule):
    """UCF101 with its official split N: domains ``train`` (trainlist0N) and ``test`` (testlist0N).

    Plain fine-tuning evaluated on the official split: ``train`` is the source (its held-out part
    is the validation set), ``test`` the default target.

    Videos (``Class/v_Class_gXX_cYY.avi``) or frame folders (``Class/v_Class_gXX_cYY/``) under
    ``--data.root``. The holdout keeps whole ``gXX`` groups out of training, as the official
    splits do; classes are numbered in ``classInd.txt`` order.

    Args:
        splits_dir: folder of ``classInd.txt``, ``trainlist0N.txt``, ``testlist0N.txt`` (default:
            ``<root>/ucfTrainTestlist``, ``<root>`` or ``<root>/../ucfTrainTestlist``).
        split: official split 1, 2 or 3.
        frame_template: file names in frame folders (default: derived from the folder).
        **kwargs: see :class:`vidlit.data.MultiDomainDataModule`.
    """

    dataset_name = "UCF101"
    root_hint = "pass the folder holding the class folders (UCF-101/)"

    def split_entries(self, problems: Problems) -> tuple[Optional[list[str]], list[SplitEntry]]:
        return ucf101_entries(ucf101_splits_dir(self.root, self.splits_dir), self.split, problems)
