"""``rawframes``: mmaction2 rawframe list files, ``frame_dir total_frames label`` per line."""
from __future__ import annotations

import os
from typing import Optional

from datamodules._lists import ListDataModule
from vidlit.data.datamodule import register_datamodule
from vidlit.data.records import VideoRecord


@register_datamodule("rawframes")
class RawFramesDataModule(ListDataModule):
    """mmaction2 rawframe lists (``frame_dir total_frames label``), one per domain: ``--data.lists '{domain: file}'``.

    ``frame_dir`` is a folder of frames ``img_00001.jpg`` ... (numbered from 1) relative to
    ``--data.root`` (default: the list file's folder); all ``total_frames`` frames must exist.
    ``label`` is as for ``videolist``. The default target domain is the last one in ``--data.lists``.

    Args:
        lists: domain -> list file.
        label_map: file of class names, line i naming label i.
        frame_template: frame file names (default: derived from each folder, preferring
            ``img_{:05d}.jpg`` over mmaction2's flow frames ``x_``/``y_``).
        **kwargs: see :class:`vidlit.data.MultiDomainDataModule`.
    """

    columns = "frame_dir total_frames label"

    def parse(self, tokens: list[str]) -> tuple[str, str, dict]:
        if len(tokens) != 3:
            raise ValueError(f"{len(tokens)} field(s) (multi-label lines and paths with spaces are not supported)")
        if not tokens[1].isdigit() or int(tokens[1]) < 1:
            raise ValueError(f"total_frames '{tokens[1]}' is not a positive whole number")
        return tokens[0], tokens[2], {"total_frames": int(tokens[1])}

    def make_record(self, path: str, label: str, domain: str, extra: dict) -> Optional[VideoRecord]:
        if not os.path.isdir(path):
            return None
        return VideoRecord(path=path, label=label, domain=domain, kind="frames", extra={**self.frames_extra(), **extra})
