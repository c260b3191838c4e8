"""Atomic file writes, the one way vidlit writes a file a reader may see half-made: a temporary file
in the same folder, flushed to disk, renamed into place, the folder entry flushed too. A crash at
any point leaves either the old file or the new one, never a truncated one, and no temporary file
is left behind by an error."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import IO, Any, Iterator


def fsync(path: str) -> None:
    """Flush a file (or a folder's entries) to disk; a no-op where the OS does not allow it."""
    if os.path.isdir(path) and os.name == "nt":
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = "") -> Iterator[str]:
    """A temporary path beside ``path`` (ending in ``suffix``, for writers that choose a format by
    the extension) for a writer that takes a path (``torch.save``, ``np.savez``, an exporter); on
    success it is flushed and renamed to ``path``, on error removed."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp" + suffix, dir=folder)
    os.close(fd)
    try:
        yield tmp
        fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    fsync(folder)


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """``open(path, mode)`` that writes atomically (see the module docstring)."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **open_kwargs) as fh:
            yield fh
            fh.flush()


def write_json(path: str, data: Any, indent: int = 2) -> str:
    """``data`` as JSON at ``path``, atomically; returns ``path``."""
    with atomic_write(path) as fh:
        json.dump(data, fh, indent=indent)
    return path


def write_text(path: str, text: str) -> str:
    """``text`` at ``path``, atomically; returns ``path``."""
    with atomic_write(path) as fh:
        fh.write(text)
    return path
