"""Saliency over space and time (Grad-CAM) for every registered backbone, and the
background-reliance score (foreground share).

Grad-CAM (Selvaraju et al. 2017) on a backbone stage with activations ``A_k``: weights
``w_k = mean over positions of d y_c / d A_k``, map ``ReLU(sum_k w_k A_k)``, upsampled to the input.
For 3D networks the positions (and the map) span (T, H, W); for image backbones run on frames
(TSN, TSM: time folded into the batch) each frame is an image of its own, so the weights are
averaged over (H, W) per frame and the map is per frame. The stage is the last of the backbone's
``stage_names`` whose output still has more than one position and that the class score depends on (SlowFast: both pathways, the maps added; MViT: the tokens
of its second-last block without the class token, as only the class token of the last block reaches
the head; Swin: channels-last outputs).
``y_c`` is the logit of the predicted class (or of a given class).

The **foreground share** of a clip is the saliency mass inside the moving object's mask divided
by the total mass (the map at input resolution, the mask of the same frames and crop, see
:mod:`vidlit.data.masks`). A model that classifies by the background has a low share.
:class:`ForegroundShare` computes it during ``test`` (so at the end of every ``fit``, on the best
checkpoint) for up to ``clips_per_domain`` clips of each target domain, and ``results.json`` gets
``foreground_share: {domain: mean over clips}`` (null for data without masks).

Gradients are computed in a context of their own (``torch.inference_mode(False)``,
``torch.enable_grad()``, autocast off, float32, on cloned inputs), so this works inside Lightning's
evaluation loops, which run under inference mode.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import nn

from vidlit.errors import VidlitError

#: stages (nearest the output, with positions) whose gradients are computed; the first that the
#: score depends on is used
CANDIDATE_STAGES = 2
#: networks whose stage outputs are channels-last (B, T, H, W, C)
CHANNELS_LAST_NETS = ("SwinTransformer3d",)


@dataclass
class Saliency:
    """Grad-CAM of a batch of clips.

    ``maps`` (B, T, H, W) float in [0, 1] at the input's resolution (each clip scaled to a maximum
    of 1; all zero when the class score has no positive evidence at the stage), ``logits``
    (B, K), ``target`` (B,) the class explained, ``stage`` the stage name.
    """

    maps: torch.Tensor
    logits: torch.Tensor
    target: torch.Tensor
    stage: str

    def frame_importance(self) -> torch.Tensor:
        """(B, T): each frame's share of the clip's saliency mass (rows sum to 1; 0 when empty)."""
        per = self.maps.sum(dim=(2, 3))
        return per / per.sum(1, keepdim=True).clamp_min(1e-12)

    def foreground_share(self, mask: torch.Tensor) -> torch.Tensor:
        """(B,): saliency mass inside ``mask`` (B, T, H, W) / total mass; NaN for an empty map."""
        return foreground_share(self.maps, mask)


def foreground_share(maps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) share of each map's mass inside the mask (same shape, nonzero = object); NaN where a
    map has no mass."""
    maps = maps.float()
    total = maps.sum(dim=(1, 2, 3))
    inside = (maps * (mask.to(maps.device) > 0).float()).sum(dim=(1, 2, 3))
    return torch.where(total > 0, inside / total.clamp_min(1e-12), torch.full_like(total, math.nan))


def _spatial(out: Any, batch: int, frames: int, channels_last: bool) -> Optional[list[tuple[torch.Tensor, Any, bool]]]:
    """A stage output as [(raw tensor, to_5d, per_frame)], ``to_5d`` mapping the raw tensor (or its
    gradient) to (B, C, t, h, w); None when it has no positions."""
    if isinstance(out, (tuple, list)):
        if len(out) == 2 and torch.is_tensor(out[0]) and not torch.is_tensor(out[1]) and len(out[1]) == 3:
            x, (t, h, w) = out[0], (int(v) for v in out[1])  # MViT block: (tokens, thw), class token first
            if x.dim() != 3 or x.shape[1] < t * h * w:
                return None
            n = t * h * w

            def tokens(y: torch.Tensor) -> torch.Tensor:
                return y[:, y.shape[1] - n :].reshape(y.shape[0], t, h, w, y.shape[-1]).permute(0, 4, 1, 2, 3)

            return [(x, tokens, False)]
        parts = [p for o in out if torch.is_tensor(o) for p in (_spatial(o, batch, frames, channels_last) or [])]
        return parts or None
    if not torch.is_tensor(out):
        return None
    if out.dim() == 4 and out.shape[0] == batch * frames:  # image backbone on frames: (B*T, C, h, w)
        return [(out, lambda y: y.reshape(batch, frames, *y.shape[1:]).permute(0, 2, 1, 3, 4), True)]
    if out.dim() == 5 and out.shape[0] == batch:
        return [(out, (lambda y: y.permute(0, 4, 1, 2, 3)) if channels_last else (lambda y: y), False)]
    return None


