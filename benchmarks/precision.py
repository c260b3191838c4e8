"""bf16-mixed against fp32: ``python -m vidlit bench precision [--reps 3]``.

Training-step time of the plain loop of :mod:`benchmarks.loop` (which vidlit matches, see the
``loop`` benchmark; Lightning's ``bf16-mixed`` on CPU is the same ``torch.autocast`` region) in
fp32 and under bf16 autocast, alternately, rep after rep, for the demo backbone at the demo's
size and for r3d_18 at 16x112x112. Reports the median speedup fp32/bf16 step time (goal >= 1.8x).
``python -m vidlit bench loop --precision bf16-mixed`` checks vidlit's own bf16 path against the
same plain loop.
"""
from __future__ import annotations

import argparse

import torch
from typing import Optional, Sequence

from benchmarks._common import alternate, machine_line, memory_batches, plain_loop, ratio_line, summarize

GOAL = ">= 1.8"
#: (backbone, batch, frames, size, timed steps): the demo backbone at the demo's clip size and r3d_18
#: at its native size; small batches because a CPU without native bf16 (AVX2 only) runs bf16
#: convolutions 30 to 60x slower than fp32 (vidlit.precision picks fp32 there)
CASES = {"tiny3d": ("tiny3d", 6, 8, 64, 2), "r3d_18": ("r3d_18", 1, 16, 112, 1)}


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="vidlit bench precision", description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch", type=int, default=None, help="batch size of every case (default: per case)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per run (default: per case)")
    p.add_argument("--quick", action="store_true", help="tiny smoke run (tiny3d only, small clips, 1 rep)")
    return p.parse_args(argv)


def step_time(backbone: str, batch: int, frames: int, size: int, steps: int, warmup: int, precision: str) -> float:
    """Mean steady-state seconds per training step of the plain loop."""
    batches = memory_batches(warmup + steps, batch, frames, size)
    return summarize(plain_loop(batches, backbone, precision=precision, skip=warmup))["step_s"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    print(machine_line())
    from vidlit.utils.precision import detect

    # what `fit` would choose here (bf16-mixed on CUDA and on CPUs with AVX-512 BF16/AMX, else fp32)
    print(f"# detected: default {detect().line('')}", flush=True)
    cases = {k: CASES[k] for k in a.cases}
    if a.quick:
        cases, a.reps, a.warmup = {"tiny3d": ("tiny3d", 4, 4, 32, 2)}, 1, 1
    for name, (backbone, batch, frames, size, steps) in cases.items():
        steps, batch = a.steps or steps, a.batch or batch
        print(f"# precision: {backbone} batch {batch} x {frames}x{size}x{size}, {steps} timed steps after {a.warmup}, "
              f"{a.reps} reps, plain loop", flush=True)
        ratios = []
        for rep, flip in alternate(a.reps):
            t = {}
            for prec in (("bf16-mixed", "32-true") if flip else ("32-true", "bf16-mixed")):
                t[prec] = step_time(backbone, batch, frames, size, steps, a.warmup, prec)
            ratios.append(t["32-true"] / t["bf16-mixed"])
            print(f"rep {rep}: fp32 {t['32-true']:.3f} s/step, bf16-mixed {t['bf16-mixed']:.3f} s/step, "
                  f"speedup {ratios[-1]:.3f}x", flush=True)
        print(ratio_line(f"precision {name} bf16-mixed speedup (fp32 time / bf16 time)", ratios, GOAL, unit="x"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
