"""``mixup``: cross-domain mixing, of clips (inter-domain Mixup) or of feature statistics (MixStyle)."""
from __future__ import annotations

from typing import Any, Literal, Optional

import torch
import torch.nn.functional as F

from vidlit.models.losses import cross_domain_partners, sample_beta
from vidlit.models.mixstyle import MixStyleHooks, Pairing
from vidlit.models.strategy import Strategy, register_strategy
from vidlit.utils.errors import VidlitError


@register_strategy("mixup")
class Mixup(Strategy):
    """Inter-domain Mixup of clips with mixed labels, or MixStyle inside the backbone (``--model.mode``).

    ``mixup`` (DomainBed's Mixup, per clip): every clip is paired with a clip of another domain,
    ``x = lam x_i + (1 - lam) x_j`` over all frames with one ``lam ~ Beta(alpha, alpha)`` per clip,
    loss ``lam CE(y_i) + (1 - lam) CE(y_j)``.
    ``mixstyle``: plain CE, with MixStyle hooks after ``mixstyle_stages`` (see :mod:`vidlit.mixstyle`).

    Args:
        mode: ``mixup`` or ``mixstyle``.
        alpha: Beta(alpha, alpha) parameter (default 0.2 for mixup, 0.1 for mixstyle).
        mixstyle_p: probability of mixing at each hooked stage in a training step.
        mixstyle_stages: backbone stages followed by MixStyle (default: the 2nd and 3rd of
            ``stage_names``, i.e. after layer1 and layer2 of a ResNet).
        mix: MixStyle pairing, ``random`` or ``crossdomain``.
        mix_prob: (``mixup`` mode) probability that a clip is mixed at all; the others keep
            lam = 1 (their own clip and label), as timm's ``mixup_prob``.
        **kwargs: the base :class:`~vidlit.models.strategy.Strategy` arguments.
    """

    SEARCH_SPACE = {"alpha": "loguniform:0.1:10"}  # DomainBed: 10^U(-1, 1)

    def __init__(
        self,
        mode: Literal["mixup", "mixstyle"] = "mixup",
        alpha: Optional[float] = None,
        mixstyle_p: float = 0.5,
        mixstyle_stages: Optional[list[str]] = None,
        mix: Pairing = "random",
        mix_prob: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if mode not in ("mixup", "mixstyle"):
            raise VidlitError(f"--model.mode must be mixup or mixstyle, got '{mode}'")
        self.alpha = alpha if alpha is not None else (0.2 if mode == "mixup" else 0.1)
        if not 0 <= mix_prob <= 1:
            raise VidlitError(f"--model.mix_prob must be in [0, 1], got {mix_prob}")
        if self.alpha <= 0:
            raise VidlitError(f"--model.alpha must be > 0, got {self.alpha}")
        self.mixstyle = (
            MixStyleHooks(self.backbone, mixstyle_stages, mixstyle_p, self.alpha, mix) if mode == "mixstyle" else None
        )

    def draw_mix(self, domain: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Per clip: lam (B,) and the index of its partner from another domain (B,)."""
        partner = cross_domain_partners(domain, generator)
        lam = sample_beta(self.alpha, domain.shape[0], generator)
        if self.hparams.mix_prob < 1:
            lam = torch.where(torch.rand(lam.shape, generator=generator) < self.hparams.mix_prob, lam, torch.ones_like(lam))
        return lam.to(domain.device), partner

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        video, label, domain = batch["video"], batch["label"], batch["domain"]
        ls = self.hparams.label_smoothing
        g = self.step_generator()
        if self.mixstyle is not None:
            with self.mixstyle.context(g, domain):
                logits = self(video)
            return F.cross_entropy(logits, label, label_smoothing=ls), {}
        lam, partner = self.draw_mix(domain, g)
        w = lam.to(video.dtype).view(-1, *([1] * (video.dim() - 1)))
        mixed = w * video + (1 - w) * video[partner]
        logits = self(mixed)
        ce_own = F.cross_entropy(logits, label, reduction="none", label_smoothing=ls)
        ce_partner = F.cross_entropy(logits, label[partner], reduction="none", label_smoothing=ls)
        loss = (lam * ce_own + (1 - lam) * ce_partner).mean()
        return loss, {"mix_lambda": lam.mean()}
