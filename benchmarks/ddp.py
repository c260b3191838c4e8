"""DDP scaling on CPU: ``python -m vidlit bench ddp [--reps 2]``.

``python -m vidlit fit`` (ERM, the embedded data, the real DataModule and its workers) in one
process against two (``--trainer.strategy ddp --trainer.devices 2 --trainer.accelerator cpu``,
gloo) on the same total batch (each of the two ranks gets half), alternately, rep after rep.
Reports the median ratio of steady-state clips/s (2 processes / 1) and where a step's time goes
on each side: waiting for data, forward, backward (the gradient all-reduce overlaps with it under
DDP), optimizer and the rest. A gloo all-reduce of a buffer the size of the model's gradients,
timed on its own between two processes, gives the pure communication cost per step.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Optional, Sequence

import torch

from benchmarks._common import alternate, machine_line, ratio_line, summarize, vidlit_subprocess


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="vidlit bench ddp", description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="tiny3d")
    p.add_argument("--batch-size", type=int, default=30, help="total clips per step (the demo's default)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers per process")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="tiny smoke run")
    a = p.parse_args(argv)
    if a.batch_size % 6:
        p.error("--batch-size must split evenly over 2 ranks and the 3 source domains (a multiple of 6)")
    return a


def fit_args(a: argparse.Namespace, processes: int) -> list[str]:
    args = [
        "--strategy", "erm", "--backbone", a.backbone, "--data.batch_size", str(a.batch_size // processes),
        "--data.num_workers", str(a.workers), "--data.eval_target_each_epoch", "false",
        "--trainer.max_epochs", str(a.epochs), "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1",
        "--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.accelerator", "cpu", "--trainer.devices", str(processes),
    ]
    if processes > 1:
        args += ["--trainer.strategy", "ddp"]
    if a.quick:
        args += ["--data.synthetic_videos_per_class", "4", "--data.size", "32", "--data.num_frames", "4"]
    return args


def _allreduce_worker(rank: int, numel: int, iters: int, port: int, out: "torch.multiprocessing.Queue") -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    buf = torch.ones(numel)
    dist.all_reduce(buf)
    times = []
    for _ in range(iters):
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_reduce(buf)
        times.append(time.perf_counter() - t0)
    if rank == 0:
        out.put(statistics.median(times))
    dist.destroy_process_group()


def allreduce_seconds(numel: int, iters: int = 20) -> float:
    """Median seconds of one gloo all-reduce of ``numel`` floats between two processes."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    mp.start_processes(_allreduce_worker, args=(numel, iters, port, q), nprocs=2, start_method="spawn")
    return q.get(timeout=60)


def _parts(records: list[dict]) -> dict[str, float]:
    """Summary over every rank's steps (rank 0's throughput; mean part times over ranks)."""
    rank0 = next(r for r in records if r["rank"] == 0)
    s = summarize(rank0["steps"])
    for key in ("data", "forward", "backward", "rest"):
        vals = [summarize(r["steps"]).get(f"{key}_s", float("nan")) for r in records]
        s[f"{key}_s"] = sum(vals) / len(vals)
    s["clips_per_s"] *= len(records)  # every rank trains on its own share of the batch
    return s


def _fmt(s: dict[str, float]) -> str:
    ms = lambda k: f"{s[k + '_s'] * 1e3:.0f}"  # noqa: E731
    return (f"{s['clips_per_s']:.1f} clips/s, step {ms('step')} ms = data {ms('data')} + forward {ms('forward')} "
            f"+ backward {ms('backward')} + rest {ms('rest')}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    a = parse_args(argv)
    if a.quick:
        a.reps, a.epochs, a.warmup, a.batch_size, a.workers = 1, 1, 1, 12, 0
    print(machine_line())
    print(f"# ddp: {a.backbone}, total batch {a.batch_size}, {a.workers} loader workers per process, {a.epochs} epochs, "
          f"{a.reps} reps (1 process vs 2, gloo)", flush=True)
    ratios, numel = [], None
    for rep, flip in alternate(a.reps):
        s = {}
        for n in ((2, 1) if flip else (1, 2)):
            records, wall, _ = vidlit_subprocess(fit_args(a, n), skip=a.warmup)
            s[n] = _parts(records)
            print(f"rep {rep}: {n} process(es): {_fmt(s[n])} (run wall {wall:.0f} s)", flush=True)
        ratios.append(s[2]["clips_per_s"] / s[1]["clips_per_s"])
    if numel is None:
        from vidlit.models.backbones import build_backbone

        numel = sum(p.numel() for p in build_backbone(a.backbone).parameters())
    comm = allreduce_seconds(numel)
    print(f"gloo all-reduce of the {numel / 1e6:.2f} M gradient floats between 2 processes: {comm * 1e3:.1f} ms per step "
          f"({comm / s[2]['step_s'] * 100:.1f}% of a 2-process step)")
    print(ratio_line("ddp 2 processes / 1 clips/s (same total batch)", ratios))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
