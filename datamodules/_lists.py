"""Shared reader of mmaction2-style list files (one list file per domain)."""
from __future__ import annotations

import os
from abc import abstractmethod
from typing import Any, Optional

from datamodules._common import FormatDataModule, Problems, frame_extra, numeric_order, read_list
from vidlit.data.records import DataError, VideoRecord


class ListDataModule(FormatDataModule):
    """One mmaction2 list file per domain: ``--data.lists '{domain: file, ...}'``.

    Subclasses set ``columns`` (the line syntax, for messages) and implement :meth:`parse`.
    """

    columns = ""

    def __init__(
        self,
        *args: Any,
        lists: Optional[dict[str, str]] = None,
        label_map: Optional[str] = None,
        frame_template: Optional[str] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.lists = dict(lists or {})
        self.label_map, self.frame_template = label_map, frame_template
        if self.lists:
            self.default_target = [list(self.lists)[-1]]

    def describe(self) -> str:
        return "--data.lists " + ", ".join(f"{d}: {f}" for d, f in self.lists.items())

    @abstractmethod
    def parse(self, tokens: list[str]) -> tuple[str, str, dict]:
        """``(path entry, label, record extra)`` of one line; ValueError if the line is malformed."""

    @abstractmethod
    def make_record(self, path: str, label: str, domain: str, extra: dict) -> Optional[VideoRecord]:
        """The record of an existing ``path`` (None: it does not exist or is of the wrong kind)."""

    def index_records(self) -> list[VideoRecord]:
        if not self.lists:
            raise DataError(f"--data.lists is required: one list file per domain, e.g. --data.lists '{{train: train.txt, test: test.txt}}' ({self.columns} per line)")
        problems = Problems()
        names = self._names(problems)
        records = []
        for domain, list_file in self.lists.items():
            base = self.root or os.path.dirname(os.path.abspath(list_file))
            for n, tokens in read_list(list_file, problems, f"list file of domain '{domain}' (--data.lists)"):
                try:
                    entry, label, extra = self.parse(tokens)
                except ValueError as err:
                    problems.add(f"{list_file} line {n}: {err}; each line must be '{self.columns}'")
                    continue
                if names is not None:
                    if not label.isdigit() or int(label) >= len(names):
                        problems.unknown_label(list_file, label, n, f"labels must be 0..{len(names) - 1}, the line numbers of --data.label_map {self.label_map}")
                        continue
                    label = names[int(label)]
                problems.entry(list_file)
                path = entry if os.path.isabs(entry) else os.path.join(base, entry)
                rec = self.make_record(path, label, domain, extra)
                if rec is None:
                    problems.missing(list_file, n, path)
                else:
                    records.append(rec)
        problems.check(self.describe())
        self.class_order = names or numeric_order(r.label for r in records)
        return records

    def _names(self, problems: Problems) -> Optional[list[str]]:
        """Class names from ``--data.label_map`` (line i = label i), or None."""
        if not self.label_map:
            return None
        if not os.path.isfile(self.label_map):
            problems.add(f"{self.label_map}: --data.label_map does not exist; check the path")
            return None
        names = [" ".join(tokens) for _, tokens in read_list(self.label_map, problems, "--data.label_map")]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            problems.add(f"{self.label_map}: class name(s) {', '.join(dup)} appear more than once; each line must name one class")
        return names

    def frames_extra(self) -> dict:
        return frame_extra(self.frame_template)
