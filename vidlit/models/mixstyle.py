"""MixStyle (Zhou et al. 2021) for video, as forward hooks on any registered backbone.

After each chosen stage (``Backbone.stage_names``), with probability ``p`` per forward, every clip's
per-channel feature statistics (mean, std; detached) are replaced by a mix with another clip's:
``out = sigma_mix * (x - mu) / sigma + mu_mix``, ``mu_mix = lam mu + (1 - lam) mu[partner]``,
``lam ~ Beta(alpha, alpha)`` per clip. Statistics are taken over

- (T, H, W) for 5-D features (B, C, T, H, W) (3D CNNs), or (B, T, H, W, C) for channels-last
  stages (Swin: any stage that contains a LayerNorm keeps channels last);
- (H, W) for 4-D per-frame features (B*T, C, H, W) of TSN/TSM, with one partner and one lambda per
  clip shared by its T frames;
- N for token features (B, N, C) (MViT blocks).

Tuple or list outputs (SlowFast's pathways, MViT's (tokens, thw)) have every feature tensor mixed,
with the same partners and lambdas.

The hooks act only while the stage is in training mode and inside :meth:`MixStyleHooks.context`,
which supplies the step's generator (and the domains, for ``crossdomain`` pairing).
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Literal, Optional, Sequence

import torch
from torch import nn

from vidlit.models.backbones import Backbone
from vidlit.models.losses import cross_domain_partners, random_partners, sample_beta
from vidlit.utils.errors import VidlitError

Pairing = Literal["random", "crossdomain"]


def mix_statistics(x: torch.Tensor, lam: torch.Tensor, partner: torch.Tensor, dims: Sequence[int], eps: float = 1e-6) -> torch.Tensor:
    """MixStyle on ``x`` (B, ...) with statistics over ``dims``. lam: (B,) weights of each clip's own
    statistics; partner: (B,) index of the clip whose statistics are mixed in. Computed in float32,
    returned in ``x.dtype``."""
    xf = x.float()
    var, mu = torch.var_mean(xf.detach(), dim=tuple(dims), keepdim=True)
    sig = (var + eps).sqrt()
    lam = lam.to(xf.device, xf.dtype).view(-1, *([1] * (x.dim() - 1)))
    mu_mix = lam * mu + (1 - lam) * mu[partner]
    sig_mix = lam * sig + (1 - lam) * sig[partner]
    scale = sig_mix / sig  # (x - mu) / sig * sig_mix + mu_mix as one multiply-add over x
    return torch.addcmul(mu_mix - mu * scale, xf, scale).to(x.dtype)


class MixStyleHooks:
    """Forward hooks applying MixStyle after the named stages of ``backbone``.

    Args:
        backbone: a registered :class:`~vidlit.models.backbones.Backbone`.
        stages: names from ``backbone.stage_names`` (default: the 2nd and 3rd stage, i.e. after
            ResNet's layer1 and layer2, as in the paper).
        p: probability of mixing at each hooked stage in each training forward.
        alpha: Beta(alpha, alpha) parameter of the mixing weight.
        pairing: ``random`` (a permutation of the batch) or ``crossdomain`` (partners from other domains).
    """

    def __init__(
        self, backbone: Backbone, stages: Optional[Sequence[str]] = None, p: float = 0.5, alpha: float = 0.1,
        pairing: Pairing = "random", eps: float = 1e-6,
    ) -> None:
        names = list(stages) if stages else backbone.stage_names[1:3]
        unknown = [n for n in names if n not in backbone.stage_names]
        if unknown or not names:
            raise VidlitError(f"--model.mixstyle_stages {names}: choose among the backbone's stages {backbone.stage_names}")
        if pairing not in ("random", "crossdomain"):
            raise VidlitError(f"--model.mix must be random or crossdomain, got '{pairing}'")
        self.stages, self.p, self.alpha, self.pairing, self.eps = names, float(p), float(alpha), pairing, eps
        self._generator: Optional[torch.Generator] = None
        self._domain: Optional[torch.Tensor] = None
        self._clips = 0
        self._handles = [backbone.register_forward_pre_hook(self._record_batch)]
        for name in names:
            stage = backbone.net.get_submodule(name)
            channels_last = any(isinstance(m, nn.LayerNorm) for m in stage.modules())
            self._handles.append(stage.register_forward_hook(_StageHook(self, channels_last)))

    @contextlib.contextmanager
    def context(self, generator: torch.Generator, domain: Optional[torch.Tensor] = None) -> Iterator[None]:
        """Enable mixing for the forwards inside, drawing from ``generator``; domain: (B,)."""
        self._generator, self._domain = generator, domain
        try:
            yield
        finally:
            self._generator, self._domain = None, None

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    # ----------------------------------------------------------------- hooks
    def _record_batch(self, module: nn.Module, inputs: tuple) -> None:
        self._clips = inputs[0].shape[0]  # B of the (B, C, T, H, W) clip batch

    def _draw(self, device: torch.device) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """Whether to mix at this stage now, and if so (lam (B,), partner (B,))."""
        g = self._generator
        if float(torch.rand((), generator=g)) >= self.p or self._clips < 2:
            return None
        if self.pairing == "crossdomain" and self._domain is not None:
            partner = cross_domain_partners(self._domain, g).to(device)
        else:
            partner = random_partners(self._clips, g, device)
        return sample_beta(self.alpha, self._clips, g), partner

    def _apply(self, x: torch.Tensor, lam: torch.Tensor, partner: torch.Tensor, channels_last: bool) -> torch.Tensor:
        b = self._clips
        if x.dim() == 5:
            return mix_statistics(x, lam, partner, (1, 2, 3) if channels_last else (2, 3, 4), self.eps)
        if x.dim() == 4 and x.shape[0] == b:  # (B, C, H, W)
            return mix_statistics(x, lam, partner, (1, 2) if channels_last else (2, 3), self.eps)
        if x.dim() == 4 and x.shape[0] % b == 0:  # per-frame (B*T, C, H, W): clip-level pairing
            clips = x.view(b, x.shape[0] // b, *x.shape[1:])
            dims = (2, 3) if channels_last else (3, 4)
            return mix_statistics(clips, lam, partner, dims, self.eps).view_as(x)
        if x.dim() == 3 and x.shape[0] == b:  # tokens (B, N, C)
            return mix_statistics(x, lam, partner, (1,), self.eps)
        raise ValueError(f"MixStyle: cannot mix a stage output of shape {tuple(x.shape)} for a batch of {b} clips")

    def mix_output(self, output, channels_last: bool):
        """A stage's output with MixStyle applied (or unchanged); a tuple/list output (SlowFast
        pathways, MViT's (tokens, thw)) has each of its feature tensors mixed with the same pairs."""
        parts = list(output) if isinstance(output, (tuple, list)) else [output]
        first = next((t for t in parts if isinstance(t, torch.Tensor) and t.dim() >= 3), None)
        drawn = self._draw(first.device) if first is not None else None
        if drawn is None:
            return None
        lam, partner = drawn
        mixed = [self._apply(t, lam, partner, channels_last) if isinstance(t, torch.Tensor) and t.dim() >= 3 else t for t in parts]
        return type(output)(mixed) if isinstance(output, (tuple, list)) else mixed[0]

class _StageHook:
    """The forward hook of one stage (a class rather than a closure, so that the model pickles)."""

    def __init__(self, owner: MixStyleHooks, channels_last: bool) -> None:
        self.owner, self.channels_last = owner, channels_last

    def __call__(self, module: nn.Module, inputs: tuple, output):
        o = self.owner
        if not module.training or o._generator is None or o.p <= 0:
            return None
        return o.mix_output(output, self.channels_last)
