"""``python -m vidlit list``: strategies, backbones, datasets and switchable features."""
from __future__ import annotations

import re

from vidlit.models.backbones import BACKBONES
from vidlit.models.strategy import STRATEGIES


def summary(obj: object) -> str:
    """One line for a class: the first paragraph of its docstring, whitespace joined, cut to its first
    sentence when it holds more than one (never mid-sentence, as a docstring's first line can be)."""
    doc = (getattr(obj, "__doc__", None) or "").strip()
    paragraph = " ".join(re.split(r"\n\s*\n", doc, maxsplit=1)[0].split())
    first = re.split(r"(?<=[.!?])\s+(?=[A-Z`(])", paragraph, maxsplit=1)[0]
    return first


def print_registries() -> None:
    from vidlit.commands.cli import CALLBACK_GROUPS, callback_class
    from vidlit.data.datamodule import DATAMODULES as datasets

    for name in STRATEGIES.names():
        print(f"strategy  {name:14s} {summary(STRATEGIES.get(name))}")
    for name in BACKBONES.names():
        spec = BACKBONES.get(name)
        print(f"backbone  {name:14s} {spec.family}, {spec.num_frames}x{spec.size}x{spec.size}, norm={spec.norm}")
    for name in datasets.names():
        print(f"dataset   {name:14s} {summary(datasets.get(name))}")
    for key, target in CALLBACK_GROUPS:
        print(f"feature   {'--' + key + '.*':14s} {summary(callback_class(target))}")


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print("usage: python -m vidlit list\n\nLists the registered strategies, backbones and dataset formats, and the "
              "features a run switches on with a flag group (--average.*, --tta.*, ...: fit --help lists their options).")
        return 0
    if argv:
        from vidlit.utils.errors import VidlitError

        raise VidlitError(f"list takes no arguments (got {' '.join(argv)})")
    print_registries()
    return 0
