"""The one base class of user errors (bad flags, bad data, bad files).

``python -m vidlit`` prints a :class:`VidlitError` as one line, ``vidlit: error: <message>``,
and exits with status 2; any other exception is a bug and keeps its traceback. Messages name the
flag or file concerned and what to do. ``VidlitError`` is also a ``ValueError``, so code that
catches ``ValueError`` around bad settings keeps working.
"""
from __future__ import annotations


class VidlitError(ValueError):
    """A mistake in the command line, the config or the data, reported in one line."""


class DataError(VidlitError):
    """Bad input data or data flags. ``str()`` is the user-facing message (one line per problem)."""


class MissingDependencyError(VidlitError, ImportError):
    """An optional package a setting needs is not installed (the message says what to install)."""


def unpickling_reason(err: BaseException) -> str:
    """One line on why ``torch.load(weights_only=True)`` refused a file (torch's message spans
    many lines): the object it would have had to import, or the message's first line."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if m:
        return f"it needs the global '{m.group(1)}', and unpickling arbitrary objects could run code"
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[0][:200] if lines else type(err).__name__