def _positions(parts: list[tuple[torch.Tensor, Any, bool]]) -> int:
    shapes = [(fn(raw).shape, per_frame) for raw, fn, per_frame in parts]
    return max(s[3] * s[4] * (1 if per_frame else s[2]) for s, per_frame in shapes)


def grad_cam(
    model: nn.Module, video: torch.Tensor, target: Optional[torch.Tensor] = None, stage: Optional[str] = None
) -> Saliency:
    """Grad-CAM of ``model`` (a vidlit Strategy, or any module with a ``backbone``
    (:class:`vidlit.backbones.Backbone`) whose ``model(video)`` gives logits) on normalised clips
    ``video`` (B, C, T, H, W). ``target``: the classes to explain (default: the predicted ones);
    ``stage``: one of the backbone's ``stage_names`` (default: the last with positions left)."""
    backbone = model.backbone
    names = list(backbone.stage_names)
    if stage is not None and stage not in names:
        raise VidlitError(f"--saliency.stage / --stage '{stage}': not a stage of this backbone; its stages: {', '.join(names)}")
    channels_last = type(backbone.net).__name__ in CHANNELS_LAST_NETS
    b, _, t, h, w = video.shape
    was_training = model.training
    model.eval()
    outputs: dict[str, Any] = {}
    hooks = [
        backbone.net.get_submodule(n).register_forward_hook(lambda _m, _i, out, _n=n: outputs.__setitem__(_n, out))
        for n in ([stage] if stage else names)
    ]
    try:
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(video.device.type, enabled=False):
            x = video.detach().clone().float().requires_grad_(True)
            logits = model(x).float()
            candidates: list[tuple[str, list]] = []  # the last stages with positions, output side first
            for n in reversed([stage] if stage else names):
                found = _spatial(outputs.get(n), b, t, channels_last)
                if found and (stage or _positions(found) > 1):
                    candidates.append((n, found))
                    if len(candidates) == CANDIDATE_STAGES:
                        break
            if not candidates:
                raise VidlitError(f"Grad-CAM: no stage of this backbone ({', '.join(names)}) gives a map over positions")
            cls = (logits.argmax(1) if target is None else target.to(logits.device).long()).clone()
            score = logits.gather(1, cls[:, None]).sum()
            flat = [raw for _, found in candidates for raw, _, _ in found]
            all_grads = list(torch.autograd.grad(score, flat, allow_unused=True))
            # the stage nearest the output whose activations the score depends on (MViT's last
            # block: only its class token reaches the head, so the block before it)
            chosen, parts, grads = candidates[0][0], candidates[0][1], all_grads[: len(candidates[0][1])]
            pos = 0
            for n, found in candidates:
                g = all_grads[pos : pos + len(found)]
                pos += len(found)
                if any(x is not None and bool(fn(x).abs().sum() > 0) for x, (_, fn, _) in zip(g, found)):
                    chosen, parts, grads = n, found, g
                    break
            total = torch.zeros(b, t, h, w, device=video.device)
            for (raw, to_5d, per_frame), g in zip(parts, grads):
                if g is None:
                    continue
                a, g = to_5d(raw.detach()).float(), to_5d(g).float()
                weights = g.mean(dim=(3, 4) if per_frame else (2, 3, 4), keepdim=True)
                cam = F.relu((weights * a).sum(1)).detach().float()  # (B, t', h', w')
                total += F.interpolate(cam[:, None], size=(t, h, w), mode="trilinear", align_corners=False)[:, 0]
    finally:
        for hk in hooks:
            hk.remove()
        model.train(was_training)
    peak = total.flatten(1).amax(1).clamp_min(1e-12).view(b, 1, 1, 1)
    maps = (total / peak).clamp(0, 1)
    return Saliency(maps=maps, logits=logits.detach(), target=cls.detach(), stage=str(chosen))


