"""Background mixing against a static-background shortcut, in memory (docs/STRATEGIES.md,
"Background mixing (video DG)").

Data: ``vidlit.data.fake.shortcut_splits`` (3 source domains where the background colour gives the
class, a target where it points to the wrong class; motion always gives the right one). Each row:
``fit_in_memory`` (tiny3d, 32 px, 8 frames, one CPU thread), source validation and target accuracy.

    python -m benchmarks.bgmix_shortcut "erm;erm+bgmix(1,0-1)" 0,1 25   (from the repository root)
"""
import sys
import time

import torch

from vidlit.bgmix import BackgroundMix
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


def main() -> None:
    torch.set_num_threads(1)
    want = sys.argv[1].split(";") if len(sys.argv) > 1 else list(CONFIGS)
    seeds = [int(x) for x in sys.argv[2].split(",")] if len(sys.argv) > 2 else [0]
    epochs = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    for name in want:
        strategy, bg = CONFIGS[name]
        for s in seeds:
            t = time.time()
            callbacks = [BackgroundMix(**bg)] if bg else []
            val, m = fit_in_memory(strategy, seed=s, epochs=epochs, splits=shortcut_splits(), callbacks=callbacks)
            print(f"{name} seed={s} val={val:.3f} target={m['test/acc']:.3f} ({time.time() - t:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
