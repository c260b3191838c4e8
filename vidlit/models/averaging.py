"""Weight-averaging math: running means of parameter snapshots, SWAD's window rule, BatchNorm recomputation."""
from __future__ import annotations

import math
from collections import deque
from typing import Any, Iterable, Optional

import torch
from torch import nn

from vidlit.utils.errors import VidlitError


# --------------------------------------------------------------------------- running means
class RunningMean:
    """Mean of a sequence of parameter snapshots (a list of tensors), updated in place."""

    def __init__(self, tensors: Optional[list[torch.Tensor]] = None, count: int = 0) -> None:
        self.tensors = tensors
        self.count = count

    def add(self, params: list[torch.Tensor]) -> None:
        if self.count == 0 or self.tensors is None:
            self.tensors = [p.detach().clone() for p in params]
        else:
            torch._foreach_lerp_(self.tensors, [p.detach() for p in params], 1.0 / (self.count + 1))
        self.count += 1

    def merge(self, other: "RunningMean") -> None:
        """This mean becomes the mean of both sets of snapshots (weighted by their counts)."""
        if other.count == 0:
            return
        if self.count == 0 or self.tensors is None:
            self.tensors, self.count = [t.clone() for t in other.tensors], other.count
            return
        w = other.count / (self.count + other.count)
        torch._foreach_lerp_(self.tensors, [o.to(t.device) for o, t in zip(other.tensors, self.tensors)], w)
        self.count += other.count

    def to(self, device: Any) -> "RunningMean":
        if self.tensors is not None:
            self.tensors = [t.to(device) for t in self.tensors]
        return self

    def cpu_copy(self) -> "RunningMean":
        return RunningMean(None if self.tensors is None else [t.detach().to("cpu", copy=True) for t in self.tensors], self.count)

    def state(self) -> dict:
        return {"tensors": None if self.tensors is None else [t.detach().cpu() for t in self.tensors], "count": self.count}

    @classmethod
    def from_state(cls, state: dict) -> "RunningMean":
        return cls(state.get("tensors"), int(state.get("count", 0)))


# --------------------------------------------------------------------------- SWAD's window rule
class SwadWindow:
    """SWAD's window rule, online, on segments that each end with one source-validation loss.

    :meth:`add` takes the next segment (any payload) and its loss and returns the segments that are
    now known to be inside the window, in order; :meth:`finish` returns those the rule admits when
    no more evaluations come (the formulas on the shorter tail). ``start``/``end`` are evaluation
    indices (``end`` exclusive, None while open); see the module docstring for the formulas."""

    def __init__(self, patience: int = 3, overfit_patience: int = 6, tolerance: float = 1.3) -> None:
        if patience < 1 or overfit_patience < 1:
            raise VidlitError("--average.swad_patience and --average.swad_overfit_patience must be >= 1")
        if tolerance < 1.0:
            raise VidlitError(f"--average.swad_tolerance must be >= 1 (a ratio to the minimum loss), got {tolerance}")
        self.patience, self.overfit_patience, self.tolerance = patience, overfit_patience, tolerance
        self.losses: list[float] = []
        self.start: Optional[int] = None
        self.end: Optional[int] = None
        self.threshold: Optional[float] = None
        self.finished = False
        self.buffer: deque = deque()  # (index, loss, payload): before the start the last N_s, after it the unconfirmed

    def _admit(self) -> list:
        """After the start: walk the unconfirmed segments in order; a loss <= threshold confirms it
        and every one before it, ``N_e`` in a row above the threshold end the window at the first."""
        out: list = []
        pending: list = []
        for entry in list(self.buffer):
            if entry[1] <= self.threshold:
                out += pending + [entry]
                pending = []
            else:
                pending.append(entry)
                if len(pending) >= self.overfit_patience:
                    self.end = pending[0][0]
                    self.buffer.clear()
                    return out
        self.buffer = deque(pending)
        return out

    def _begin(self, k: int) -> list:
        """Start the window at buffer entry ``k``; the threshold from the ``N_s`` losses from there."""
        for _ in range(k):
            self.buffer.popleft()
        self.start = self.buffer[0][0]
        losses = [loss for _, loss, _ in list(self.buffer)[: self.patience]]
        self.threshold = self.tolerance * sum(losses) / len(losses)
        return self._admit()

    def add(self, loss: float, payload: Any = None) -> list:
        if self.end is not None or self.finished:
            return []
        if not math.isfinite(loss):
            loss = math.inf
        index = len(self.losses)
        self.losses.append(float(loss))
        self.buffer.append((index, float(loss), payload))
        if self.start is None:
            if len(self.buffer) > self.patience:
                self.buffer.popleft()
            if len(self.buffer) < self.patience or self.buffer[0][1] > min(l for _, l, _ in self.buffer):
                return []
            out = self._begin(0)
        else:
            out = self._admit()
        return [p for _, _, p in out]

    def finish(self) -> list:
        """The segments still admitted when training ends (the rule on the shorter tail)."""
        if self.finished or self.end is not None:
            self.finished = True
            return []
        self.finished = True
        out: list = []
        if self.start is None:
            if not self.buffer:
                return []
            losses = [l for _, l, _ in self.buffer]
            k = next(k for k in range(len(losses)) if losses[k] <= min(losses[k:]))
            out = self._begin(k)
        if self.end is None:
            out += self._admit()
        if self.end is None:  # what is left is above the threshold up to the end
            self.end = self.buffer[0][0] if self.buffer else len(self.losses)
        self.buffer.clear()
        return [p for _, _, p in out]

    def state(self) -> dict:
        return {"losses": list(self.losses), "start": self.start, "end": self.end, "threshold": self.threshold,
                "finished": self.finished,
                "buffer": [{"index": i, "loss": l, "payload": p.state() if isinstance(p, RunningMean) else p} for i, l, p in self.buffer]}

    def load(self, state: dict) -> None:
        self.losses = [float(x) for x in state.get("losses", [])]
        self.start, self.end, self.threshold = state.get("start"), state.get("end"), state.get("threshold")
        self.finished = bool(state.get("finished", False))
        self.buffer = deque(
            (int(e["index"]), float(e["loss"]), RunningMean.from_state(e["payload"]) if isinstance(e["payload"], dict) else e["payload"])
            for e in state.get("buffer", [])
        )


def swad_window(losses: Iterable[float], patience: int = 3, overfit_patience: int = 6, tolerance: float = 1.3) -> tuple[int, int]:
    """``(start, end)`` (end exclusive) of the SWAD window for a whole loss curve (one loss per evaluation)."""
    w = SwadWindow(patience, overfit_patience, tolerance)
    for loss in losses:
        w.add(loss)
    w.finish()
    return int(w.start if w.start is not None else 0), int(w.end if w.end is not None else 0)


# --------------------------------------------------------------------------- BatchNorm statistics
def recompute_bn(module: nn.Module, batches: Iterable[torch.Tensor], forward: Optional[Any] = None) -> int:
    """Reset and recompute the running statistics of every BatchNorm of ``module`` that is in
    training mode (after ``module.train()``: frozen BatchNorms stay in eval mode and keep theirs),
    as the exact mean over the clips of ``batches`` (momentum None). Returns the number of
    BatchNorms recomputed."""
    was_training = module.training
    module.train()
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats]
    if not bns:
        module.train(was_training)
        return 0
    momenta = {m: m.momentum for m in bns}
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    forward = forward or module
    n = 0
    with torch.no_grad():
        for video in batches:
            forward(video)
            n += 1
    for m in bns:
        m.momentum = momenta[m]
    module.train(was_training)
    return len(bns) if n else 0
