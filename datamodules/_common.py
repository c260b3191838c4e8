"""Shared pieces of the file-format datamodules: problem collection, path resolution, class order.

Not a dataset itself (the leading underscore keeps it out of the ``--dataset`` registry).
"""
from __future__ import annotations

import os
from abc import abstractmethod
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from datamodules.folder import VIDEO_EXTENSIONS
from vidlit.data.datamodule import MultiDomainDataModule
from vidlit.data.records import DataError, VideoRecord

MAX_LINES = 60  # more problem lines than this are counted, not printed


class Problems:
    """Problems found while indexing, reported together (one line per file) by :meth:`check`."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._unknown: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        self._unknown_hint: dict[str, tuple[str, str]] = {}
        self._missing: dict[str, list[tuple[int, str]]] = defaultdict(list)
        self._entries: dict[str, int] = defaultdict(int)

    def add(self, line: str) -> None:
        self.lines.append(line)

    def unknown_label(self, file: str, label: str, line: int, hint: str, unit: str = "line") -> None:
        """``label`` on ``line`` (or row, ``unit``) of ``file`` is not a known class; grouped per file."""
        self._unknown[file][label].append(line)
        self._unknown_hint[file] = (hint, unit)

    def entry(self, file: str) -> None:
        """Count one media entry listed in ``file`` (for the 'none of them exist' summary)."""
        self._entries[file] += 1

    def missing(self, file: str, line: int, path: str) -> None:
        """The media ``path`` listed on ``line`` of ``file`` does not exist."""
        self._missing[file].append((line, path))

    def all_lines(self) -> list[str]:
        lines = list(self.lines)
        for file, labels in self._unknown.items():
            hint, unit = self._unknown_hint[file]
            parts = [f"'{lab}' ({unit}{'s' if len(ln) > 1 else ''} {_numbers(ln)})" for lab, ln in labels.items()]
            lines.append(f"{file}: unknown label(s) {', '.join(parts)}; {hint}")
        for file, missing in self._missing.items():
            if len(missing) == self._entries.get(file, 0) and len(missing) > 3:
                lines.append(
                    f"{file}: none of its {len(missing)} videos exist (e.g. {missing[0][1]}); "
                    "check --data.root (or the dataset folder flags) and the paths in the file"
                )
            else:
                lines += [f"{path}: listed in {file} line {ln} but does not exist; fix the path or remove the line"
                          for ln, path in missing]
        return lines

    def check(self, where: str) -> None:
        """Raise one :class:`DataError` listing every problem found so far."""
        lines = self.all_lines()
        if not lines:
            return
        shown = lines[:MAX_LINES]
        if len(lines) > MAX_LINES:
            shown.append(f"... and {len(lines) - MAX_LINES} more problem(s) of the same kinds")
        raise DataError(f"{len(lines)} problem(s) in {where}; fix them and run again:\n  " + "\n  ".join(shown))


def _numbers(values: list[int], limit: int = 8) -> str:
    text = ", ".join(str(v) for v in values[:limit])
    return text + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def read_list(path: str, problems: Problems, what: str) -> list[tuple[int, list[str]]]:
    """Non-empty, non-comment lines of a whitespace-separated list file as ``(line number, tokens)``;
    a missing file is a problem (``what`` says which flag or file it should be)."""
    if not os.path.isfile(path):
        problems.add(f"{path}: {what} does not exist; check the path")
        return []
    out = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for n, line in enumerate(fh, 1):
            line = line.strip()
            if line and not line.startswith("#"):
                out.append((n, line.split()))
    if not out:
        problems.add(f"{path}: {what} is empty; it must list one video per line")
    return out


def locate(base: str, entry: str) -> Optional[tuple[str, str]]:
    """``(path, kind)`` of a listed video: a video file, a folder of frames, or a frame folder named
    like the video without its extension (``Class/v_x.avi`` -> ``Class/v_x/``); None if none exists."""
    path = entry if os.path.isabs(entry) else os.path.join(base, entry)
    if os.path.isfile(path):
        return path, "video"
    if os.path.isdir(path):
        return path, "frames"
    stem, ext = os.path.splitext(path)
    if ext.lower() in VIDEO_EXTENSIONS and os.path.isdir(stem):
        return stem, "frames"
    return None


def frame_extra(template: Optional[str]) -> dict:
    """``VideoRecord.extra`` for frame folders: the file name template when one is given."""
    return {"frame_template": template} if template else {}


def find_dir(given: Optional[str], candidates: Iterable[Optional[str]], marker: str) -> Optional[str]:
    """``given`` if set, else the first candidate folder that holds ``marker`` (a file name or a
    glob-free suffix such as ``_test_split1.txt``)."""
    if given:
        return given
    for cand in candidates:
        if cand and os.path.isdir(cand) and any(name == marker or name.endswith(marker) for name in os.listdir(cand)):
            return cand
    return None


class FormatDataModule(MultiDomainDataModule):
    """Base of the file-format datasets: a format-specific default target and class order.

    Subclasses set ``default_target`` (used when ``--data.target_domains`` is not given) and may set
    ``self.class_order`` in :meth:`index_records` (e.g. UCF101's ``classInd.txt`` order) to number
    the classes as the dataset does when ``--data.classes`` is not given.
    """

    default_target: Optional[list[str]] = None
    class_order: Optional[list[str]] = None

    def prepare_index(self) -> None:
        if self._indexed:
            return
        if self._target is None and self.default_target:
            self._target = list(self.default_target)
        super().prepare_index()
        if self._classes is None and self.class_order:
            rank = {c: i for i, c in enumerate(self.class_order)}
            self.class_names = sorted(self.class_names, key=lambda c: (rank.get(c, len(rank)), c))


def numeric_order(labels: Iterable[str]) -> Optional[list[str]]:
    """Labels sorted as numbers when every label is an integer (so class '10' follows '9')."""
    labels = sorted(set(labels))
    if labels and all(lab.lstrip("-").isdigit() for lab in labels):
        return sorted(labels, key=int)
    return None


@dataclass(frozen=True)
class SplitEntry:
    """One video named by a split file, before its path is checked."""

    file: str  # the split file that lists it
    line: int
    entry: str  # path relative to the dataset folder
    label: str
    part: str  # "train" or "test"
    group: Optional[str] = None


def resolve_entries(
    entries: Iterable[SplitEntry], root: str, domain: str, problems: Problems, frame_template: Optional[str]
) -> list[VideoRecord]:
    """Records of the entries whose video file or frame folder exists under ``root``; the others
    are reported as missing."""
    records = []
    for e in entries:
        problems.entry(e.file)
        found = locate(root, e.entry)
        if found is None:
            problems.missing(e.file, e.line, os.path.join(root, e.entry))
            continue
        path, kind = found
        records.append(VideoRecord(
            path=path, label=e.label, domain=domain, group=e.group, kind=kind,
            extra=frame_extra(frame_template) if kind == "frames" else {},
        ))
    return records


def check_split_number(split: int, flag: str = "--data.split") -> None:
    if split not in (1, 2, 3):
        raise DataError(f"{flag} must be 1, 2 or 3 (the official splits), got {split}")


class OfficialSplitDataModule(FormatDataModule):
    """Base of datasets read through their official split files (UCF101, HMDB51): domains
    ``train`` and ``test`` (the default target). Subclasses implement :meth:`split_entries`.

    Args:
        splits_dir: folder of the official split files (default: looked up near ``--data.root``).
        split: official split 1, 2 or 3.
        frame_template: file names in frame folders (default: derived from the folder).
        **kwargs: see :class:`vidlit.data.MultiDomainDataModule`.
    """

    default_target = ["test"]
    dataset_name = "dataset"
    root_hint = "pass the folder holding the class folders"

    def __init__(
        self, *args: Any, splits_dir: Optional[str] = None, split: int = 1, frame_template: Optional[str] = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.splits_dir, self.split, self.frame_template = splits_dir, split, frame_template

    def describe(self) -> str:
        return f"{self.dataset_name} --data.root {self.root} (split {self.split})"

    @abstractmethod
    def split_entries(self, problems: Problems) -> tuple[Optional[list[str]], list["SplitEntry"]]:
        """(class order or None, the split's entries with part ``train`` or ``test``)."""

    def index_records(self) -> list[VideoRecord]:
        check_split_number(self.split)
        problems = Problems()
        if not self.root or not os.path.isdir(self.root):
            problems.add(f"--data.root: {self.dataset_name} video folder '{self.root}' does not exist; {self.root_hint}")
            problems.check(self.describe())
        names, entries = self.split_entries(problems)
        records = []
        for part in ("train", "test"):
            records += resolve_entries([e for e in entries if e.part == part], self.root, part, problems, self.frame_template)
        problems.check(self.describe())
        if names is not None:
            self.class_order = names
        return records
