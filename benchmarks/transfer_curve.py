"""``python -m vidlit bench transfer_curve``: does pretraining help when labels are few?

The transfer experiment of docs/TRANSFER.md, rerunnable on this machine in a few minutes:

1. **Pretrain** ``erm`` on the embedded set (all four domains, its five motion classes) through a
   Lightning Trainer, and save the checkpoint as ``fit`` does.
2. **Downstream task**: other motions the pretraining never saw
   (:data:`vidlit.data.synthetic.OTHER_CLASSES`: anticlockwise circles and the four diagonals), in
   the same four appearance domains. For K labelled clips per class (by seed), train ``erm`` twice
   with the same budget: from scratch, and from the pretrained checkpoint
   (``pretrained=CKPT``, the path ``--model.pretrained RUN/checkpoints/best.ckpt`` takes: its backbone
   loaded, a new head). Accuracy on held-out clips of the downstream task (the same test clips for
   every K and seed).

Prints one table (mean ± standard error over seeds), the gain per K, and writes
``transfer_curve.png`` and ``transfer_curve.json`` into ``--out``. The clips are rendered in memory
by the embedded generator (:mod:`vidlit.data.fake`), not decoded from files.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Optional, Sequence

import torch

SHOTS = (1, 5, 10)


def _trainer(epochs: int, callbacks: list, val_every: Optional[int] = None):
    import lightning.pytorch as pl

    return pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=1,
        check_val_every_n_epoch=val_every or epochs, callbacks=callbacks,
    )


def _subset(clips: dict, index: torch.Tensor) -> dict:
    return {k: v[index] for k, v in clips.items()}


def _render(domains, per_class: int, frames: int, size: int, seed: int, classes) -> dict:
    """Clips as the demo samples them: ``frames`` frames at stride 2 of a clip twice as long."""
    from vidlit.data.fake import render_clips

    clips = render_clips(domains, per_class=per_class, frames=2 * frames, size=size, seed=seed, classes=classes)
    clips["video"] = clips["video"][:, :, ::2].contiguous()
    return clips


def _shots(clips: dict, k: int, seed: int) -> dict:
    """``k`` clips of every class (from any domain), chosen by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    picks = []
    for c in clips["label"].unique().tolist():
        ix = torch.nonzero(clips["label"] == c).flatten()
        picks.append(ix[torch.randperm(len(ix), generator=g)[:k]])
    return _subset(clips, torch.cat(picks))


