"""Shared pieces of the benchmarks: a step timer callback, an in-memory DataModule, a plain
PyTorch training loop, and helpers to run ``python -m vidlit fit`` in-process or as a subprocess.

Every benchmark prints ratios of two things measured side by side in one run (interleaved,
rep after rep), and the median over the reps: the machines are shared and noisy.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Iterator, Optional, Sequence

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMES_ENV = "VIDLIT_BENCH_TIMES"  # StepTimer writes its record to this file (+ ".rank<N>")


# ----------------------------------------------------------------------------- reporting
def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def ratio_line(name: str, ratios: Sequence[float], goal: Optional[str] = None, unit: str = "") -> str:
    """``RATIO name: median (goal ...) [per-rep values]`` -- the one line every benchmark prints."""
    reps = ", ".join(f"{r:.3f}" for r in ratios)
    g = f" (goal {goal}: {'met' if _meets(median(ratios), goal) else 'MISSED'})" if goal else ""
    return f"RATIO {name}: {median(ratios):.3f}{unit}{g} [reps: {reps}]"


def _meets(value: float, goal: str) -> bool:
    op, num = goal.split()
    return value >= float(num) if op == ">=" else value <= float(num)


def machine_line() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"# machine: {os.cpu_count()} CPUs, load {load:.1f}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), lightning {pl.__version__}"
    )


# ----------------------------------------------------------------------------- timing
class StepTimer(Callback):
    """Per training step: wall time of the whole cycle (end to end of consecutive steps), and
    its parts: ``data`` (fetch, transfer, normalisation: previous step's end to this step's
    start), ``forward``, ``backward`` (gradient all-reduce included under DDP) and ``rest``
    (optimizer, scheduler, logging, callbacks). The first ``skip`` steps of the run and the
    first step of every epoch (which waits for validation and new loader iterators) are left
    out. With ``$VIDLIT_BENCH_TIMES`` set, the record is written there as JSON at the end of
    fit (``<path>.rank<N>`` on ranks other than 0)."""

    def __init__(self, skip: int = 3) -> None:
        self.skip = skip
        self.steps: list[dict[str, float]] = []
        self._prev_end: Optional[float] = None
        self._prev_cpu = 0.0
        self._n = 0
        self._t: dict[str, float] = {}

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._prev_end = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t = {"start": time.perf_counter()}

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self._t["before_backward"] = time.perf_counter()

    def on_after_backward(self, trainer, pl_module) -> None:
        self._t["after_backward"] = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        end, cpu = time.perf_counter(), time.process_time()
        t = self._t
        if self._prev_end is not None and self._n >= self.skip and "after_backward" in t:
            self.steps.append({
                "step": end - self._prev_end,
                "cpu": cpu - self._prev_cpu,
                "data": t["start"] - self._prev_end,
                "forward": t["before_backward"] - t["start"],
                "backward": t["after_backward"] - t["before_backward"],
                "rest": end - t["after_backward"],
                "clips": _batch_clips(batch),
                "end": time.time(),  # wall clock, to line up with GPU utilisation samples
            })
        self._prev_end, self._prev_cpu, self._n = end, cpu, self._n + 1

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        path = os.environ.get(TIMES_ENV)
        if path:
            path = path if trainer.global_rank == 0 else f"{path}.rank{trainer.global_rank}"
            with open(path, "w") as fh:
                json.dump({"steps": self.steps, "rank": trainer.global_rank, "world": trainer.world_size}, fh)

    def summary(self) -> dict[str, float]:
        return summarize(self.steps)


def _batch_clips(batch: Any) -> int:
    return int(batch["label"].shape[0]) if isinstance(batch, dict) and "label" in batch else 0


def summarize(steps: Sequence[dict[str, float]]) -> dict[str, float]:
    """Steady-state figures: steps/s and clips/s (total time over the kept steps) and the mean
    seconds per step of each part; ``cpu_s``: CPU seconds of the (main) process per step, the
    figure that is robust to other load on a shared machine."""
    if not steps:
        return {"steps": 0, "steps_per_s": float("nan"), "clips_per_s": float("nan")}
    total = sum(s["step"] for s in steps)
    out = {"steps": len(steps), "steps_per_s": len(steps) / total, "clips_per_s": sum(s.get("clips", 0) for s in steps) / total}
    for key in ("step", "cpu", "data", "forward", "backward", "rest"):
        if key in steps[0]:
            out[f"{key}_s"] = sum(s[key] for s in steps) / len(steps)
    return out


# ----------------------------------------------------------------------------- in-memory data
_BATCHES: dict[tuple, list[dict[str, torch.Tensor]]] = {}


def memory_batches(n: int, batch_size: int, frames: int, size: int, num_classes: int = 5, num_domains: int = 3,
                   seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """``n`` ready-made uint8 batches as the DataModule yields them (cached per arguments, so the
    vidlit run and the plain loop train on the very same tensors)."""
    key = (n, batch_size, frames, size, num_classes, num_domains, seed)
    if key not in _BATCHES:
        g = torch.Generator().manual_seed(seed)
        _BATCHES[key] = [
            {
                "video": torch.randint(0, 256, (batch_size, 3, frames, size, size), dtype=torch.uint8, generator=g),
                "label": torch.randint(0, num_classes, (batch_size,), generator=g),
                "domain": torch.arange(batch_size) % num_domains,
            }
            for _ in range(n)
        ]
    return _BATCHES[key]


class MemoryDataModule(pl.LightningDataModule):
    """``--dataset bench_memory``: pre-decoded uint8 batches held in memory (no decoding, no
    workers), so that a vidlit run measures the training machinery and the model only."""

    def __init__(self, backbone: str = "tiny3d", batch_size: int = 30, num_frames: int = 8, size: int = 64,
                 train_batches: int = 20, num_classes: int = 5, num_domains: int = 3, seed: int = 0) -> None:
        super().__init__()
        self.backbone, self.batch_size, self.frames, self.size = backbone, batch_size, num_frames, size
        self.train_batches, self.seed = train_batches, seed
        self.num_classes, self.num_domains = num_classes, num_domains
        self.source_domains = [f"d{i}" for i in range(num_domains)]
        self.target_domains = ["target"]
        self.class_names = [f"c{i}" for i in range(num_classes)]

    def _batches(self, n: int) -> list[dict[str, torch.Tensor]]:
        return memory_batches(n, self.batch_size, self.frames, self.size, self.num_classes, self.num_domains, self.seed)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self._batches(self.train_batches), batch_size=None, pin_memory=torch.cuda.is_available())

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._batches(1), batch_size=None)

    def test_dataloader(self) -> DataLoader:
        return DataLoader([{**b, "domain": torch.zeros_like(b["domain"])} for b in self._batches(1)], batch_size=None)


def register_memory_dataset() -> None:
    from vidlit.data.datamodule import DATAMODULES

    if "bench_memory" not in DATAMODULES:
        DATAMODULES.register("bench_memory")(MemoryDataModule)


# ----------------------------------------------------------------------------- the plain loop
def plain_loop(batches: Sequence[dict[str, torch.Tensor]], backbone: str, num_classes: int = 5, precision: str = "32-true",
               lr: float = 2e-3, weight_decay: float = 0.05, skip: int = 3, seed: int = 0,
               channels_last: bool = False) -> list[dict[str, float]]:
    """A hand-written training loop: same backbone and head, normalisation, AdamW and per-step
    LambdaLR schedule as ``erm``; one pass over ``batches``. Returns per-step times (the first
    ``skip`` steps left out), in :class:`StepTimer`'s format."""
    from vidlit.models.backbones import BACKBONES, NORM_PRESETS, build_backbone

    torch.manual_seed(seed)
    bb = build_backbone(backbone)
    model = nn.Sequential(bb, nn.Sequential(nn.Dropout(0.0), nn.Linear(bb.out_dim, num_classes)))
    if channels_last:
        model.to(memory_format=torch.channels_last_3d)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1, 1) * 255 for v in NORM_PRESETS[BACKBONES.get(backbone).norm])
    opt = torch.optim.AdamW(
        [{"params": bb.parameters(), "lr": lr}, {"params": model[1].parameters(), "lr": lr}], lr=lr, weight_decay=weight_decay
    )
    total = len(batches)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))
    bf16 = precision.startswith("bf16")
    model.train()
    steps, prev, prev_cpu = [], time.perf_counter(), time.process_time()
    for i, batch in enumerate(batches):
        x = (batch["video"].float() - mean) / std
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        t1 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), batch["label"])
        t2 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.perf_counter()
        opt.step()
        sched.step()
        end, cpu = time.perf_counter(), time.process_time()
        if i >= skip:
            steps.append({"step": end - prev, "cpu": cpu - prev_cpu, "data": t1 - prev, "forward": t2 - t1,
                          "backward": t3 - t2, "rest": end - t3, "clips": int(batch["label"].shape[0])})
        prev, prev_cpu = end, cpu
    return steps


