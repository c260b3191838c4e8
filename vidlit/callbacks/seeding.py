"""Per-epoch seeding so that a resumed run trains exactly like an uninterrupted one."""
from __future__ import annotations

import os
import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback


class EpochSeedCallback(Callback):
    """Makes a resumed run train exactly like an uninterrupted one.

    * Global RNGs (``torch``, ``numpy``, ``random``) are re-seeded from (seed, epoch, batch index,
      rank) before every training batch (and at every epoch start). Checkpoints do not hold RNG
      states, and loaders draw from the global generator at unpredictable times (a DataLoader
      draws its workers' base seed whenever an iterator is created), so seeding per batch is what
      makes dropout masks and any other global-RNG draw depend on the batch only.
    * The training iterator starts with the right sampler epoch after a resume. Lightning creates
      the first training iterator in ``FitLoop.setup_data`` before it calls ``set_epoch``, and on a
      restart it does not create another: with ``num_workers > 0`` the workers prefetch the first
      batches at creation, so the epoch after a resume replayed epoch 0's order and augmentation
      (the cause of the inexact resume of every strategy with workers; with ``num_workers 0`` the
      sampler starts lazily and the bug hid). Samplers that record the epoch their current pass
      started with (``iter_epoch``, as :class:`vidlit.data.sampler.DomainBalancedBatchSampler`
      does) are checked at ``on_train_start`` and the iterator is recreated when it is stale.
    """

    @staticmethod
    def _seed(pl_module: pl.LightningModule, *key: int) -> int:
        base = getattr(getattr(pl_module, "hparams", {}), "seed", None)
        if base is None:
            base = int(os.environ.get("PL_GLOBAL_SEED", 0))
        return int(np.random.SeedSequence([int(base), *[int(k) for k in key]]).generate_state(1)[0])

    def _reseed(self, seed: int) -> None:
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        loop = trainer.fit_loop
        combined = getattr(loop, "_combined_loader", None)
        fetcher = getattr(loop, "_data_fetcher", None)
        if combined is None or fetcher is None:
            return
        stale = False
        for dl in combined.flattened:
            sampler = getattr(dl, "batch_sampler", None)
            if sampler is not None and hasattr(sampler, "iter_epoch") and sampler.iter_epoch != epoch:
                sampler.set_epoch(epoch)
                stale = True
        if stale:
            iter(fetcher)  # a new pass with the epoch now set (prefetched stale batches are dropped)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reseed(self._seed(pl_module, trainer.current_epoch, trainer.global_rank))

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._reseed(self._seed(pl_module, trainer.current_epoch, batch_idx, trainer.global_rank, 1))
