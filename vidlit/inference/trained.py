"""A vidlit checkpoint's network, ready to run on uint8 clips outside the training loop."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from vidlit.run.checkpoint import read_stamp
from vidlit.utils.errors import VidlitError


@dataclass
class Trained:
    """A checkpoint's network in eval mode and what is needed to feed it clips."""

    model: Any  # the Strategy (LightningModule), eval mode, on CPU
    strategy: str
    backbone: str
    class_names: list[str]
    num_frames: int
    frame_stride: int
    num_clips: int
    size: int
    short_video: str
    mean: list[float]  # per channel, frames scaled to [0, 1]
    std: list[float]
    checkpoint: str
    settings_source: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def clip_shape(self) -> tuple[int, int, int, int]:
        """(C, T, H, W) of one clip."""
        return (3, self.num_clips * self.num_frames, self.size, self.size)


class ClipClassifier(nn.Module):
    """uint8 clips ``(B, C, T, H, W)`` -> logits ``(B, num_classes)``: the checkpoint's backbone
    and head behind the normalisation of :meth:`vidlit.models.strategy.Strategy.normalize`."""

    def __init__(self, backbone: nn.Module, head: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head
        self.register_buffer("mean", mean.detach().clone().float().view(1, 3, 1, 1, 1))  # x 255 scale
        self.register_buffer("std", std.detach().clone().float().view(1, 3, 1, 1, 1))

    @classmethod
    def from_strategy(cls, model: Any) -> "ClipClassifier":
        return cls(model.backbone, model.head, model._mean, model._std).eval()

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        x = (video.float() - self.mean) / self.std
        return self.head(self.backbone(x))


def _state_names(state: dict) -> tuple[Optional[str], Optional[str]]:
    names = read_stamp(state)
    return names.get("strategy"), names.get("dataset")


def load_trained(ckpt: str) -> Trained:
    """The network of a vidlit checkpoint (any strategy; built without downloading anything:
    the checkpoint holds every weight) and its clip settings, read from the run's ``config.yaml``
    or the checkpoint's hyperparameters; class names from the checkpoint or the run's
    ``results.json``. Checkpoints are loaded with ``weights_only=True``."""
    from vidlit.models.backbones import BACKBONES, NORM_PRESETS
    from vidlit.models.strategy import STRATEGIES
    from vidlit.utils.registry import init_arg_names
    from vidlit.run.checkpoint import checkpoint_settings, load_checkpoint

    if not ckpt or not os.path.isfile(ckpt):
        raise VidlitError(f"--ckpt_path: no checkpoint file '{ckpt}'; pass a .ckpt file (e.g. RUN/checkpoints/best-epoch=008.ckpt)")
    state = load_checkpoint(ckpt)  # one line if it is not safe to load
    hp = state.get("hyper_parameters") if isinstance(state, dict) else None
    weights = state.get("state_dict") if isinstance(state, dict) else None
    if not isinstance(hp, dict) or not isinstance(weights, dict):
        raise VidlitError(f"--ckpt_path {ckpt}: not a vidlit training checkpoint (no hyper_parameters/state_dict); "
                          "pass a checkpoint written by `python -m vidlit fit`")
    settings, source = checkpoint_settings(ckpt)
    strategy = str(settings.get("strategy") or _state_names(state)[0] or "erm").lower()
    cls = STRATEGIES.get(strategy)
    kwargs = {k: v for k, v in hp.items() if k in init_arg_names(cls)}
    # every weight comes from the checkpoint: no pretrained download, no compile, no head file
    kwargs.update(pretrained=None, pretrained_head=False, compile=False, channels_last=False)
    try:
        model = cls(**kwargs)
    except TypeError as err:
        raise VidlitError(f"--ckpt_path {ckpt}: its hyperparameters do not build --strategy {strategy} ({err})") from None
    if "backbone.renorm" in weights:  # inflated ImageNet weights: the input conversion is a buffer of its own
        model.backbone.register_buffer("renorm", torch.zeros_like(weights["backbone.renorm"]))
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        first = next((ln.strip() for ln in str(err).splitlines()[1:] if ln.strip()), str(err).splitlines()[0])
        raise VidlitError(f"--ckpt_path {ckpt}: its weights do not fit {strategy}/{hp.get('backbone')} ({first[:160]})") from None
    model.eval()
    backbone = str(hp.get("backbone", "tiny3d"))
    spec = BACKBONES.get(backbone)
    data = dict(settings.get("data") or {})
    if not data:
        data = {k: v for k, v in (state.get("datamodule_hyper_parameters") or {}).items() if not str(k).startswith("_")}
    info = read_stamp(state)
    classes = [str(c) for c in (info.get("class_names") or [])]
    if not classes:
        from vidlit.data.records import DataError
        from vidlit.run.checkpoint import trained_run_info

        try:
            classes = trained_run_info(ckpt)["class_names"]
        except DataError:
            classes = [str(i) for i in range(int(hp.get("num_classes", 0)))]
    mean, std = NORM_PRESETS[spec.norm]
    return Trained(
        model=model, strategy=strategy, backbone=backbone, class_names=classes,
        num_frames=int(data.get("num_frames") or spec.num_frames), frame_stride=int(data.get("frame_stride") or 2),
        num_clips=int(data.get("num_clips") or 1), size=int(data.get("size") or spec.size),
        short_video=str(data.get("short_video") or "loop"), mean=[float(m) for m in mean], std=[float(s) for s in std],
        checkpoint=os.path.abspath(ckpt), settings_source=source,
    )


def example_clips(trained: Trained, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """Random uint8 clips of the exported shape (for tracing and checking)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, *trained.clip_shape), dtype=torch.uint8, generator=g)


def eager_logits(trained: Trained, clips: torch.Tensor) -> torch.Tensor:
    """What the checkpoint itself computes on uint8 clips: the strategy's normalisation and forward."""
    with torch.no_grad():
        return trained.model(trained.model.normalize(clips)).float()


def video_clip(path: str, num_frames: int, frame_stride: int, size: int, num_clips: int = 1, short_video: str = "loop",
               decode: Optional[Callable[[str, list[int]], np.ndarray]] = None) -> torch.Tensor:
    """One evaluation clip of a video file, ``(C, T, H, W)`` uint8, taken as ``test``/``predict``
    take it (one view): ``num_clips`` segments, from each ``num_frames`` frames ``frame_stride``
    apart, centred; the short side resized to ``size`` and the centre ``size x size`` cropped.
    ``decode(path, indices) -> (T, H, W, 3)``: the decoder (default: PyAV, seeking)."""
    from vidlit.data.clips import ClipTransform, clip_indices
    from vidlit.data.video_io import decode_frames, probe_video

    n = probe_video(path).num_frames
    idx = clip_indices(max(n, 1), num_frames, frame_stride, None, 0, short_video, num_clips, 0.5)
    frames = (decode or decode_frames)(path, idx.tolist())
    clip, _ = ClipTransform(size, train=False)(torch.from_numpy(frames).permute(0, 3, 1, 2), None)
    return clip.permute(1, 0, 2, 3).contiguous()
