"""``manifest``: a CSV ``path,label,domain[,start_frame,end_frame|start_sec,end_sec][,group]``.

One row per labelled video, or per labelled segment of a long video. ``path`` is a video file or a
folder of frames, relative to ``--data.root`` (default: the CSV's folder) unless absolute.
"""
from __future__ import annotations

import csv
import os
from typing import Any, Optional

from datamodules._common import FormatDataModule, Problems, frame_extra, locate, numeric_order
from vidlit.data.datamodule import register_datamodule
from vidlit.data.records import DataError, VideoRecord
from vidlit.data.video_io import VideoDecodeError, VideoInfo, probe_video

REQUIRED = ("path", "label", "domain")
SEGMENT_COLUMNS = {"frame": ("start_frame", "end_frame"), "sec": ("start_sec", "end_sec")}


class _Reported(Exception):
    """A row of a video whose problem is already reported."""


@register_datamodule("manifest")
class ManifestDataModule(FormatDataModule):
    """CSV manifest of videos or segments: ``path,label,domain[,start_frame,end_frame|start_sec,end_sec]``.

    Segments: ``start_frame``/``end_frame`` are 0-based frame indices, end exclusive;
    ``start_sec``/``end_sec`` are seconds, converted to frames with the video's frame rate. An
    empty start or end means the start or end of the video. An optional ``group`` column keeps
    rows of a group on one side of the holdout split (rows of one video always stay together).

    Args:
        manifest: the CSV file.
        fps: frame rate of frame folders, needed only for ``start_sec``/``end_sec`` rows on them.
        frame_template: file names of frame folders, e.g. ``img_{:05d}.jpg`` (default: derived
            from each folder's files).
        **kwargs: see :class:`vidlit.data.MultiDomainDataModule`; ``root`` is the folder relative
            paths are resolved against (default: the CSV's folder).
    """

    def __init__(
        self,
        *args: Any,
        manifest: Optional[str] = None,
        fps: Optional[float] = None,
        frame_template: Optional[str] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.manifest, self.fps, self.frame_template = manifest, fps, frame_template

    def describe(self) -> str:
        return f"--data.manifest {self.manifest}"

    def index_records(self) -> list[VideoRecord]:
        if not self.manifest:
            raise DataError("--data.manifest is required: a CSV with the header path,label,domain")
        if not os.path.isfile(self.manifest):
            raise DataError(f"--data.manifest: file '{self.manifest}' does not exist")
        base = self.root or os.path.dirname(os.path.abspath(self.manifest))
        problems, records, infos = Problems(), [], {}
        with open(self.manifest, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh, skipinitialspace=True)
            header = [h.strip() for h in reader.fieldnames or []]
            reader.fieldnames = header
            lacking = [c for c in REQUIRED if c not in header]
            if lacking:
                raise DataError(
                    f"{self.manifest}: the header lacks column(s) {', '.join(lacking)}; the first line must be "
                    "path,label,domain (optionally with start_frame,end_frame or start_sec,end_sec, and group)"
                )
            for row in reader:
                rec = self._row(row, reader.line_num, base, problems, infos)
                if rec is not None:
                    records.append(rec)
        problems.check(self.describe())
        if not records:
            raise DataError(f"{self.manifest}: no rows; add one line path,label,domain per video")
        self.class_order = numeric_order(r.label for r in records)
        return records

    def _row(self, row: dict, line: int, base: str, problems: Problems, infos: dict) -> Optional[VideoRecord]:
        where = f"{self.manifest} line {line}"
        values = {k: (v or "").strip() for k, v in row.items() if k is not None}
        empty = [c for c in REQUIRED if not values.get(c)]
        if empty:
            problems.add(f"{where}: empty {', '.join(empty)}; every row needs path,label,domain")
            return None
        problems.entry(self.manifest)
        found = locate(base, values["path"])
        if found is None:
            problems.missing(self.manifest, line, os.path.join(base, values["path"]))
            return None
        path, kind = found
        try:
            start, end = self._segment(values, path, kind, infos)
        except _Reported:
            return None  # the video's problem is already listed, on its first row
        except (ValueError, VideoDecodeError) as err:
            problems.add(f"{where}: {err}")
            return None
        extra = frame_extra(self.frame_template) if kind == "frames" else {}
        if kind == "frames" and self.fps:
            extra["fps"] = self.fps
        return VideoRecord(
            path=path, label=values["label"], domain=values["domain"], start_frame=start, end_frame=end,
            group=values.get("group") or None, kind=kind, extra=extra,
        )

    def _segment(self, values: dict, path: str, kind: str, infos: dict) -> tuple[Optional[int], Optional[int]]:
        """``(start_frame, end_frame)`` of a row (None = video start/end); ValueError says what is wrong."""
        given = {unit: [values.get(c, "") for c in cols] for unit, cols in SEGMENT_COLUMNS.items()}
        used = [unit for unit, vals in given.items() if any(vals)]
        if not used:
            return None, None
        if len(used) > 1:
            raise ValueError("both frame and second bounds given; use start_frame,end_frame or start_sec,end_sec")
        unit = used[0]
        cols = SEGMENT_COLUMNS[unit]
        try:
            raw = [float(v) if v else None for v in given[unit]]
        except ValueError:
            raise ValueError(f"{cols[0]}/{cols[1]} must be numbers, got {given[unit]}") from None
        if unit == "frame" and any(v is not None and v != int(v) for v in raw):
            raise ValueError(f"start_frame/end_frame must be whole numbers, got {given[unit]}")
        info = self._info(path, kind, infos) if kind == "video" else None
        if unit == "sec":
            fps = info.fps if info else self.fps
            if not fps:
                raise ValueError(f"{path} is a frame folder: give its frame rate with --data.fps to use start_sec/end_sec")
            raw = [None if raw[0] is None else round(raw[0] * fps), None if raw[1] is None else round(raw[1] * fps)]
        start, end = (None if v is None else int(v) for v in raw)
        if (start is not None and start < 0) or (end is not None and end < 0):
            raise ValueError(f"negative segment bound {given[unit]}")
        if start is not None and end is not None and end <= start:
            raise ValueError(f"segment {cols[0]}={given[unit][0]} {cols[1]}={given[unit][1]} is empty; the end must be after the start")
        if info is not None and ((start or 0) >= info.num_frames or (end is not None and end > info.num_frames)):
            raise ValueError(
                f"segment {cols[0]}={given[unit][0]} {cols[1]}={given[unit][1]} lies outside {path} "
                f"({info.num_frames} frames at {info.fps:g} fps = {info.num_frames / info.fps:.3f} s); fix the bounds"
            )
        return start, end

    @staticmethod
    def _info(path: str, kind: str, infos: dict) -> VideoInfo:
        """Probe each video once; an unreadable one is reported once, on its first row."""
        if path not in infos:
            try:
                infos[path] = probe_video(path)
            except VideoDecodeError as err:
                infos[path] = err
                raise
        info = infos[path]
        if isinstance(info, VideoDecodeError):
            raise _Reported()
        return info