# ----------------------------------------------------------------------------- running vidlit
def _timer_args(skip: int) -> list[str]:
    return ["--trainer.callbacks+=benchmarks._common.StepTimer", "--trainer.callbacks.skip", str(skip)]


def vidlit_inprocess(args: Sequence[str], skip: int = 3, quiet: bool = True) -> dict[str, Any]:
    """``python -m vidlit fit ARGS`` in this process with a :class:`StepTimer` added; returns
    the timer's summary. The CLI machinery is the user's: loggers, default callbacks,
    checkpointing, and the test run after fit."""
    from vidlit.commands.cli import run_cli

    register_memory_dataset()
    env = {"WANDB_MODE": os.environ.get("WANDB_MODE", "disabled")}
    old = {k: os.environ.get(k) for k in (*env, "VIDLIT_RUN_DIR")}
    os.environ.update(env)
    sink = io.StringIO()
    try:
        with tempfile.TemporaryDirectory(prefix="vidlit-bench-") as run_dir:
            full = ["fit", *_timer_args(skip), *args, "--trainer.default_root_dir", run_dir]
            with (contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext()):
                cli = run_cli(full)
            timer = next(c for c in cli.trainer.callbacks if type(c).__name__ == "StepTimer")
            return {"summary": timer.summary(), "steps": timer.steps}
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_MEMORY_ENTRY = (
    "import sys; from benchmarks._common import register_memory_dataset; register_memory_dataset(); "
    "from vidlit.cli import main; sys.exit(main(sys.argv[1:]))"
)


