"""The one base class of user errors (bad flags, bad data, bad files).

``python -m vidlit`` prints a :class:`VidlitError` as one line, ``vidlit: error: <message>``,
and exits with status 2; any other exception is a bug and keeps its traceback. Messages name the
flag or file concerned and what to do. ``VidlitError`` is also a ``ValueError``, so code that
catches ``ValueError`` around bad settings keeps working.
"""
from __future__ import annotations


class VidlitError(ValueError):
    """A mistake in the command line, the config or the data, reported in one line."""


class MissingDependencyError(VidlitError, ImportError):
    """An optional package a setting needs is not installed (the message says what to install)."""
