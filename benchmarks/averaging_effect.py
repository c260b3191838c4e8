"""Effect of ``--average.method swad|ema`` on held-out-domain accuracy, in memory (no video files).

The in-memory set of ``vidlit.data.fake`` (three source domains, 32 px, 8 frames; held-out domain
``texture``), each strategy trained through a Lightning Trainer with validation after every epoch
and the :class:`vidlit.callbacks.averaging.WeightAveraging` callback; one training per (strategy, seed) gives
both models compared, since averaging does not change training: the last epoch's weights and the
averaged weights (BatchNorm statistics recomputed on the training batches). Accuracies are on the
held-out domain.

    python benchmarks/averaging_effect.py [--strategies erm dann] [--seeds 0 1 2] [--epochs 10] [--method swad]
"""
from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
from typing import Optional, Sequence

if __name__ == "__main__":  # benchmarks/ first on sys.path would shadow the `strategies` package
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != _here]

import lightning.pytorch as pl
import torch


def target_clips(per_class: int = 8, size: int = 32, seed: int = 0) -> dict:
    from vidlit.data.fake import render_clips

    clips = render_clips(("texture",), per_class=per_class, frames=16, size=size, seed=seed + 100)
    clips["video"] = clips["video"][:, :, ::2].contiguous()
    return clips


def accuracy(model, clips: dict) -> float:
    model.eval()
    with torch.no_grad():
        pred = model(model.normalize(clips["video"])).argmax(-1)
    return float((pred == clips["label"]).float().mean())


def run(strategy: str, seed: int, epochs: int, method: str, target: dict) -> tuple[float, float, dict]:
    from vidlit.callbacks.averaging import WeightAveraging
    from vidlit.models.averaging import recompute_bn
    from vidlit.data.fake import CLASSES, BalancedBatches, _SetEpoch, source_splits
    from vidlit.models.strategy import STRATEGIES

    train, val = source_splits()
    pl.seed_everything(seed, verbose=False)
    model = STRATEGIES.get(strategy)(num_classes=len(CLASSES), num_domains=3, seed=seed)
    train_set = BalancedBatches(train, 8, seed=seed)
    val_set = BalancedBatches(val, len(val["label"]) // 3, shuffle=False)
    avg = WeightAveraging(method)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=[_SetEpoch(train_set), avg])
    loader = functools.partial(torch.utils.data.DataLoader, batch_size=None)
    trainer.fit(model, loader(train_set), loader(val_set))
    last = accuracy(model, target)
    params = [p for p in model.parameters() if p.is_floating_point()]
    with torch.no_grad():
        for p, t in zip(params, avg.averaged()):
            p.copy_(t)
    recompute_bn(model, (model.normalize(train_set[i]["video"]) for i in range(len(train_set))))
    info = {"window": [avg.window.start, avg.window.end] if method == "swad" else None, "n_averaged": avg.average.count}
    return last, accuracy(model, target), info


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/averaging_effect.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--strategies", nargs="+", default=["erm", "dann"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--method", choices=["swad", "ema"], default="swad")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    target = target_clips()
    print(f"held-out-domain accuracy (texture), {args.epochs} epochs, last epoch vs --average.method {args.method}")
    for strategy in args.strategies:
        rows = [run(strategy, s, args.epochs, args.method, target) for s in args.seeds]
        for s, (a, b, info) in zip(args.seeds, rows):
            print(f"{strategy:<8} seed {s}: last {100 * a:5.1f}  {args.method} {100 * b:5.1f}  {info}")
        print(f"{strategy:<8} mean  : last {100 * statistics.mean(r[0] for r in rows):5.1f}  "
              f"{args.method} {100 * statistics.mean(r[1] for r in rows):5.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