def vidlit_subprocess(args: Sequence[str], skip: int = 3, env: Optional[dict] = None, timeout: int = 1800,
                      cwd: Optional[str] = None, memory: bool = False) -> tuple[list[dict[str, Any]], float, subprocess.CompletedProcess]:
    """``python -m vidlit fit ARGS`` in a subprocess (DDP children included) with a
    :class:`StepTimer`; returns (the timer records of every rank, wall seconds, the process).
    ``memory``: the ``bench_memory`` dataset is registered first (``--dataset bench_memory``)."""
    with tempfile.TemporaryDirectory(prefix="vidlit-bench-") as tmp:
        times = os.path.join(tmp, "times.json")
        full_env = dict(os.environ, PYTHONUNBUFFERED="1", **{TIMES_ENV: times}, **(env or {}))
        full_env.setdefault("WANDB_MODE", "disabled")
        full_env["PYTHONPATH"] = os.pathsep.join([REPO, full_env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        entry = ["-c", _MEMORY_ENTRY] if memory else ["-m", "vidlit"]
        cmd = [sys.executable, *entry, "fit", *_timer_args(skip), *args,
               "--trainer.default_root_dir", os.path.join(tmp, "run")]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=cwd or REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"vidlit fit failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
        records = []
        for name in sorted(os.listdir(tmp)):
            if name.startswith("times.json"):
                with open(os.path.join(tmp, name)) as fh:
                    records.append(json.load(fh))
        return records, wall, proc


def alternate(reps: int) -> Iterator[tuple[int, bool]]:
    """(rep, flip): flip the order of the two measured things every other rep."""
    for r in range(reps):
        yield r, r % 2 == 1
