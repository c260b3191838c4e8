"""``fish``: Fish (Shi et al. 2022), gradient matching across domains by sequential inner steps."""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F

from vidlit.models.losses import functional_forward, inject_grad
from vidlit.models.strategy import Strategy, register_strategy
from vidlit.utils.errors import VidlitError


@register_strategy("fish")
class Fish(Strategy):
    """Fish: cross-domain gradient matching by sequential per-domain inner SGD steps.

    ``theta~`` starts at theta and takes one SGD step per domain d: ``theta~ -= inner_lr grad L_d(theta~)``.
    Fish then moves ``theta += eps (theta~ - theta)``; here the pseudo-gradient
    ``(theta - theta~) / (inner_lr K)`` (the mean of the inner gradients, whose first-order expansion
    adds the inter-domain gradient inner products Fish maximises) is handed to the strategy's
    optimizer, so ``eps`` is the optimizer's lr and its schedule, momentum and DDP averaging apply.
    Costs one forward and backward per clip, in K smaller batches. Logs ``inner_loss``.

    Args:
        inner_lr: inner SGD step size (default: ``lr``).
        **kwargs: the base :class:`~vidlit.models.strategy.Strategy` arguments.
    """

    SEARCH_SPACE = {"inner_lr": "loguniform:1e-3:0.1"}

    def __init__(self, inner_lr: Optional[float] = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if inner_lr is not None and inner_lr <= 0:
            raise VidlitError(f"--model.inner_lr must be > 0, got {inner_lr}")

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        video, label, domain = batch["video"], batch["label"], batch["domain"]
        h = self.hparams
        inner_lr = h.inner_lr if h.inner_lr is not None else h.lr
        params = {n: p for n, p in self.named_parameters() if p.requires_grad}
        names = list(params)
        fast = {n: p.detach() for n, p in params.items()}
        present = domain.unique()
        order = present[torch.randperm(len(present), generator=self.step_generator()).to(present.device)]
        losses = []
        for d in order:
            m = domain == d
            inner = {n: t.requires_grad_() for n, t in fast.items()}
            loss = F.cross_entropy(functional_forward(self, inner, video[m]), label[m], label_smoothing=h.label_smoothing)
            grads = torch.autograd.grad(loss, [inner[n] for n in names], allow_unused=True)
            fast = {n: (inner[n] - inner_lr * g if g is not None else inner[n]).detach() for n, g in zip(names, grads)}
            losses.append(loss.detach())
        pseudo = {n: (params[n].detach() - fast[n]) / (inner_lr * len(order)) for n in names}
        mean_loss = torch.stack(losses).mean()
        return mean_loss + inject_grad(params, pseudo), {"inner_loss": mean_loss}
