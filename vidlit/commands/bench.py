"""``python -m vidlit bench NAME [options]``: the benchmark suite (see docs/PERFORMANCE.md).

Each NAME runs ``benchmarks/NAME.py``'s ``main(argv)`` from the repository checkout this package
was installed from (the benchmarks are not part of the installed package). ``all`` runs every
benchmark in turn with its default options (plus ``--quick``, a tiny smoke run, when given). Figures
are medians of ratios measured side by side in one run (``RATIO ...`` lines for loop, precision,
ddp, demo and infer; loader and strategies print their own tables).
"""
from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType
from typing import Optional, Sequence

NAMES = ("cli", "loop", "loader", "strategies", "precision", "ddp", "demo", "defaults_search", "transfer_curve", "infer", "averaging_effect", "bgmix_shortcut")
#: what ``--quick`` (a tiny smoke run) means for the benchmarks that have no ``--quick`` of their own
QUICK = {
    "loader": ["--reps", "1", "--epochs_per_rep", "1", "--workers", "1", "--videos_per_class", "1", "--seconds", "1",
               "--batch_size", "4", "--parts", "1"],
    "strategies": ["--reps", "1", "--steps", "1", "--warmup", "1", "--batch-size", "6", "--frames", "4", "--size", "32",
                   "--num-batches", "1", "--only", "erm"],
    "defaults_search": ["--seeds", "0", "--only", "groupdro"],
    "averaging_effect": ["--strategies", "erm", "--seeds", "0", "--epochs", "2"],
}
USAGE = f"usage: python -m vidlit bench {{{','.join(NAMES)},all}} [options] (NAME --help for a benchmark's options)"


class BenchmarkNotFound(ImportError):
    """The benchmark file is not there (not a repository checkout, or the file is missing)."""


def repo_root() -> str:
    """The checkout holding this package (``vidlit/`` and ``benchmarks/`` side by side)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` from the checkout, by its file path."""
    root = repo_root()
    path = os.path.join(root, "benchmarks", f"{name}.py")
    if not os.path.isfile(path):
        raise BenchmarkNotFound(
            f"benchmark '{name}' needs {path}, which does not exist: the benchmarks live in the vidlit "
            f"repository checkout, not in the installed package (pip install -e . from a checkout)"
        )
    if root not in sys.path:
        sys.path.insert(0, root)  # the benchmarks import each other as `benchmarks.<module>`
    module = importlib.import_module(f"benchmarks.{name}")
    if os.path.abspath(getattr(module, "__file__", "") or "") != path:
        raise BenchmarkNotFound(f"'benchmarks.{name}' resolved to {module.__file__}, not {path}: another 'benchmarks' package shadows the checkout's")
    return module


def quick_args(name: str, argv: Sequence[str]) -> list[str]:
    """``argv`` with ``--quick`` spelled out for benchmarks that do not define it."""
    if "--quick" in argv and name in QUICK:
        return [a for a in argv if a != "--quick"] + QUICK[name]
    return list(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        print(__doc__.split("\n\n")[1])
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in NAMES + ("all",):
        print(f"vidlit: error: unknown benchmark '{name}'; valid names: {', '.join(NAMES)}, all", file=sys.stderr)
        return 2
    try:
        if name != "all":
            return int(load(name).main(quick_args(name, rest)) or 0)
        worst = 0
        for each in NAMES:
            print(f"==== bench {each}", flush=True)
            worst = max(worst, int(load(each).main(quick_args(each, rest)) or 0))
        return worst
    except BenchmarkNotFound as err:
        print(f"vidlit: error: {err}", file=sys.stderr)
        return 2
