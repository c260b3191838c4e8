"""Background mixing against a static-background shortcut, in memory (docs/STRATEGIES.md,
"Background mixing (video DG)").

Data: ``vidlit.data.fake.shortcut_splits`` (3 source domains where the background colour gives the
class, a target where it points to the wrong class; motion always gives the right one). Each row:
``fit_in_memory`` (tiny3d, 32 px, 8 frames, one CPU thread), source validation and target accuracy.

    python -m vidlit bench bgmix_shortcut --configs "erm;erm+bgmix(1,0-1)" --seeds 0 1 --epochs 25
"""
import argparse
import time
from typing import Optional, Sequence

import torch

from vidlit.callbacks.bgmix import BackgroundMix
from vidlit.data.fake import fit_in_memory, shortcut_splits

CONFIGS = {  # name: (strategy, BackgroundMix arguments or None); "(prob,min-max)" of the weight
    "erm": ("erm", None),
    "dann": ("dann", None),
    "erm+bgmix(1,0-0.3)": ("erm", dict(prob=1.0)),
    "erm+bgmix(1,0-0.5)": ("erm", dict(prob=1.0, max_weight=0.5)),
    "erm+bgmix(1,0-1)": ("erm", dict(prob=1.0, max_weight=1.0)),
    "erm+bgmix(1,.5-1)": ("erm", dict(prob=1.0, min_weight=0.5, max_weight=1.0)),
    "erm+bgmix(.5,.5-1)": ("erm", dict(prob=0.5, min_weight=0.5, max_weight=1.0)),
    "dann+bgmix(1,0-1)": ("dann", dict(prob=1.0, max_weight=1.0)),
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vidlit bench bgmix_shortcut", description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default=";".join(CONFIGS), help=f"';'-separated rows among: {'; '.join(CONFIGS)}")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--quick", action="store_true", help="a smoke run: erm+bgmix(1,0-1), seed 0, 1 epoch")
    args = p.parse_args(argv)
    if args.quick:
        args.configs, args.seeds, args.epochs = "erm+bgmix(1,0-1)", [0], 1
    want = args.configs.split(";")
    unknown = [w for w in want if w not in CONFIGS]
    if unknown:
        p.error(f"unknown config(s) {unknown}; choose among: {'; '.join(CONFIGS)}")
    torch.set_num_threads(1)
    for name in want:
        strategy, bg = CONFIGS[name]
        for s in args.seeds:
            t = time.time()
            callbacks = [BackgroundMix(**bg)] if bg else []
            val, m = fit_in_memory(strategy, seed=s, epochs=args.epochs, splits=shortcut_splits(), callbacks=callbacks)
            print(f"{name} seed={s} val={val:.3f} target={m['test/acc']:.3f} ({time.time() - t:.0f}s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
