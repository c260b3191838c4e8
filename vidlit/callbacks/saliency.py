"""Foreground share: Grad-CAM mass inside the moving object's mask, per held-out domain, at the end of test."""
from __future__ import annotations

from typing import Any, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from vidlit.inference.gradcam import explain_clips, pick_per_domain
from vidlit.utils.errors import VidlitError


class ForegroundShare(Callback):
    """Foreground share: the share of Grad-CAM mass inside the moving object's mask, per target domain.

    At the end of ``test`` (so on the best checkpoint at the end of every ``fit``): Grad-CAM on
    up to ``clips_per_domain`` clips of each target domain (the test set, one view, the classes in
    turn) and, when the data has object masks (the embedded set has), the foreground share per
    domain: the mean over clips of saliency mass inside the object mask / total mass. Written to
    ``results.json`` as ``foreground_share`` (null without masks) and shown by ``vidlit report``.
    Always on the tested weights without test-time adaptation (``--tta.*`` is undone first, see
    :func:`vidlit.callbacks.tta.finish_adaptation`): ``foreground_share_info.model`` is ``"unadapted"`` and
    ``foreground_share_info.tta`` the method the test itself used.

    Args:
        clips_per_domain: clips explained per target domain (0 = off).
        batch_size: clips per Grad-CAM forward/backward pass.
        stage: backbone stage to attach to (default: the last stage with positions left).
    """

    def __init__(self, clips_per_domain: int = 16, batch_size: int = 8, stage: Optional[str] = None) -> None:
        if clips_per_domain < 0 or batch_size < 1:
            raise VidlitError("--saliency.clips_per_domain must be >= 0 and --saliency.batch_size >= 1")
        self.clips_per_domain, self.batch_size, self.stage = int(clips_per_domain), int(batch_size), stage
        self.result: Optional[dict[str, Any]] = None

    def results_entries(self, trainer: pl.Trainer, stage: str) -> dict[str, Any]:
        """``foreground_share`` for ``results.json`` and ``test_results.json`` (null without masks)."""
        return saliency_results(trainer) if stage in ("fit", "test") else {}

    def results_lines(self, results: dict) -> list[str]:
        if not results.get("foreground_share"):
            return []
        return [foreground_line(results["foreground_share"], (results.get("foreground_share_info") or {}).get("mask_area"))]

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.result = None

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dataset = getattr(getattr(trainer, "datamodule", None), "test_set", None)
        if not trainer.is_global_zero or self.clips_per_domain == 0 or dataset is None or not getattr(dataset, "masks", False):
            return
        from vidlit.callbacks.tta import finish_adaptation

        # the tested model without test-time adaptation, whatever the order of the callbacks: a
        # TestTimeAdaptation whose on_test_end has not run yet restores it now (Tent's hooks off,
        # the trained BatchNorm statistics instead of the last domain's AdaBN ones)
        tta = finish_adaptation(trainer, pl_module)
        picks = pick_per_domain(dataset.domain_ids, dataset.labels, self.clips_per_domain)
        share: dict[str, Optional[float]] = {}
        clips: dict[str, int] = {}
        area: dict[str, float] = {}
        stage = ""
        for d, idx in picks.items():
            items = [dataset[i] for i in idx]
            sal = explain_clips(pl_module, torch.stack([it["video"] for it in items]), self.batch_size, self.stage)
            masks = torch.stack([it["mask"] for it in items])
            values = sal.foreground_share(masks)
            ok = values[~values.isnan()]
            name = str(dataset.domains[d])
            area[name] = round(float(masks.float().mean()), 6)
            share[name] = round(float(ok.mean()), 6) if len(ok) else None
            clips[name], stage = int(len(ok)), sal.stage
        self.result = {
            "foreground_share": share,
            # mask_area: the object's share of the pixels, what a map spread evenly would score
            # model: Grad-CAM ran on the tested weights without test-time adaptation ("unadapted";
            # tta: the method the test's accuracies were adapted with, "none" without)
            "foreground_share_info": {"clips": clips, "mask_area": area, "stage": stage, "explained": "predicted class",
                                      "model": "unadapted", "tta": tta or "none"},
        }


def foreground_line(share: dict[str, Optional[float]], mask_area: Optional[dict[str, float]] = None) -> str:
    """The line ``fit`` and ``test`` print, with what a uniform map would score for reference: the
    object's share of the pixels (``mask_area``, about 3% on the embedded set), e.g.
    ``foreground share (...): texture 9.3% (2.8x uniform)``: the share / mask_area."""
    area = mask_area or {}

    def cell(d: str, v: Optional[float]) -> str:
        if v is None:
            return f"{d} -"
        a = area.get(d)
        return f"{d} {100 * v:.1f}%" + (f" ({v / a:.1f}x uniform)" if a else "")

    cells = ", ".join(cell(d, v) for d, v in share.items())
    areas = [a for d, a in area.items() if a and share.get(d) is not None]
    ref = f"; uniform: the object's area, {100 * min(areas):.1f}%" if areas else ""
    if areas and max(areas) - min(areas) >= 0.0005:
        ref += f"-{100 * max(areas):.1f}%"
    return f"foreground share (Grad-CAM mass inside the object mask{ref}): {cells}"


def saliency_results(trainer: pl.Trainer) -> dict[str, Any]:
    """``results.json`` entries from the trainer's :class:`ForegroundShare` callback
    (``foreground_share``: null when the data has no masks or the callback is off)."""
    for cb in trainer.callbacks:
        if isinstance(cb, ForegroundShare) and cb.result is not None:
            return dict(cb.result)
    return {"foreground_share": None}
