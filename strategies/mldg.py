"""``mldg``: meta-learning domain generalization (Li et al. 2018), the DG form of MAML.

Each step the batch's source domains are split into meta-train S and meta-test V; one inner SGD
step on S gives ``theta' = theta - inner_lr * grad L_S(theta)`` as *functional* parameters
(``torch.func.functional_call``; the network is never copied), and the loss is
``L_S(theta) + beta * L_V(theta')``.

- ``order second`` differentiates through theta' (the inner gradient is built with create_graph).
- ``order first`` treats grad L_S as a constant: ``grad = grad L_S(theta) + beta * grad L_V(theta')``.

In both, the meta-train gradient g, already computed for the inner step, enters the final backward
through a zero-valued surrogate ``sum((theta - theta.detach()) * g)`` instead of a second backward
through S: a first-order step costs one forward and one backward of every clip, like ERM; a
second-order step adds the double backward through S's gradient.

BatchNorm: functional_call swaps parameters only, so both the meta-train forward (at theta) and the
meta-test forward (at theta') update the module's own running statistics in place; every clip is
seen once per step, in two smaller batches. Batch statistics are per sub-batch, as in MLDG.
"""
from __future__ import annotations

from typing import Any, Callable, Literal, Optional

import torch
import torch.nn.functional as F

from vidlit.models.losses import functional_forward, inject_grad
from vidlit.models.strategy import Strategy, register_strategy
from vidlit.utils.errors import VidlitError

Params = dict[str, torch.Tensor]


def meta_objective(
    loss_s: torch.Tensor,
    params: Params,
    loss_v_fn: Callable[[Params], torch.Tensor],
    inner_lr: float,
    beta: float,
    order: Literal["first", "second"],
) -> tuple[torch.Tensor, torch.Tensor]:
    """MLDG objective ``L_S(theta) + beta * L_V(theta - inner_lr * grad L_S(theta))``.

    loss_s: the meta-train loss computed at ``params`` (with its graph); loss_v_fn: meta-test loss
    at given parameters. Returns (objective, L_V(theta')); ``objective.backward()`` gives the first-
    or second-order MLDG gradient in ``params``' ``.grad``.
    """
    names = list(params)
    second = order == "second"
    raw = torch.autograd.grad(loss_s, [params[n] for n in names], create_graph=second, allow_unused=True)
    grads = {n: g if g is not None else torch.zeros_like(params[n]) for n, g in zip(names, raw)}
    adapted = {n: params[n] - inner_lr * grads[n] for n in names}
    loss_v = loss_v_fn(adapted)
    # grad L_S(theta) is already in hand: inject it rather than backpropagating through S again
    return loss_s.detach() + inject_grad(params, grads) + beta * loss_v, loss_v


@register_strategy("mldg")
class MLDG(Strategy):
    """Meta-learning DG: inner SGD step on meta-train domains, loss at adapted weights on meta-test.

    Args:
        order: ``first`` (grad L_S + beta grad L_V at theta') or ``second`` (through the inner step).
        beta: weight of the meta-test loss.
        inner_lr: inner SGD step size (default: ``lr``).
        n_meta_test: source domains held out as meta-test each step (at most K - 1).
        **kwargs: the base :class:`~vidlit.models.strategy.Strategy` arguments.

    Works under DDP (both orders; every rank splits its own batch, gradients are averaged as usual)
    and with ``bf16-mixed`` (both orders). A batch holding a single domain falls back to plain CE.
    """

    SEARCH_SPACE = {"beta": "loguniform:0.1:10", "inner_lr": "loguniform:1e-3:0.1"}  # beta: DomainBed's 10^U(-1, 1)

    def __init__(
        self,
        order: Literal["first", "second"] = "first",
        beta: float = 1.0,
        inner_lr: Optional[float] = None,
        n_meta_test: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if order not in ("first", "second"):
            raise VidlitError(f"--model.order must be first or second, got '{order}'")
        if n_meta_test < 1:
            raise VidlitError(f"--model.n_meta_test must be >= 1, got {n_meta_test}")
        if self.hparams.num_domains < 2:
            raise VidlitError("mldg needs at least 2 source domains (meta-train and meta-test)")

    def split_domains(self, domain: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(B,) bool mask of the meta-test clips: ``n_meta_test`` random domains present in the batch."""
        present = domain.unique()
        n_test = min(self.hparams.n_meta_test, len(present) - 1)
        order = torch.randperm(len(present), generator=generator)
        test = present[order[:n_test].to(present.device)]
        return torch.isin(domain, test)

    def meta_loss(self, batch: dict, meta_test: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """MLDG loss for a given split; meta_test: (B,) bool mask."""
        video, label = batch["video"], batch["label"]
        ls = self.hparams.label_smoothing
        params = {n: p for n, p in self.named_parameters() if p.requires_grad}
        s, v = ~meta_test, meta_test
        loss_s = F.cross_entropy(self(video[s]), label[s], label_smoothing=ls)

        def loss_v_fn(adapted: Params) -> torch.Tensor:
            logits = functional_forward(self, adapted, video[v])
            return F.cross_entropy(logits, label[v], label_smoothing=ls)

        h = self.hparams
        inner_lr = h.inner_lr if h.inner_lr is not None else h.lr
        total, loss_v = meta_objective(loss_s, params, loss_v_fn, inner_lr, h.beta, h.order)
        return total, {"meta_train_loss": loss_s.detach(), "meta_test_loss": loss_v.detach()}

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        meta_test = self.split_domains(batch["domain"], self.step_generator())
        if not meta_test.any():
            return super().compute_loss(batch)
        return self.meta_loss(batch, meta_test)
