"""Callbacks every ``python -m vidlit`` run gets (see :func:`default_callbacks`).

* :class:`EpochSeedCallback`: global RNGs re-seeded per batch and the sampler epoch checked after
  a resume, so a resumed run trains exactly like an uninterrupted one.
* :class:`WandbMediaCallback`: after testing, the target-domain confusion matrix and a few sample
  clips per domain (mp4, written with PyAV) with true and predicted labels, sent to W&B.
* :class:`vidlit.predictions.RunInfoCallback`: class names and domains stored in checkpoints.
* :class:`vidlit.predictions.PredictionWriter`: ``predict`` writes ``<run_dir>/predictions.csv``.
"""
from __future__ import annotations

import math
import os
import random
import re
from typing import Any, Optional

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from vidlit.data.video_io import write_video


def default_callbacks() -> list[Callback]:
    """The callbacks the CLI adds to every trainer."""
    from vidlit.predictions import PredictionWriter, RunInfoCallback
    from vidlit.tables import DomainResultsTable, VidlitModelSummary

    callbacks: list[Callback] = [EpochSeedCallback(), WandbMediaCallback(), RunInfoCallback(), PredictionWriter(),
                                 VidlitModelSummary(), DomainResultsTable()]
    if os.environ.get(FAULT_ENV):
        callbacks.append(FaultInjection())
    return callbacks


FAULT_ENV = "VIDLIT_FAULT"


def fault_point(name: str) -> None:
    """For crash-safety tests only: ``VIDLIT_FAULT=<name>`` kills this process (SIGKILL, as ``kill
    -9`` or a power loss would) when it reaches the point ``name``. Points: ``train_batch:E:B``
    (after training batch B of epoch E), ``validation_end:E`` (after epoch E's validation, before
    its checkpoints), ``test_start``, ``results_write`` (``results.json`` half written)."""
    if os.environ.get(FAULT_ENV) == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


class FaultInjection(Callback):
    """Calls :func:`fault_point` at the training, validation and test points it names."""

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        fault_point(f"train_batch:{trainer.current_epoch}:{batch_idx}")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            fault_point(f"validation_end:{trainer.current_epoch}")

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        fault_point("test_start")


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