def explain_clips(module: nn.Module, clips: torch.Tensor, batch_size: int = 8, stage: Optional[str] = None,
                  target: Optional[torch.Tensor] = None) -> Saliency:
    """Grad-CAM of uint8 clips (N, C, T, H, W) (normalised by ``module.normalize``), ``batch_size``
    at a time on the module's device; results on the CPU."""
    device = next(module.parameters()).device
    parts: list[Saliency] = []
    for s in range(0, clips.shape[0], batch_size):
        video = module.normalize(clips[s : s + batch_size].to(device))
        tgt = None if target is None else target[s : s + batch_size]
        parts.append(grad_cam(module, video, tgt, stage))
    return Saliency(
        maps=torch.cat([p.maps.cpu() for p in parts]), logits=torch.cat([p.logits.cpu() for p in parts]),
        target=torch.cat([p.target.cpu() for p in parts]), stage=parts[0].stage if parts else "",
    )


def pick_per_domain(domain_ids: Sequence[int], labels: Sequence[int], k: int) -> dict[int, list[int]]:
    """Up to ``k`` item indices per domain, taking the classes in turn (first the first video of
    each class, then the second, ...), in dataset order: the same clips every run."""
    domain_ids, labels = np.asarray(domain_ids), np.asarray(labels)
    out: dict[int, list[int]] = {}
    for d in sorted(set(domain_ids.tolist())):
        by_class: dict[int, list[int]] = {}
        for i in np.flatnonzero(domain_ids == d):
            by_class.setdefault(int(labels[i]), []).append(int(i))
        picks: list[int] = []
        rank = 0
        while len(picks) < k and any(rank < len(v) for v in by_class.values()):
            picks += [v[rank] for _, v in sorted(by_class.items()) if rank < len(v)][: k - len(picks)]
            rank += 1
        out[d] = picks
    return out


class ForegroundShare(Callback):
    """At the end of ``test`` (so on the best checkpoint at the end of every ``fit``): Grad-CAM on
    up to ``clips_per_domain`` clips of each target domain (the test set, one view, the classes in
    turn) and, when the data has object masks (the embedded set has), the foreground share per
    domain: the mean over clips of saliency mass inside the object mask / total mass. Written to
    ``results.json`` as ``foreground_share`` (null without masks) and shown by ``vidlit report``.
    Always on the tested weights without test-time adaptation (``--tta.*`` is undone first, see
    :func:`vidlit.tta.finish_adaptation`): ``foreground_share_info.model`` is ``"unadapted"`` and
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

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.result = None

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dataset = getattr(getattr(trainer, "datamodule", None), "test_set", None)
        if not trainer.is_global_zero or self.clips_per_domain == 0 or dataset is None or not getattr(dataset, "masks", False):
            return
        from vidlit.tta import finish_adaptation

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
        # no timing in results.json: a rerun or a resume must give equal results


def foreground_line(share: dict[str, Optional[float]]) -> str:
    """The line ``fit`` and ``test`` print: ``foreground share (...): texture 6.5%``."""
    cells = ", ".join(f"{d} {'-' if v is None else f'{100 * v:.1f}%'}" for d, v in share.items())
    return f"foreground share (Grad-CAM mass inside the object mask): {cells}"


def saliency_results(trainer: pl.Trainer) -> dict[str, Any]:
    """``results.json`` entries from the trainer's :class:`ForegroundShare` callback
    (``foreground_share``: null when the data has no masks or the callback is off)."""
    for cb in trainer.callbacks:
        if isinstance(cb, ForegroundShare) and cb.result is not None:
            return dict(cb.result)
    return {"foreground_share": None}
