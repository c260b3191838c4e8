"""Training-loop overhead: ``python -m vidlit bench loop [--reps 5] [--steps 30]``.

ERM through the real vidlit machinery (``python -m vidlit fit`` run in this process: the
LightningCLI, the ``erm`` Strategy, the default loggers and callbacks, checkpointing) against a
plain PyTorch loop written here with the same backbone and head, optimizer, schedule and
precision, both on the same pre-decoded uint8 batches held in memory. Steady-state steps/s
(the first ``--warmup`` steps left out); the two run alternately, rep after rep, and the
median of the per-rep ratios vidlit/plain is reported (goal >= 0.95).
"""
from __future__ import annotations

import argparse

import torch
from typing import Optional, Sequence

from benchmarks._common import alternate, machine_line, memory_batches, plain_loop, ratio_line, summarize, vidlit_inprocess

GOAL = ">= 0.95"


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="vidlit bench loop", description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="tiny3d")
    p.add_argument("--batch-size", type=int, default=30, help="the demo's default")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--steps", type=int, default=15, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps at the start of each run")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--progress-bar", action="store_true", help="keep the CLI's Rich progress bar (off: as in scripts and logs)")
    p.add_argument("--vidlit-args", nargs=argparse.REMAINDER, default=[], help="extra `vidlit fit` flags, e.g. --model.channels_last true")
    p.add_argument("--quick", action="store_true", help="tiny smoke run (1 rep, few small steps)")
    a = p.parse_args(argv)
    if a.quick:
        a.reps, a.steps, a.warmup, a.batch_size, a.frames, a.size = 1, 3, 1, 4, 4, 32
    return a


def vidlit_args(a: argparse.Namespace) -> list[str]:
    n = a.warmup + a.steps
    return [
        "--strategy", "erm", "--dataset", "bench_memory", "--backbone", a.backbone,
        "--data.batch_size", str(a.batch_size), "--data.num_frames", str(a.frames), "--data.size", str(a.size),
        "--data.train_batches", str(n), "--trainer.max_epochs", "1", "--trainer.precision", a.precision,
        "--trainer.enable_model_summary", "false", "--trainer.enable_progress_bar", str(a.progress_bar).lower(),
        *a.vidlit_args,
    ]


def main(argv: Optional[Sequence[str]] = None) -> int:
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    print(machine_line())
    print(f"# loop: {a.backbone} batch {a.batch_size} x {a.frames}x{a.size}x{a.size}, {a.precision}, "
          f"{a.steps} timed steps after {a.warmup}, {a.reps} reps")
    batches = memory_batches(a.warmup + a.steps, a.batch_size, a.frames, a.size)
    ratios, cpu_ratios = [], []
    for rep, flip in alternate(a.reps):
        runs = {}
        for kind in (("plain", "vidlit") if flip else ("vidlit", "plain")):
            if kind == "vidlit":
                runs[kind] = vidlit_inprocess(vidlit_args(a), skip=a.warmup)["summary"]
            else:
                runs[kind] = summarize(plain_loop(batches, a.backbone, precision=a.precision, skip=a.warmup))
        v, p = runs["vidlit"], runs["plain"]
        ratios.append(v["steps_per_s"] / p["steps_per_s"])
        cpu_ratios.append(p["cpu_s"] / v["cpu_s"])
        print(f"rep {rep}: vidlit {v['steps_per_s']:.2f} steps/s, {v['cpu_s'] * 1e3:.0f} CPU ms/step "
              f"(data {v['data_s'] * 1e3:.1f} ms, rest {v['rest_s'] * 1e3:.1f} ms); plain {p['steps_per_s']:.2f} steps/s, "
              f"{p['cpu_s'] * 1e3:.0f} CPU ms/step (data {p['data_s'] * 1e3:.1f} ms, rest {p['rest_s'] * 1e3:.1f} ms); "
              f"ratio wall {ratios[-1]:.3f}, CPU {cpu_ratios[-1]:.3f}", flush=True)
    print(ratio_line("loop vidlit/plain steps/s (wall clock)", ratios, GOAL))
    print(ratio_line("loop vidlit/plain steps per CPU second (robust to other load)", cpu_ratios, GOAL))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
