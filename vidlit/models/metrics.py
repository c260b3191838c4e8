"""Per-domain accuracy as a torchmetrics Metric (states are summed across DDP ranks)."""
from __future__ import annotations

import torch
from torchmetrics import Metric


class PerDomainAccuracy(Metric):
    """Top-1 accuracy of each domain. ``update(logits (B, C), labels (B,), domains (B,))``;
    ``compute() -> (num_domains,)`` fractions (NaN for a domain with no samples)."""

    full_state_update = False

    def __init__(self, num_domains: int) -> None:
        super().__init__()
        self.num_domains = num_domains
        self.add_state("correct", torch.zeros(num_domains, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(num_domains, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, labels: torch.Tensor, domains: torch.Tensor) -> None:
        hit = (logits.argmax(-1) == labels).double()
        self.correct += torch.bincount(domains, weights=hit, minlength=self.num_domains).round().long()
        self.total += torch.bincount(domains, minlength=self.num_domains)

    def compute(self) -> torch.Tensor:
        return self.correct.double() / self.total.double()
