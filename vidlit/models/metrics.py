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


class PerDomainConfusion(Metric):
    """Confusion matrix of each domain, rows true class, columns predicted class.
    ``update(logits (B, C), labels (B,), domains (B,))`` counts on the device (no host sync);
    ``compute() -> (num_domains, num_classes, num_classes)`` long counts of the videos seen.
    Per-class accuracy and class-mean (balanced) accuracy follow from it (:func:`class_mean_accuracy`).

    Under DDP the counts of the ranks are gathered at ``compute`` (:func:`merge_rank_counts`): vidlit's
    validation and test loaders are not sharded (every rank evaluates every video), so identical
    counts on every rank are one copy, not a sum; counts that differ (sharded loaders) are summed."""

    full_state_update = False

    def __init__(self, num_domains: int, num_classes: int) -> None:
        super().__init__()
        self.num_domains, self.num_classes = num_domains, num_classes
        self.add_state("counts", torch.zeros(num_domains, num_classes, num_classes, dtype=torch.long),
                       dist_reduce_fx=merge_rank_counts)

    def update(self, logits: torch.Tensor, labels: torch.Tensor, domains: torch.Tensor) -> None:
        k = self.num_classes
        cell = (domains.long() * k + labels.long()) * k + logits.argmax(-1).long()
        self.counts += torch.bincount(cell, minlength=self.num_domains * k * k).view(self.num_domains, k, k)

    def compute(self) -> torch.Tensor:
        return self.counts.clone()


def merge_rank_counts(gathered: torch.Tensor) -> torch.Tensor:
    """(world, ...) counts gathered from the DDP ranks -> (...): one copy when every rank holds the
    same counts (each evaluated every video), else their sum (each evaluated its own shard)."""
    if gathered.dim() == 0 or gathered.shape[0] == 1 or bool((gathered == gathered[:1]).all()):
        return gathered[0] if gathered.dim() > 0 else gathered
    return gathered.sum(0)


def per_class_accuracy(confusion: torch.Tensor) -> torch.Tensor:
    """(..., C, C) counts -> (..., C) recall of each true class (NaN for a class with no videos)."""
    c = confusion.double()
    return c.diagonal(dim1=-2, dim2=-1) / c.sum(-1)


def class_mean_accuracy(confusion: torch.Tensor) -> torch.Tensor:
    """(..., C, C) counts -> (...) class-mean (balanced) accuracy: the mean of the per-class
    accuracies over the classes that have videos (NaN when none has)."""
    return per_class_accuracy(confusion).nanmean(-1)
