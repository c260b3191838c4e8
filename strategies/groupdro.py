"""``groupdro``: Group DRO (Sagawa et al. 2020) over source domains, as in DomainBed."""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from vidlit.models.strategy import Strategy, register_strategy


@register_strategy("groupdro")
class GroupDRO(Strategy):
    """Minimise a q-weighted sum of per-domain losses, q moving toward the worst domains.

    Each step: per-domain mean CE ``l_d`` (summed over every DDP rank, so q stays identical across
    ranks), ``q_d <- q_d exp(eta l_d)``, ``q <- q / sum q``, loss ``sum_d q_d l_d``. q is a buffer,
    saved in checkpoints. Logs ``q_max`` (the largest domain weight).

    Args:
        eta: step size of the q update (DomainBed: 1e-2).
        **kwargs: the base :class:`~vidlit.models.strategy.Strategy` arguments.
    """

    SEARCH_SPACE = {"eta": "loguniform:1e-3:0.1"}  # DomainBed: 10^U(-3, -1)

    def __init__(self, eta: float = 1e-2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        k = max(1, self.hparams.num_domains)
        self.register_buffer("q", torch.full((k,), 1.0 / k))

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        label, domain = batch["label"], batch["domain"]
        k = self.q.shape[0]
        ce = F.cross_entropy(self(batch["video"]), label, reduction="none", label_smoothing=self.hparams.label_smoothing)
        sums = torch.zeros(k, device=ce.device, dtype=ce.dtype).index_add(0, domain, ce)
        counts = torch.bincount(domain, minlength=k).to(ce.dtype)
        stats = torch.cat([sums.detach(), counts])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats)
        global_loss = stats[:k] / stats[k:].clamp_min(1)
        present = stats[k:] > 0
        with torch.no_grad():
            self.q.mul_(torch.where(present, (self.hparams.eta * global_loss).exp(), torch.ones_like(global_loss)))
            self.q.div_(self.q.sum())
        per_domain = sums / counts.clamp_min(1)
        loss = (self.q * per_domain).sum()
        return loss, {"q_max": self.q.max()}
