"""``files``: unlabelled videos to predict on, with no domain/class layout."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

import numpy as np

from datamodules.folder import VIDEO_EXTENSIONS
from vidlit.data.clips import ClipDataset
from vidlit.data.datamodule import MultiDomainDataModule, register_datamodule
from vidlit.data.records import DataError, VideoRecord

#: the ``domain`` column of ``predictions.csv`` for these videos
FILES_DOMAIN = "files"


@register_datamodule("files")
class VideoFilesDataModule(MultiDomainDataModule):
    """Unlabelled videos for ``predict``: ``--data.root`` a folder (every video under it, any
    layout) or a text file (one video path per line, relative to the file's folder), or
    ``--data.videos '[a.mp4, b.mp4]'``.

    The class names (and the number of source domains a strategy such as dann was built with)
    come from the training run: ``--data.run`` (the run folder, its ``results.json`` or a
    checkpoint), or ``--data.classes '[...]'`` (with ``--data.source_domains`` for strategies with
    a per-domain head).

    Args:
        videos: video files to predict (in addition to ``root``).
        run: the training run whose classes (and source domains) to use.
        **kwargs: see :class:`vidlit.data.MultiDomainDataModule` (clip options, ``test_views``).
    """

    def __init__(self, *args: Any, videos: Optional[list[str]] = None, run: Optional[str] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.videos, self.run = list(videos or []), run

    def describe(self) -> str:
        return f"--data.root {self.root}" if self.root else "--data.videos"

    def index_records(self) -> list[VideoRecord]:
        paths: list[str] = []
        missing: list[str] = []
        if self.root:
            if os.path.isdir(self.root):
                for dirpath, dirnames, filenames in os.walk(self.root):
                    dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                    paths += [os.path.join(dirpath, f) for f in sorted(filenames) if f.lower().endswith(VIDEO_EXTENSIONS)]
            elif os.path.isfile(self.root):
                base = os.path.dirname(os.path.abspath(self.root))
                with open(self.root) as fh:
                    for line in fh:
                        entry = line.strip()
                        if entry and not entry.startswith("#"):
                            paths.append(entry if os.path.isabs(entry) else os.path.join(base, entry))
            else:
                raise DataError(f"--data.root {self.root}: no such folder or list file (one video path per line)")
        paths += list(self.videos)
        for p in paths:
            if not os.path.isfile(p):
                missing.append(p)
        if missing:
            raise DataError(f"{len(missing)} listed video(s) do not exist; fix the paths:\n  " + "\n  ".join(missing))
        if not paths:
            raise DataError(f"no videos to predict in {self.describe()}; expected video files ({', '.join(VIDEO_EXTENSIONS)})")
        return [VideoRecord(path=p, label="", domain=FILES_DOMAIN) for p in paths]

    def _trained(self) -> tuple[list[str], list[str]]:
        if self.run:
            from vidlit.run.checkpoint import trained_run_info

            info = trained_run_info(self.run)
            return list(self._classes or info["class_names"]), list(self._source or info["source_domains"] or ["source"])
        if self._classes:
            return list(self._classes), list(self._source or ["source"])
        raise DataError("--dataset files needs the trained classes: --data.run RUN_DIR (or a checkpoint) or --data.classes '[...]'")

    def prepare_index(self) -> None:
        if self._indexed:
            return
        self.class_names, self.source_domains = self._trained()
        self.target_domains = [FILES_DOMAIN]
        records = self.index_records()
        with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2)) as pool:
            probed = list(pool.map(self._probe, records))
        problems = [p for _, p in probed if p]
        if problems:
            raise DataError(f"{len(problems)} unreadable video(s) in {self.describe()}; fix or remove them:\n  " + "\n  ".join(problems))
        self.train_records, self.val_records = [], []
        self.test_records = [r for r, _ in probed]
        self._indexed = True

    def _dataset(self, records: list[VideoRecord], domains: list[str], train: bool, views: tuple[int, int] = (1, 1), stream: int = 0) -> ClipDataset:
        placeholder = [VideoRecord(r.path, self.class_names[0], r.domain, r.start_frame, r.end_frame, r.group, r.kind, r.num_frames, r.extra) for r in records]
        ds = super()._dataset(placeholder, domains, train, views, stream)
        ds.labels = np.full(len(ds), -1, dtype=np.int64)  # unknown: predictions.csv leaves the label empty
        return ds

    def setup(self, stage: str) -> None:
        self.prepare_index()
        if stage != "predict":
            raise DataError("--dataset files holds unlabelled videos: use it with `python -m vidlit predict` only")
        self.test_set = self._dataset(self.test_records, self.target_domains, train=False)
        self.test_view_set = self.test_set
        if self.test_views != (1, 1):
            self.test_view_set = self._dataset(self.test_records, self.target_domains, train=False, views=self.test_views)
        self.val_set = self.train_set = self.target_train_set = None
