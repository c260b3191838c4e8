"""In-memory multi-domain clips rendered by the embedded generator (no files, no decoding), for
tests and benchmarks that need learnable data with a real appearance shift between domains.

The clips are those of :mod:`vidlit.data.synthetic` (classes defined by motion, domains by
appearance), rendered straight into uint8 tensors and served as the DataModule serves them:
domain-balanced training batches of dicts ``video`` (B, C, T, H, W) uint8, ``label`` (B,),
``domain`` (B,).
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import lightning.pytorch as pl
import numpy as np
import torch

from vidlit.data.synthetic import CLASSES, _hsv, render_video


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


def fit_in_memory(
    strategy: str, seed: int = 0, epochs: int = 10, per_domain: int = 8, *, callbacks: Sequence[pl.Callback] = (),
    splits: Optional[tuple[dict, dict, Optional[dict]]] = None, **overrides,
) -> tuple[float, dict[str, float]]:
    """Train a registered strategy with its defaults (plus ``overrides`` of its arguments) through a
    Lightning Trainer on :func:`source_splits`; returns the source-domain validation accuracy
    after the last epoch and the last logged metrics. About 10 s on one CPU thread.

    ``callbacks``: more Trainer callbacks (e.g. :class:`vidlit.callbacks.bgmix.BackgroundMix`). ``splits``:
    (train, val, target) clips instead of :func:`source_splits` (e.g. :func:`shortcut_splits`); with
    a target split (all its clips in domain 0) the model is also tested on it, ``test/acc`` in the metrics."""
    from vidlit.models.strategy import STRATEGIES

    train, val, target = splits if splits is not None else (*source_splits(), None)
    n_domains = int(train["domain"].max()) + 1
    pl.seed_everything(seed, verbose=False)
    model = STRATEGIES.get(strategy)(num_classes=len(CLASSES), num_domains=n_domains, seed=seed, **overrides)
    train_set = BalancedBatches(train, per_domain, seed=seed)
    val_set = BalancedBatches(val, len(val["label"]) // n_domains, shuffle=False)  # the whole split, one batch
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=1,
        check_val_every_n_epoch=epochs, callbacks=[_SetEpoch(train_set), *callbacks],
    )
    loader = functools.partial(torch.utils.data.DataLoader, batch_size=None)
    trainer.fit(model, loader(train_set), loader(val_set))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if target is not None:
        trainer.test(model, loader(BalancedBatches(target, len(target["label"]), shuffle=False)), verbose=False)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
    return metrics["val/acc"], metrics


#: background hues of :func:`shortcut_clips`, one per class (the object stays brighter than any)
SHORTCUT_HUES = (0.0, 0.2, 0.4, 0.6, 0.8)


def shortcut_clips(
    n_domains: int, per_class: int, shift: int = 0, frames: int = 8, size: int = 32, seed: int = 0, classes: Sequence[str] = CLASSES,
) -> dict[str, torch.Tensor]:
    """Clips whose static background colour is a shortcut: the motion classes of
    :func:`render_clips` (a bright object on a flat background), with the background of every clip
    of class c painted in hue ``SHORTCUT_HUES[(c + shift) % K]``. Domain d (0 .. n_domains-1) has
    its own brightness of that colour and sensor noise. ``shift 0`` for source domains (the colour
    predicts the class), ``shift 1`` for a target where it points to the wrong class, while the
    motion still gives the right one. ``video`` (N, 3, T, S, S) uint8, ``label``, ``domain``."""
    k = len(classes)
    if k > len(SHORTCUT_HUES):
        raise ValueError(f"shortcut_clips has {len(SHORTCUT_HUES)} background hues, got {k} classes")
    videos, labels, doms = [], [], []
    for d in range(n_domains):
        value = 0.35 + 0.25 * d / max(1, n_domains - 1)  # domain d: darker or brighter backgrounds
        for c, cls in enumerate(classes):
            rng = np.random.default_rng([seed, 7, d, c, shift])
            colour = _hsv(SHORTCUT_HUES[(c + shift) % k], 0.9, value).astype(np.float32)
            for _ in range(per_class):
                clip, mask = render_video("clean", cls, rng, frames=2 * frames, size=size, with_mask=True)
                clip, mask = clip[::2].astype(np.float32), mask[::2, ..., None] > 0
                noise = rng.normal(0, 4.0 * d, clip.shape).astype(np.float32)
                clip = np.where(mask, clip, colour) + noise
                videos.append(torch.from_numpy(np.clip(clip, 0, 255).astype(np.uint8)).permute(3, 0, 1, 2))
                labels.append(c)
                doms.append(d)
    return {"video": torch.stack(videos), "label": torch.tensor(labels), "domain": torch.tensor(doms)}


@functools.lru_cache(maxsize=2)
def shortcut_splits(per_class: int = 12, n_domains: int = 3, size: int = 32, seed: int = 0) -> tuple[dict, dict, dict]:
    """(train, val, target) of :func:`shortcut_clips`: ``n_domains`` source domains (colour =
    class), 2/3 of ``per_class`` for training and 1/3 for validation, and a target domain of
    ``per_class`` clips per class whose colours are shifted by one class (all in domain 0)."""
    clips = shortcut_clips(n_domains, per_class, shift=0, size=size, seed=seed)
    train = torch.arange(len(clips["label"])) % per_class < per_class * 2 // 3
    target = shortcut_clips(1, per_class, shift=1, size=size, seed=seed + 1)
    return {k: v[train] for k, v in clips.items()}, {k: v[~train] for k, v in clips.items()}, target
