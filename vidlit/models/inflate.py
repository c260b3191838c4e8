"""ImageNet to video: inflate a 2D ResNet's weights into torchvision's 3D ResNets (I3D).

Carreira and Zisserman (2017): a 2D kernel ``(k, k)`` becomes ``(t, k, k)`` by repeating it ``t``
times along time and dividing by ``t``; a clip of identical frames ("boring video") then gives the
2D network's activations (away from the temporal zero padding at the clip's first and last frames).
``t`` is read from each 3D convolution, so ``r3d_18`` (3D everywhere) and ``mc3_18`` (3D stem and
layer1, ``t = 1`` in layer2-4) are handled alike. BatchNorm parameters and statistics are copied.

torchvision's video ResNets have no max pool after the stem (the 2D ResNet has one): the inflated
network keeps its own architecture; only the kernels come from ImageNet.
"""
from __future__ import annotations

import re

import torch
from torch import nn


def video_to_image_key(key: str) -> str:
    """Name in torchvision's 2D ResNet of a VideoResNet state-dict key (``stem.0`` -> ``conv1``,
    ``layerI.J.conv1.0`` -> ``layerI.J.conv1``, ``layerI.J.conv1.1`` -> ``layerI.J.bn1``, ...)."""
    key = re.sub(r"^stem\.0\.", "conv1.", key)
    key = re.sub(r"^stem\.1\.", "bn1.", key)
    key = re.sub(r"^(layer\d+\.\d+)\.conv(\d)\.0\.", r"\1.conv\2.", key)
    key = re.sub(r"^(layer\d+\.\d+)\.conv(\d)\.1\.", r"\1.bn\2.", key)
    return key


def inflate_kernel(w2d: torch.Tensor, t: int) -> torch.Tensor:
    """``(O, I, k, k)`` -> ``(O, I, t, k, k)``: repeated ``t`` times along time, divided by ``t``."""
    return w2d.unsqueeze(2).repeat(1, 1, t, 1, 1) / t


def inflate_state_dict(net3d: nn.Module, state2d: dict[str, torch.Tensor], skip_prefixes=("fc.",)) -> dict[str, torch.Tensor]:
    """A state dict for ``net3d`` (a torchvision VideoResNet) built from a 2D ResNet's ``state2d``.

    Raises ``KeyError`` naming the first 3D tensor (outside ``skip_prefixes``) with no 2D
    counterpart of a compatible shape.
    """
    out: dict[str, torch.Tensor] = {}
    for key, target in net3d.state_dict().items():
        if any(key.startswith(p) for p in skip_prefixes):
            continue
        src_key = video_to_image_key(key)
        if src_key not in state2d:
            raise KeyError(f"{key} (2D name {src_key})")
        src = state2d[src_key]
        if target.dim() == 5 and src.dim() == 4:
            t = target.shape[2]
            src = inflate_kernel(src, t)
        if tuple(src.shape) != tuple(target.shape):
            raise KeyError(f"{key}: 2D {src_key} {tuple(state2d[src_key].shape)} does not inflate to {tuple(target.shape)}")
        out[key] = src.to(target.dtype).clone()
    return out