class _Loop(torch.utils.data.Dataset):
    """``steps`` batches per epoch of ``batch`` clips drawn from a small labelled set (every clip
    once before any repeats), a dict per batch: the same number of optimizer steps whatever K is."""

    def __init__(self, clips: dict, batch: int, steps: int, seed: int) -> None:
        self.clips, self.batch, self.steps, self.seed, self.epoch = clips, batch, steps, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, i: int) -> dict:
        if i >= len(self):
            raise IndexError(i)
        n = len(self.clips["label"])
        g = torch.Generator().manual_seed(hash((self.seed, self.epoch)) & 0x7FFF_FFFF)
        order = torch.cat([torch.randperm(n, generator=g) for _ in range(-(-self.batch * self.steps // n))])
        return _subset(self.clips, order[i * self.batch:(i + 1) * self.batch])


def _accuracy(model, clips: dict) -> float:
    model.eval()
    with torch.no_grad():
        correct = 0
        for i in range(0, len(clips["label"]), 64):
            video = model.normalize(clips["video"][i:i + 64])
            correct += int((model(video).argmax(1) == clips["label"][i:i + 64]).sum())
    return correct / len(clips["label"])


def _pretrain_split(per_class: int, size: int, frames: int, seed: int) -> tuple[dict, dict]:
    """(training, held-out) clips of the pretraining task: the embedded set's domains and classes."""
    from vidlit.data.synthetic import CLASSES, DOMAINS

    clips = _render(DOMAINS, per_class, frames, size, seed, CLASSES)
    held = torch.arange(len(clips["label"])) % per_class >= per_class * 3 // 4
    return _subset(clips, torch.nonzero(~held).flatten()), _subset(clips, torch.nonzero(held).flatten())


def _accuracy_of(ckpt: str, per_class: int, size: int, frames: int, seed: int = 0) -> float:
    """A pretraining checkpoint's accuracy on the pretraining task's held-out clips."""
    from vidlit.data.synthetic import CLASSES, DOMAINS
    from vidlit.models.strategy import STRATEGIES

    model = STRATEGIES.get("erm")(num_classes=len(CLASSES), num_domains=len(DOMAINS), seed=seed, pretrained=ckpt, pretrained_head=True)
    return _accuracy(model, _pretrain_split(per_class, size, frames, seed)[1])


def pretrain(out: str, per_class: int, epochs: int, size: int, frames: int, seed: int = 0) -> tuple[str, float]:
    """erm on the embedded set's four domains and five classes; returns (checkpoint path, its
    accuracy on held-out clips of the same task)."""
    import lightning.pytorch as pl

    from vidlit.data.fake import BalancedBatches, _SetEpoch
    from vidlit.data.synthetic import CLASSES, DOMAINS
    from vidlit.models.strategy import STRATEGIES

    train, test = _pretrain_split(per_class, size, frames, seed)
    pl.seed_everything(seed, verbose=False)
    model = STRATEGIES.get("erm")(num_classes=len(CLASSES), num_domains=len(DOMAINS), seed=seed)
    data = BalancedBatches(train, per_domain=8, seed=seed)
    trainer = _trainer(epochs, [_SetEpoch(data)])
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=None))
    path = os.path.join(out, "pretrained.ckpt")
    trainer.save_checkpoint(path, weights_only=False)  # as fit writes it (with the loops and callbacks)
    return path, _accuracy(model, test)


#: fine-tuning recipes from the pretrained checkpoint (``--recipes``): the model's and the
#: callback's flags each stands for
RECIPES = {
    "full": ({}, 0),  # --model.pretrained CKPT: every layer trains, backbone at 0.1 x lr
    "probe": ({"freeze": "backbone"}, 0),  # --model.freeze backbone: a linear probe
    "unfreeze3": ({}, 3),  # --finetune.unfreeze_at_epoch 3: the head alone for 3 epochs, then all
    "llrd0.5": ({"llrd": 0.5}, 0),  # --model.llrd 0.5: each stage down from the top at half the lr
}


def finetune(train: dict, test: dict, pretrained: Optional[str], epochs: int, steps: int, seed: int, num_domains: int,
             recipe: str = "full") -> float:
    """erm on the downstream clips, from scratch (``pretrained=None``) or from the checkpoint with
    one of :data:`RECIPES`."""
    import lightning.pytorch as pl

    from vidlit.data.fake import _SetEpoch
    from vidlit.data.synthetic import OTHER_CLASSES
    from vidlit.callbacks.finetune import GradualUnfreeze
    from vidlit.models.strategy import STRATEGIES

    model_args, unfreeze_at = RECIPES[recipe] if pretrained else ({}, 0)
    pl.seed_everything(seed, verbose=False)
    model = STRATEGIES.get("erm")(num_classes=len(OTHER_CLASSES), num_domains=num_domains, seed=seed, pretrained=pretrained,
                                  **model_args)
    data = _Loop(train, batch=min(16, len(train["label"])), steps=steps, seed=seed)
    callbacks = [_SetEpoch(data)] + ([GradualUnfreeze(unfreeze_at)] if unfreeze_at else [])
    _trainer(epochs, callbacks).fit(model, torch.utils.data.DataLoader(data, batch_size=None))
    return _accuracy(model, test)


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error (DomainBed's, as ``vidlit report``: std ddof=0 / sqrt(n); 0 for one seed)."""
    from vidlit.commands.report import mean_se as report_mean_se

    mean, se, _ = report_mean_se(values)
    return mean / 100, (se or 0.0) / 100


def chart(path: str, shots: Sequence[int], rows: dict, pretrain_acc: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    styles = ["o--", "s-", "^-", "v-", "D-"]
    for i, name in enumerate(rows):
        style = styles[i % len(styles)]
        m = [100 * rows[name][k][0] for k in shots]
        e = [100 * rows[name][k][1] for k in shots]
        ax.errorbar(shots, m, yerr=e, fmt=style, capsize=3, label=f"erm from {name}")
    ax.axhline(20, color="grey", lw=0.8, ls=":", label="chance (5 classes)")
    ax.set_xscale("log")
    ax.set_xticks(list(shots), [str(k) for k in shots])
    ax.set_xlabel("labelled clips per class (downstream task)")
    ax.set_ylabel("downstream test accuracy (%)")
    ax.set_title(f"Pretrained on the embedded set ({100 * pretrain_acc:.0f}% there) vs scratch", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vidlit bench transfer_curve", description=__doc__.split("\n\n")[0])
    p.add_argument("--shots", type=int, nargs="+", default=list(SHOTS), help="labelled clips per class of the downstream task")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the downstream runs (which clips, init, order)")
    p.add_argument("--pretrain_per_class", type=int, default=24, help="pretraining clips per (domain, class)")
    p.add_argument("--pretrain_epochs", type=int, default=15)
    p.add_argument("--epochs", type=int, default=10, help="downstream training epochs (the same for scratch and pretrained, every K)")
    p.add_argument("--steps_per_epoch", type=int, default=20, help="downstream batches per epoch (of up to 16 clips), whatever K is")
    p.add_argument("--test_per_class", type=int, default=10, help="downstream test clips per (domain, class)")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--recipes", nargs="+", default=["full"], choices=sorted(RECIPES),
                   help="fine-tuning recipes from the pretrained checkpoint: full (default), probe (--model.freeze backbone), "
                        "unfreeze3 (--finetune.unfreeze_at_epoch 3), llrd0.5 (--model.llrd 0.5)")
    p.add_argument("--pretrained", help="a checkpoint this benchmark wrote before (OUT/pretrained.ckpt): skip the pretraining")
    p.add_argument("--out", default="runs/transfer_curve", help="folder (default: runs/transfer_curve) for transfer_curve.png/.json and the pretrained checkpoint")
    p.add_argument("--quick", action="store_true", help="a tiny smoke run (1 seed, K=1, few epochs)")
    args = p.parse_args(argv)
    if args.quick:
        args.shots, args.seeds, args.pretrain_per_class, args.pretrain_epochs, args.epochs, args.test_per_class = [1], [0], 4, 1, 1, 2
        args.steps_per_epoch = 2
        args.size, args.frames = 16, 4
    from vidlit.data.synthetic import DOMAINS, OTHER_CLASSES

    os.makedirs(args.out, exist_ok=True)
    start = time.time()
    if args.pretrained:
        ckpt, pre_acc = args.pretrained, _accuracy_of(args.pretrained, args.pretrain_per_class, args.size, args.frames)
    else:
        ckpt, pre_acc = pretrain(args.out, args.pretrain_per_class, args.pretrain_epochs, args.size, args.frames)
    print(f"pretrained erm on the embedded set ({len(DOMAINS)} domains, 5 classes, {args.pretrain_per_class} clips per "
          f"domain and class, {args.pretrain_epochs} epochs): {100 * pre_acc:.1f}% on its held-out clips ({time.time() - start:.0f} s)", flush=True)
    # downstream pool (training candidates) and test clips: different generator seeds, so disjoint
    pool = _render(DOMAINS, max(args.shots), args.frames, args.size, 1000, OTHER_CLASSES)
    test = _render(DOMAINS, args.test_per_class, args.frames, args.size, 2000, OTHER_CLASSES)
    inits = [("scratch", None, "full")] + [("pretrained" if r == "full" else f"pretrained+{r}", ckpt, r) for r in args.recipes]
    raw: dict[str, dict[int, list[float]]] = {name: {} for name, _, _ in inits}
    for k in args.shots:
        for seed in args.seeds:
            train = _shots(pool, k, seed)
            for name, init, recipe in inits:
                acc = finetune(train, test, init, args.epochs, args.steps_per_epoch, seed, len(DOMAINS), recipe)
                raw[name].setdefault(k, []).append(acc)
            print(f"K={k:3d} seed {seed}: " + "  ".join(f"{name} {100 * raw[name][k][-1]:5.1f}%" for name in raw), flush=True)
    rows = {name: {k: mean_se(v) for k, v in per.items()} for name, per in raw.items()}
    print(f"\n# downstream task: {', '.join(OTHER_CLASSES)}; {len(test['label'])} test clips; mean ± s.e. over seeds {args.seeds}")
    others = [name for name in raw if name != "scratch"]
    print("| labelled clips per class | erm from scratch | " + " | ".join(f"erm from {n}" for n in others) + " | "
          + " | ".join(f"gain ({n})" if len(others) > 1 else "gain" for n in others) + " |")
    print("| --- " * (2 + 2 * len(others)) + "|")
    for k in args.shots:
        ms, es = rows["scratch"][k]
        cells = [f"{100 * rows[n][k][0]:.1f} ± {100 * rows[n][k][1]:.1f}" for n in others]
        gains = [f"{100 * (rows[n][k][0] - ms):+.1f}" for n in others]
        print(f"| {k} ({k * len(OTHER_CLASSES)} clips) | {100 * ms:.1f} ± {100 * es:.1f} | " + " | ".join(cells + gains) + " |")
    for n in others:
        for k in args.shots:
            ratio = rows[n][k][0] / max(rows["scratch"][k][0], 1e-9)
            print(f"RATIO transfer {n}/scratch accuracy K={k}: {ratio:.3f}")
    png = os.path.join(args.out, "transfer_curve.png")
    chart(png, args.shots, rows, pre_acc)
    with open(os.path.join(args.out, "transfer_curve.json"), "w") as fh:
        json.dump({"pretrain_acc": pre_acc, "shots": args.shots, "seeds": args.seeds, "raw": raw,
                   "settings": {k: v for k, v in vars(args).items() if k not in ("out",)}}, fh, indent=2)
    print(f"chart: {png} ({time.time() - start:.0f} s in all)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
