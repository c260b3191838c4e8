"""Atomic file writes: a temporary file in the same folder, flushed to disk, then renamed into place."""
from __future__ import annotations

import json
import os


def write_json(path: str, data: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as fh:
        json.dump(data, fh, indent=2)
    os.replace(path + ".tmp", path)


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
