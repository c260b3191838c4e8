"""Building blocks shared by the DG strategies: gradient reversal, its lambda schedules, the CORAL
penalty, and the seeded random draws used for mixing (Beta samples, cross-domain partners).

Every random draw takes a ``torch.Generator`` (in a training step: ``Strategy.step_generator()``),
so a resumed run draws the same numbers as an uninterrupted one.
"""
from __future__ import annotations

import math
from typing import Literal, Optional

import numpy as np
import torch
from torch.func import functional_call
from vidlit.utils.errors import VidlitError

Schedule = Literal["constant", "ganin", "warmstart"]


# --------------------------------------------------------------------------- gradient reversal
class GradReverse(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by ``-lambd``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lambd: float) -> torch.Tensor:  # type: ignore[override]
        ctx.lambd = float(lambd)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad * -ctx.lambd, None


def grad_reverse(x: torch.Tensor, lambd: float) -> torch.Tensor:
    """Gradient reversal layer: returns ``x``; the gradient flowing back into ``x`` is ``-lambd * grad``."""
    return GradReverse.apply(x, lambd)


def grl_lambda(
    schedule: Schedule,
    step: int,
    total_steps: int,
    value: float = 1.0,
    gamma: float = 10.0,
    lo: float = 0.0,
    alpha: float = 1.0,
    max_iters: int = 1000,
) -> float:
    """The gradient-reversal coefficient at optimizer step ``step`` of ``total_steps``.

    - ``constant``: ``value`` (DomainBed).
    - ``ganin``: ``value * (2 / (1 + exp(-gamma * p)) - 1)`` with progress ``p = step / total_steps``
      in [0, 1] (Ganin & Lempitsky 2015, gamma = 10).
    - ``warmstart``: ``2 (hi - lo) / (1 + exp(-alpha * step / max_iters)) - (hi - lo) + lo`` with
      ``hi = value`` (TLlib's WarmStartGradientReverseLayer; a fixed horizon ``max_iters``).
    """
    if schedule == "constant":
        return float(value)
    if schedule == "ganin":
        p = min(1.0, max(0.0, step / max(1, total_steps)))
        return float(value * (2.0 / (1.0 + math.exp(-gamma * p)) - 1.0))
    if schedule == "warmstart":
        span = value - lo
        return float(2.0 * span / (1.0 + math.exp(-alpha * step / max(1, max_iters))) - span + lo)
    raise VidlitError(f"--model.lambda_schedule must be constant, ganin or warmstart, got '{schedule}'")


# --------------------------------------------------------------------------- CORAL
def _moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) -> mean (D,), unbiased covariance (D, D)."""
    mean = x.mean(0)
    cent = x - mean
    return mean, cent.T @ cent / (x.shape[0] - 1)


def coral_penalty(feats: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
    """Mean over pairs of domains (a, b) of ``mean((mu_a - mu_b)^2) + mean((Cov_a - Cov_b)^2)``.

    feats: (B, D) features; domain: (B,) domain index. Domains with fewer than 2 clips in the batch
    are skipped (no covariance). Computed in float32 outside autocast, in O(K D^2) rather than over
    K^2 pairs, using ``sum_{a<b} |x_a - x_b|^2 = K sum_a |x_a - mean_a x_a|^2``.
    """
    with torch.autocast(device_type=feats.device.type, enabled=False):
        x = feats.float()
        groups = [x[domain == d] for d in domain.unique()]
        groups = [g for g in groups if g.shape[0] >= 2]
        k = len(groups)
        if k < 2:
            return x.sum() * 0.0
        means, covs = zip(*(_moments(g) for g in groups))
        m, c = torch.stack(means), torch.stack(covs)  # (K, D), (K, D, D)

        def pair_sq_sum(a: torch.Tensor) -> torch.Tensor:
            flat = a.reshape(k, -1)
            return k * (flat - flat.mean(0)).pow(2).sum()

        d = m.shape[1]
        per_pair = pair_sq_sum(m) / d + pair_sq_sum(c) / (d * d)
        return per_pair / (k * (k - 1) / 2)


# --------------------------------------------------------------------------- gradient injection
def inject_grad(params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor]) -> torch.Tensor:
    """A zero-valued scalar whose gradient w.r.t. each ``params[n]`` is the constant ``grads[n]``:
    adding it to a loss hands precomputed (meta-)gradients to the normal backward and optimizer."""
    terms = [((p - p.detach()) * grads[n].detach()).sum() for n, p in params.items()]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def functional_forward(module: torch.nn.Module, params: dict[str, torch.Tensor], *args: torch.Tensor) -> torch.Tensor:
    """``module(*args)`` with ``params`` (names from ``module.named_parameters()``) in place of its own.

    tie_weights=False: a module may hold one submodule under two names (e.g. a compiled alias);
    torch's tied-weights handling would swap the alias too and restore it last, leaving the
    functional tensors inside the module. Swapping one name reaches both.
    """
    return functional_call(module, params, args, tie_weights=False)


# --------------------------------------------------------------------------- seeded draws
def sample_beta(alpha: float, n: int, generator: torch.Generator) -> torch.Tensor:
    """(n,) float32 samples of Beta(alpha, alpha), reproducible from ``generator``
    (torch's Beta sampler takes no generator, so numpy is seeded from it)."""
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    return torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, size=n)).float()


def cross_domain_partners(domain: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(B,) index of a partner for every clip, drawn uniformly among the clips of *other*
    domains (any other clip when the batch holds a single domain)."""
    d = domain.detach().cpu()
    b = d.shape[0]
    allowed = d[:, None] != d[None, :]
    lonely = ~allowed.any(1)
    allowed[lonely] = ~torch.eye(b, dtype=torch.bool)[lonely]
    if b == 1:
        return torch.zeros(1, dtype=torch.long, device=domain.device)
    return torch.multinomial(allowed.float(), 1, generator=generator).squeeze(1).to(domain.device)


def random_partners(b: int, generator: torch.Generator, device: Optional[torch.device] = None) -> torch.Tensor:
    """(B,) a random permutation of the batch."""
    return torch.randperm(b, generator=generator).to(device)
