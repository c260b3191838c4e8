"""``python -m vidlit list``: strategies, backbones, datasets and switchable features."""
from __future__ import annotations

from vidlit.models.backbones import BACKBONES
from vidlit.models.strategy import STRATEGIES


def print_registries() -> None:
    from vidlit.data.datamodule import DATAMODULES as datasets

    for name in STRATEGIES.names():
        doc = (STRATEGIES.get(name).__doc__ or "").strip().splitlines()[0]
        print(f"strategy  {name:14s} {doc}")
    for name in BACKBONES.names():
        spec = BACKBONES.get(name)
        print(f"backbone  {name:14s} {spec.family}, {spec.num_frames}x{spec.size}x{spec.size}, norm={spec.norm}")
    for name in datasets.names():
        doc = (datasets.get(name).__doc__ or "").strip().splitlines()[0]
        print(f"dataset   {name:14s} {doc}")


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print("usage: python -m vidlit list\n\nLists the registered strategies, backbones and dataset formats.")
        return 0
    if argv:
        from vidlit.utils.errors import VidlitError

        raise VidlitError(f"list takes no arguments (got {' '.join(argv)})")
    print_registries()
    return 0
