"""The one base class of user errors (bad flags, bad data, bad files).

``python -m vidlit`` prints a :class:`VidlitError` as one line, ``vidlit: error: <message>``,
and exits with status 2; any other exception is a bug and keeps its traceback. Messages name the
flag or file concerned and what to do. ``VidlitError`` is also a ``ValueError``, so code that
catches ``ValueError`` around bad settings keeps working.
"""
from __future__ import annotations

from typing import Optional


class VidlitError(ValueError):
    """A mistake in the command line, the config or the data, reported in one line."""


class DataError(VidlitError):
    """Bad input data or data flags. ``str()`` is the user-facing message (one line per problem)."""


class MissingDependencyError(VidlitError, ImportError):
    """An optional package a setting needs is not installed (the message says what to install)."""


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
