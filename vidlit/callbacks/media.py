"""Callbacks every ``python -m vidlit`` run gets (see :func:`default_callbacks`).

* :class:`EpochSeedCallback`: global RNGs re-seeded per batch and the sampler epoch checked after
  a resume, so a resumed run trains exactly like an uninterrupted one.
* :class:`WandbMediaCallback`: after testing, the target-domain confusion matrix and a few sample
  clips per domain (mp4, written with PyAV) with true and predicted labels, sent to W&B.
* :class:`vidlit.callbacks.checkpoint.RunStampCallback`: strategy, dataset, class names and domains stored in checkpoints.
* :class:`vidlit.callbacks.predictions.PredictionWriter`: ``predict`` writes ``<run_dir>/predictions.csv``.
"""
from __future__ import annotations

import math
import os
import re
from typing import Any, Optional

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from vidlit.data.video_io import write_video


class WandbMediaCallback(Callback):
    """At the end of testing (rank 0, only when a W&B logger is attached), logs:

    * ``test/confusion_matrix``: over the target domains (W&B's confusion-matrix chart; the same
      counts, per domain too, are written to the run folder by
      :class:`vidlit.callbacks.confusion.PerClassResults`: ``confusion_test.csv``);
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
        from vidlit.callbacks.loggers import wandb_loggers

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
        from vidlit.inference.gradcam import explain_clips
        from vidlit.inference.render import overlay

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
