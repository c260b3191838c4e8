"""In-memory multi-domain clips rendered by the embedded generator (no files, no decoding), for
tests and benchmarks that need learnable data with a real appearance shift between domains.

The clips are those of :mod:`vidlit.data.synthetic` (classes defined by motion, domains by
appearance), rendered straight into uint8 tensors and served as the DataModule serves them:
domain-balanced training batches of dicts ``video`` (B, C, T, H, W) uint8, ``label`` (B,),
``domain`` (B,).
"""
from __future__ import annotations

import functools
from typing import Sequence

import lightning.pytorch as pl
import numpy as np
import torch

from vidlit.data.synthetic import CLASSES, render_video


def render_clips(
    domains: Sequence[str], per_class: int, frames: int = 8, size: int = 32, seed: int = 0, classes: Sequence[str] = CLASSES
) -> dict[str, torch.Tensor]:
    """``per_class`` clips of every (domain, class): ``video`` (N, 3, T, S, S) uint8, ``label`` (N,),
    ``domain`` (N,) (index into ``domains``); deterministic from ``seed``."""
    videos, labels, doms = [], [], []
    for d, domain in enumerate(domains):
        for c, cls in enumerate(classes):
            rng = np.random.default_rng([seed, d, c])
            for _ in range(per_class):
                videos.append(torch.from_numpy(render_video(domain, cls, rng, frames=frames, size=size)).permute(3, 0, 1, 2))
                labels.append(c)
                doms.append(d)
    return {"video": torch.stack(videos), "label": torch.tensor(labels), "domain": torch.tensor(doms)}


class BalancedBatches(torch.utils.data.Dataset):
    """Epoch-shuffled batches holding ``per_domain`` clips of every domain (as the DataModule's
    domain-balanced sampler gives them); use with ``DataLoader(..., batch_size=None)``.
    ``shuffle=False`` gives fixed, ordered batches (for validation)."""

    def __init__(self, clips: dict[str, torch.Tensor], per_domain: int, shuffle: bool = True, seed: int = 0) -> None:
        self.clips, self.per_domain, self.shuffle, self.seed = clips, per_domain, shuffle, seed
        self.by_domain = [torch.nonzero(clips["domain"] == d).flatten() for d in clips["domain"].unique().tolist()]
        self.epoch = 0

    def __len__(self) -> int:
        return min(len(ix) for ix in self.by_domain) // self.per_domain

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if i >= len(self):
            raise IndexError(i)
        picks = []
        for d, ix in enumerate(self.by_domain):
            if self.shuffle:
                g = torch.Generator().manual_seed(hash((self.seed, self.epoch, d)) & 0x7FFF_FFFF)
                ix = ix[torch.randperm(len(ix), generator=g)]
            picks.append(ix[i * self.per_domain : (i + 1) * self.per_domain])
        sel = torch.cat(picks)
        return {k: v[sel] for k, v in self.clips.items()}


SOURCES = ("clean", "colour", "shaky")


@functools.lru_cache(maxsize=4)
def source_splits(per_class: int = 24, size: int = 32, seed: int = 0) -> tuple[dict, dict]:
    """Train and validation clips of the three source domains: per (domain, class) 2/3 of
    ``per_class`` for training and 1/3 for validation; 8 frames at stride 2 of a 16-frame clip,
    as the demo samples them."""
    clips = render_clips(SOURCES, per_class=per_class, frames=16, size=size, seed=seed)
    clips["video"] = clips["video"][:, :, ::2].contiguous()
    train = torch.arange(len(clips["label"])) % per_class < per_class * 2 // 3
    return {k: v[train] for k, v in clips.items()}, {k: v[~train] for k, v in clips.items()}


class _SetEpoch(pl.Callback):
    """Reshuffles :class:`BalancedBatches` every epoch, as the DataModule's sampler does."""

    def __init__(self, data: BalancedBatches) -> None:
        self.data = data

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.data.set_epoch(trainer.current_epoch)


def fit_in_memory(strategy: str, seed: int = 0, epochs: int = 10, per_domain: int = 8, **overrides) -> tuple[float, dict[str, float]]:
    """Train a registered strategy with its defaults (plus ``overrides`` of its arguments) through a
    Lightning Trainer on :func:`source_splits`; returns the source-domain validation accuracy
    after the last epoch and the last logged metrics. About 10 s on one CPU thread."""
    from vidlit.strategy import STRATEGIES

    train, val = source_splits()
    pl.seed_everything(seed, verbose=False)
    model = STRATEGIES.get(strategy)(num_classes=len(CLASSES), num_domains=len(SOURCES), seed=seed, **overrides)
    train_set = BalancedBatches(train, per_domain, seed=seed)
    val_set = BalancedBatches(val, len(val["label"]) // len(SOURCES), shuffle=False)  # the whole split, one batch
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=1,
        check_val_every_n_epoch=epochs, callbacks=[_SetEpoch(train_set)],
    )
    loader = functools.partial(torch.utils.data.DataLoader, batch_size=None)
    trainer.fit(model, loader(train_set), loader(val_set))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    return metrics["val/acc"], metrics
