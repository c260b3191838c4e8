"""The one base class of user errors (bad flags, bad data, bad files).

``python -m vidlit`` prints a :class:`VidlitError` as one line, ``vidlit: error: <message>``,
and exits with status 2; any other exception is a bug and keeps its traceback. Messages name the
flag or file concerned and what to do. ``VidlitError`` is also a ``ValueError``, so code that
catches ``ValueError`` around bad settings keeps working.
"""
from __future__ import annotations

from typing import Any, Optional


class VidlitError(ValueError):
    """A mistake in the command line, the config or the data, reported in one line."""


class MissingDependencyError(VidlitError, ImportError):
    """An optional package a setting needs is not installed (the message says what to install)."""


#: what every file ``torch.save`` writes starts with: a zip archive (the default since torch 1.6),
#: or, in the legacy format, a pickle of torch's magic number (these are its bytes)
_ZIP_HEADER = b"PK\x03\x04"
_LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


def torch_file_problem(path: str) -> Optional[str]:
    """Why ``path`` is not a file written by ``torch.save`` (read from its first bytes and, for a
    zip archive, its directory at the end; nothing is unpickled), or None when it looks like one."""
    import zipfile

    with open(path, "rb") as fh:
        head = fh.read(64)
    if not head:
        return "the file is empty"
    if head.startswith(_ZIP_HEADER):
        if not zipfile.is_zipfile(path):
            return "a zip archive, as torch.save writes, but truncated or damaged"
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return "a zip archive, as torch.save writes, but damaged"
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            return "a TorchScript model (what `python -m vidlit export` writes), not a checkpoint"
        if not any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
            return "a zip archive without the data.pkl that torch.save writes"
        return None
    if head.startswith(b"\x80") and _LEGACY_MAGIC in head[:32]:
        return None  # torch.save's legacy (non-zip) format
    return "it is neither the zip archive nor the legacy format that torch.save writes"


def unsafe_global(err: BaseException) -> Optional[str]:
    """The object ``torch.load(weights_only=True)`` refused to import (a class or function the
    file's pickle names), or None when it failed for another reason."""
    import re

    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", re.sub(r"\x1b\[[0-9;]*m", "", str(err)))
    return m.group(1) if m else None


def unpickling_reason(err: BaseException) -> str:
    """One line on why ``torch.load(weights_only=True)`` refused a file, without torch's preamble
    (many lines, cut anywhere they would end mid-sentence, advising to retry with unsafe loading):
    the object it would have had to import, else the unpickler's own error, else the first line
    of the message that does not talk about ``weights_only``."""
    import re

    name = unsafe_global(err)
    if name:
        return f"it needs the global '{name}', and unpickling arbitrary objects could run code"
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    m = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    if m:
        return m.group(1).strip()[:200]
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip() and "weights_only" not in ln]
    return lines[0][:200] if lines else type(err).__name__


def load_torch_file(path: str, flag: str, instead: str, error: type = VidlitError, mmap: bool = False) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` (files are untrusted input: no
    arbitrary unpickling) with one-line errors of class ``error``, each naming ``flag``, the file and
    ``instead`` (what to pass): a file that ``torch.save`` did not write (random bytes, a truncated
    archive, another format) is "not a checkpoint"; a pickle that would import code is refused.
    Never advises loading with ``weights_only=False``. ``mmap``: map a zip archive's tensors."""
    import pickle
    import warnings

    import torch

    try:
        problem = torch_file_problem(path)
    except OSError as err:
        raise error(f"{flag}: cannot read '{path}' ({err.strerror or err}); {instead}") from None
    if problem:
        raise error(f"{flag}: '{path}' refused: it is not a checkpoint ({problem}); {instead}") from None
    try:
        with warnings.catch_warnings():  # the weights-only unpickler warns about odd pickle protocols
            warnings.simplefilter("ignore")
            with open(path, "rb") as fh:
                zipped = fh.read(4) == _ZIP_HEADER
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipped)
    except pickle.UnpicklingError as err:
        if unsafe_global(err):
            raise error(f"{flag}: '{path}' refused (read with torch.load weights_only=True, which imports nothing): "
                        f"{unpickling_reason(err)}; {instead}") from None
        raise error(f"{flag}: '{path}' refused: it is not a checkpoint (damaged: {unpickling_reason(err)}); {instead}") from None
    except MemoryError:
        raise error(f"{flag}: '{path}' refused: it is not a checkpoint (damaged: it claims more memory than there is); {instead}") from None
    except Exception as err:  # noqa: BLE001 - torch raises many types on damaged files (RuntimeError, EOFError, KeyError, ...)
        raise error(f"{flag}: '{path}' refused: it is not a checkpoint (damaged: {unpickling_reason(err)}); {instead}") from None
