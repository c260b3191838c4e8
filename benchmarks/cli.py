"""Start-up time of the light commands: ``python -m vidlit bench cli [--runs 100]``.

Times, interleaved run after run in one process tree (the machines are shared and noisy),
``python -m vidlit --help``, ``python -m vidlit list``, ``python -m vidlit report DIR`` (on a
folder of generated finished runs) and ``python -c "import torch"``, and prints each command's
median wall time and its ratio to importing torch (goal: ``--help`` and ``report`` below 1.0, and
``--help`` <= 1 s on a quiet machine). ``--skip list`` leaves out ``list`` (it imports every
strategy and backbone, so torch: about as slow as torch itself).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="vidlit bench cli", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=100, help="timed runs of each command (interleaved)")
    p.add_argument("--skip", nargs="*", default=[], choices=["help", "list", "report"], help="commands to leave out")
    p.add_argument("--quick", action="store_true", help="3 runs of each (a smoke run)")
    return p.parse_args(argv)


def make_runs(root: str, n_strategies: int = 2, n_targets: int = 4, n_seeds: int = 3) -> None:
    """Finished run folders as ``sweep`` writes them (config.yaml, results.json, sweep.json)."""
    import yaml

    for s in ("erm", "dann")[:n_strategies]:
        for t in range(n_targets):
            for seed in range(n_seeds):
                run = os.path.join(root, "folder", s, f"target=d{t}", f"seed={seed}")
                os.makedirs(run)
                acc = 0.5 + 0.01 * (t + seed)
                with open(os.path.join(run, "config.yaml"), "w") as fh:
                    yaml.safe_dump({"seed_everything": seed, "strategy": s, "dataset": "folder",
                                    "trainer": {"max_epochs": 12}, "model": {"backbone": "tiny3d", "lr": 0.002},
                                    "data": {"target_domains": [f"d{t}"], "size": 64, "num_frames": 16}}, fh)
                with open(os.path.join(run, "results.json"), "w") as fh:
                    json.dump({"dataset": "folder", "strategy": s, "backbone": "tiny3d", "seed": seed,
                               "target_domains": [f"d{t}"], "source_domains": ["a", "b", "c"],
                               "class_names": list("abcde"), "test_acc": acc, "val_acc": acc + 0.1,
                               "val_loss": 1.0, "oracle_test_acc": acc + 0.02}, fh)
                with open(os.path.join(run, "sweep.json"), "w") as fh:
                    json.dump({"strategy": s, "dataset": "folder", "target": f"d{t}", "seed": seed,
                               "hparams_draw": None, "hparams": {}, "status": "done"}, fh)


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"bench cli: {' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return elapsed


def main(argv: Optional[Sequence[str]] = None) -> int:
    a = parse_args(argv)
    runs = 3 if a.quick else a.runs
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# machine: {os.cpu_count()} CPUs, load {load:.1f}; {runs} runs of each command, interleaved", flush=True)
    with tempfile.TemporaryDirectory(prefix="vidlit-bench-cli-") as tmp:
        make_runs(tmp)
        out = os.path.join(tmp, "report-out")
        py = sys.executable
        commands = {
            "import torch": [py, "-c", "import torch"],
            "--help": [py, "-m", "vidlit", "--help"],
            "list": [py, "-m", "vidlit", "list"],
            "report": [py, "-m", "vidlit", "report", os.path.join(tmp, "folder"), "--out", out],
        }
        for name in a.skip:
            commands.pop({"help": "--help"}.get(name, name))
        times: dict[str, list[float]] = {k: [] for k in commands}
        for name, cmd in commands.items():  # one untimed run each: file-system caches warm
            timed(cmd)
        for _ in range(runs):
            for name, cmd in commands.items():
                times[name].append(timed(cmd))
    base = statistics.median(times["import torch"])
    print(f"{'command':14s} {'median s':>9s} {'min s':>7s} {'max s':>7s} {'/ import torch':>15s}")
    for name, xs in times.items():
        med = statistics.median(xs)
        print(f"{name:14s} {med:9.3f} {min(xs):7.3f} {max(xs):7.3f} {med / base:15.3f}")
    for name in ("--help", "report"):
        if name in times:
            ratios = [t / b for t, b in zip(times[name], times["import torch"])]
            med = statistics.median(ratios)
            print(f"RATIO {name} / import torch: {med:.3f} (goal < 1.0: {'met' if med < 1.0 else 'MISSED'})")
    if "--help" in times:
        med = statistics.median(times["--help"])
        print(f"--help median {med:.3f} s (goal <= 1 s on a quiet machine: {'met' if med <= 1.0 else 'MISSED'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
