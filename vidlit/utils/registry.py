"""A small name -> object registry shared by backbones, strategies and datasets.

Modelled on timm's ``register_model``: a decorator adds an entry under a lowercase name and
an unknown name fails with the list of valid ones.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, Dict, Generic, Iterator, TypeVar

from vidlit.utils.errors import VidlitError


def init_arg_names(cls: type, stop: type = object) -> set[str]:
    """The constructor arguments ``cls`` accepts: its ``__init__``'s, and, where that takes
    ``**kwargs``, its base classes' in turn, up to (not including) ``stop``. The one answer to
    "which settings does this class take" (strategies, datamodules, the Trainer)."""
    import inspect

    names: set[str] = set()
    for klass in cls.__mro__:
        if klass is stop or klass is object:
            break
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            params = inspect.signature(init).parameters
        except (TypeError, ValueError):
            continue
        names |= {n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            break
    return names

T = TypeVar("T")


class UnknownNameError(VidlitError, KeyError):
    """Raised for a name that is not registered; ``str()`` is a one-line user-facing message."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def plugin_folder(name: str) -> str:
    """The folder of plugin package ``name`` beside the ``vidlit`` package (``strategies``, ``datamodules``)."""
    import os

    return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), name)


def plugin_package(name: str):
    """The plugin folder ``name`` beside the ``vidlit`` package (``strategies/``, ``datamodules/``),
    imported as the top-level package ``name`` from that folder whatever else ``sys.path`` holds; a
    different package already imported under that name is a one-line error naming both."""
    import importlib.util
    import os
    import sys

    folder = plugin_folder(name)
    init = os.path.join(folder, "__init__.py")
    loaded = sys.modules.get(name)
    if loaded is not None:
        where = os.path.dirname(os.path.abspath(getattr(loaded, "__file__", None) or "?"))
        if os.path.isfile(init) and where != folder:
            raise VidlitError(f"another package named '{name}' ({where}) was imported before vidlit's plugin folder "
                              f"{folder}; rename that package or import vidlit first")
        return loaded
    if not os.path.isfile(init):  # an install without the plugin folders: whatever the name imports
        return importlib.import_module(name)
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[folder])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


class Registry(Generic[T]):
    """Maps lowercase names to objects (builder functions or classes)."""

    def __init__(self, kind: str, flag: str) -> None:
        self.kind = kind  # e.g. "backbone"
        self.flag = flag  # e.g. "--backbone", used in error messages
        self._entries: Dict[str, T] = {}
        self._packages: list[str] = []

    def register(self, name: str) -> Callable[[T], T]:
        key = name.lower()

        def deco(obj: T) -> T:
            if key in self._entries and self._entries[key] is not obj:
                raise ValueError(f"{self.kind} '{key}' is registered twice")
            self._entries[key] = obj
            return obj

        return deco

    def scan(self, package: str) -> None:
        """Import every module of ``package`` so that dropping a file there registers it.

        ``package`` is one of the plugin folders beside ``vidlit/`` (``strategies``, ``datamodules``):
        that folder is imported, never another installed package of the same name."""
        self._packages.append(package)

    def _load(self) -> None:
        while self._packages:
            package = self._packages.pop(0)
            pkg = plugin_package(package)
            for info in pkgutil.iter_modules(pkg.__path__):
                if not info.name.startswith("_"):
                    importlib.import_module(f"{package}.{info.name}")

    def get(self, name: str) -> T:
        self._load()
        key = str(name).lower()
        if key not in self._entries:
            raise UnknownNameError(
                f"unknown {self.kind} '{name}' for {self.flag}; valid names: {', '.join(self.names())}"
            )
        return self._entries[key]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return str(name).lower() in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
