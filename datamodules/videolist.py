"""``videolist``: mmaction2 video list files, ``path label`` per line, one list file per domain."""
from __future__ import annotations

from typing import Optional

from datamodules._common import locate
from datamodules._lists import ListDataModule
from vidlit.data.datamodule import register_datamodule
from vidlit.data.records import VideoRecord


@register_datamodule("videolist")
class VideoListDataModule(ListDataModule):
    """mmaction2 video lists (``path label`` per line), one per domain: ``--data.lists '{domain: file}'``.

    ``path`` is a video file (or a folder of frames) relative to ``--data.root`` (default: the list
    file's folder). ``label`` is a class index into ``--data.label_map`` (one class name per line)
    or, without a label map, the class name itself (integers are ordered as numbers). The default
    target domain is the last one in ``--data.lists``.

    Args:
        lists: domain -> list file.
        label_map: file of class names, line i naming label i.
        frame_template: file names in frame folders (default: derived from the folder).
        **kwargs: see :class:`vidlit.data.MultiDomainDataModule`.
    """

    columns = "path label"

    def parse(self, tokens: list[str]) -> tuple[str, str, dict]:
        if len(tokens) != 2:
            raise ValueError(f"{len(tokens)} field(s) (multi-label lines and paths with spaces are not supported)")
        return tokens[0], tokens[1], {}

    def make_record(self, path: str, label: str, domain: str, extra: dict) -> Optional[VideoRecord]:
        found = locate("", path)
        if found is None:
            return None
        path, kind = found
        return VideoRecord(path=path, label=label, domain=domain, kind=kind, extra=self.frames_extra() if kind == "frames" else {})
