"""Metric names and values, one place: every accuracy a strategy logs is ``<prefix>/acc`` (the mean
over domains) and ``<prefix>/acc/<domain>``, class-mean (balanced) accuracies
``<prefix>/class_mean_acc`` and ``<prefix>/class_mean_acc/<domain>`` (:func:`class_mean_key`), with the prefixes :data:`VAL` (the source domains'
validation split), :data:`VAL_TARGET` (the held-out domains evaluated during fit: the oracle) and
:data:`TEST` (the held-out domains); losses are ``<prefix>/loss``. Values written to results files
are plain floats rounded to 6 digits, ``None`` when missing or NaN."""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Optional

VAL, VAL_TARGET, TEST = "val", "val_target", "test"


def acc_key(prefix: str, domain: Optional[str] = None) -> str:
    """``val/acc`` (``domain`` None: the mean over domains) or ``val/acc/<domain>``."""
    return f"{prefix}/acc" if domain is None else f"{prefix}/acc/{domain}"


def class_mean_key(prefix: str, domain: Optional[str] = None) -> str:
    """``val/class_mean_acc`` (``domain`` None: over the domains' videos pooled) or
    ``val/class_mean_acc/<domain>``: class-mean (balanced) accuracy, the mean of the per-class
    accuracies over the classes that have videos. ``--checkpoint.monitor val/class_mean_acc``
    selects the checkpoint by it."""
    return f"{prefix}/class_mean_acc" if domain is None else f"{prefix}/class_mean_acc/{domain}"


def loss_key(prefix: str) -> str:
    return f"{prefix}/loss"


def value(x: Any) -> Optional[float]:
    """A metric (tensor or number) as a results-file value: float rounded to 6 digits; None when missing or NaN."""
    if x is None:
        return None
    v = float(x.item() if hasattr(x, "item") else x)
    return None if math.isnan(v) else round(v, 6)


def metric(metrics: Mapping[str, Any], key: str) -> Optional[float]:
    """:func:`value` of ``metrics[key]`` (None when absent)."""
    return value(metrics.get(key))


def per_domain(metrics: Mapping[str, Any], prefix: str, domains: Iterable[str]) -> dict[str, Optional[float]]:
    """``{domain: accuracy}`` of ``<prefix>/acc/<domain>`` for each of ``domains``."""
    return {d: metric(metrics, acc_key(prefix, d)) for d in domains}
