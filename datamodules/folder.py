"""``folder``: ROOT/<domain>/<class>/<video>.mp4|avi|mkv|webm; without a root, the embedded
generated data (see :mod:`vidlit.data.synthetic`)."""
from __future__ import annotations

import logging
import os
from typing import Any, Optional

from vidlit.data import synthetic
from vidlit.data.datamodule import MultiDomainDataModule, register_datamodule
from vidlit.data.masks import is_mask_file
from vidlit.data.records import DataError, VideoRecord

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov")
log = logging.getLogger("vidlit.data")


@register_datamodule("folder")
class FolderDataModule(MultiDomainDataModule):
    """Videos in ``root/<domain>/<class>/``; ``root=None`` uses the embedded synthetic set.

    Args:
        synthetic_videos_per_class: size of the generated set (per domain and class).
        synthetic_seed: seed of the generated set.
        cache_dir: where the generated set is written (default ``$VIDLIT_CACHE`` or
            ``~/.cache/vidlit``).
        **kwargs: see :class:`vidlit.data.MultiDomainDataModule`.
    """

    def __init__(
        self,
        *args: Any,
        synthetic_videos_per_class: int = 32,
        synthetic_seed: int = 0,
        cache_dir: Optional[str] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.synthetic = dict(videos_per_class=synthetic_videos_per_class, seed=synthetic_seed, cache_dir=cache_dir)

    def describe(self) -> str:
        return f"--data.root {self.root}" if self.root else "the embedded synthetic data"

    def index_records(self) -> list[VideoRecord]:
        root = self.root
        if root is None:
            root = synthetic.generate(progress=_progress_printer("generating the embedded video set"), **self.synthetic)
        elif not os.path.isdir(root):
            raise DataError(f"--data.root: folder '{root}' does not exist")
        records, ignored = [], []
        for domain in sorted(os.listdir(root)):
            ddir = os.path.join(root, domain)
            if not os.path.isdir(ddir) or domain.startswith("."):
                continue
            for cls in sorted(os.listdir(ddir)):
                cdir = os.path.join(ddir, cls)
                if not os.path.isdir(cdir):
                    continue
                for name in sorted(os.listdir(cdir)):
                    path = os.path.join(cdir, name)
                    if name.lower().endswith(VIDEO_EXTENSIONS):
                        records.append(VideoRecord(path=path, label=cls, domain=domain))
                    elif not name.startswith(".") and not is_mask_file(name):  # masks: vidlit.data.masks
                        ignored.append(path)
        if ignored:
            log.warning("ignored %d file(s) without a video extension %s, e.g. %s", len(ignored), VIDEO_EXTENSIONS, ignored[0])
        if not records:
            raise DataError(
                f"--data.root: no videos found in '{root}'; expected {root}/<domain>/<class>/<video>.mp4 (or .avi/.mkv/.webm)"
            )
        return records


def _progress_printer(title: str):
    """A Rich progress bar callback ``(done, total)``; silent on non-zero ranks."""
    state: dict = {}

    def update(done: int, total: int) -> None:
        if os.environ.get("LOCAL_RANK", "0") != "0":
            return
        if "bar" not in state:
            from rich.progress import Progress

            state["bar"] = Progress(transient=False)
            state["bar"].start()
            state["task"] = state["bar"].add_task(title, total=total)
        state["bar"].update(state["task"], completed=done)
        if done >= total:
            state["bar"].stop()

    return update