class WandbMediaCallback(Callback):
    """At the end of testing (rank 0, only when a W&B logger is attached), logs:

    * ``test/confusion_matrix``: over the target domains (W&B's confusion-matrix chart);
    * ``samples/<domain>``: ``clips_per_domain`` clips of each source domain (validation split)
      and target domain (test set), each captioned with its true class and the model's prediction
      on that clip (one view, even when testing averages several). The mp4 files are kept in
      ``<run_dir>/samples/``.
    * ``saliency/<domain>``: the same clips with their Grad-CAM heat map (predicted class) overlaid
      (:mod:`vidlit.saliency`), kept as ``<run_dir>/samples/<role>/<domain>-NN-cam.mp4``; the
      caption adds the foreground share when the data has object masks.
    """

    def __init__(self, clips_per_domain: Optional[int] = None, fps: int = 4, min_size: int = 128) -> None:
        self.clips_per_domain, self.fps, self.min_size = clips_per_domain, fps, min_size
        self.saliency_clips: dict[str, list[tuple[str, str]]] = {}  # set by sample_clips

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from vidlit.loggers import wandb_loggers

        loggers = wandb_loggers(trainer)
        if not trainer.is_global_zero or not loggers:
            return
        import wandb

        dm = trainer.datamodule
        classes = [str(c) for c in getattr(dm, "class_names", [])]
        media: dict[str, Any] = {}
        cm = getattr(pl_module, "test_confusion_matrix", None)
        if cm is not None and classes:
            media["test/confusion_matrix"] = confusion_chart(cm, classes)
        k = self.clips_per_domain
        if k is None:
            k = getattr(getattr(loggers[0], "options", None), "clips_per_domain", 2)
        out = os.path.join(trainer.default_root_dir, "samples")
        for role, dataset in (("source", getattr(dm, "val_set", None)), ("target", getattr(dm, "test_set", None))):
            if dataset is None or k <= 0:
                continue
            for domain, clips in self.sample_clips(pl_module, dataset, k, classes, os.path.join(out, role)).items():
                media[f"samples/{domain}"] = [wandb.Video(path, caption=caption, format="mp4") for path, caption in clips]
            for domain, clips in self.saliency_clips.items():
                media[f"saliency/{domain}"] = [wandb.Video(path, caption=caption, format="mp4") for path, caption in clips]
        if media:
            for logger in loggers:
                logger.experiment.log(media)

    def sample_clips(
        self, module: pl.LightningModule, dataset: Any, k: int, classes: list[str], out_dir: str
    ) -> dict[str, list[tuple[str, str]]]:
        """``{domain: [(mp4 path, "true: A | pred: B"), ...]}``: per domain, the first clip of
        each of its first ``k`` classes (in dataset order, so the same clips every run)."""
        picks = _pick(np.asarray(dataset.domain_ids), np.asarray(dataset.labels), k)
        if not picks:
            return {}
        items = [dataset[int(i)] for i in picks]
        for it in items:  # a multi-view item (V, C, T, H, W): show and predict its first view
            if it["video"].dim() == 5:
                it["video"] = it["video"][0]
        video = torch.stack([it["video"] for it in items])
        was_training = module.training
        module.eval()
        with torch.no_grad():
            batch = module.on_after_batch_transfer({"video": video.to(module.device)}, 0)
            preds = module(batch["video"]).argmax(-1).cpu().tolist()
        module.train(was_training)
        from vidlit.explain import overlay
        from vidlit.saliency import explain_clips

        sal = explain_clips(module, video, batch_size=8)  # Grad-CAM of the predicted classes
        shares = sal.foreground_share(torch.stack([it["mask"] for it in items])).tolist() if "mask" in items[0] else None
        clips: dict[str, list[tuple[str, str]]] = {}
        self.saliency_clips: dict[str, list[tuple[str, str]]] = {}
        for j, (item, pred) in enumerate(zip(items, preds)):
            domain = str(dataset.domains[item["domain"]])
            path = os.path.join(out_dir, f"{_safe(domain)}-{len(clips.get(domain, [])):02d}.mp4")
            write_video(path, _display_frames(item["video"], self.min_size), fps=self.fps)
            name = lambda c: classes[c] if c < len(classes) else str(c)  # noqa: E731
            caption = f"true: {name(int(item['label']))} | pred: {name(int(pred))}"
            clips.setdefault(domain, []).append((path, caption))
            cam = overlay(item["video"].permute(1, 2, 3, 0).numpy(), sal.maps[j].numpy())
            cam_path = path[: -len(".mp4")] + "-cam.mp4"
            write_video(cam_path, _display_frames(torch.from_numpy(cam).permute(3, 0, 1, 2), self.min_size), fps=self.fps)
            if shares is not None and not math.isnan(shares[j]):
                caption += f" | foreground share: {100 * shares[j]:.0f}%"
            self.saliency_clips.setdefault(domain, []).append((cam_path, caption))
        return clips


def confusion_chart(matrix: torch.Tensor, classes: list[str], title: str = "Confusion matrix (target domains)") -> Any:
    """W&B's confusion-matrix chart from a (C, C) count matrix (rows: true, columns: predicted)."""
    import wandb

    counts = matrix.long().cpu().numpy()
    y_true = np.repeat(np.arange(len(classes)), counts.sum(1)).tolist()
    preds = [j for i in range(len(classes)) for j in range(len(classes)) for _ in range(int(counts[i, j]))]
    return wandb.plot.confusion_matrix(y_true=y_true, preds=preds, class_names=classes, title=title)


def _pick(domain_ids: np.ndarray, labels: np.ndarray, k: int) -> list[int]:
    picks: list[int] = []
    for d in sorted(set(domain_ids.tolist())):
        seen: set[int] = set()
        for i in np.flatnonzero(domain_ids == d):
            if labels[i] not in seen:
                seen.add(int(labels[i]))
                picks.append(int(i))
            if len(seen) == k:
                break
    return picks


def _display_frames(video: torch.Tensor, min_size: int) -> np.ndarray:
    """(C, T, H, W) uint8 clip -> (T, H', W', 3) frames, enlarged by an integer factor to at least
    ``min_size`` pixels and padded to even sides (yuv420p needs them)."""
    frames = video.permute(1, 2, 3, 0).cpu().numpy()
    factor = max(1, math.ceil(min_size / min(frames.shape[1:3])))
    frames = frames.repeat(factor, axis=1).repeat(factor, axis=2)
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return np.ascontiguousarray(frames)


def _safe(name: str) -> str:
    return re.sub(r"[^\w.=-]+", "_", name) or "domain"
