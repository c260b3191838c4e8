"""Training cost per clip of each strategy relative to ``erm``: same backbone, batch and data,
measured side by side in one process.

Every strategy trains on the same pre-made in-memory batches (normalised float clips already on the
device, every source domain in every batch), so the numbers measure the strategy (loss, backward,
optimizer step; the rows erm+ema and erm+swad add the per-step update of --average.method ema|swad), not decoding. Each rep times ``--steps`` optimizer steps of every strategy in turn
(the order rotates between reps); a strategy's ratio is the median over reps of its time divided by
erm's time in the same rep, so slow drifts of a shared machine cancel out. On CPU the clock is the
process's CPU time (``--clock cpu``), which other processes on the machine barely disturb.

    python benchmarks/strategies.py [--backbone tiny3d] [--batch-size 12] [--reps 7] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any, Optional, Sequence

if __name__ == "__main__":  # as a script, benchmarks/ comes first on sys.path, where this file would shadow the `strategies` package
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != _here]

import torch

# label -> (strategy, extra init args, target ratio vs erm or None)
VARIANTS: dict[str, tuple[str, dict[str, Any], Optional[float]]] = {
    "erm": ("erm", {}, None),
    "dann": ("dann", {}, 1.15),
    "mixup": ("mixup", {}, 1.10),
    "mixstyle": ("mixup", {"mode": "mixstyle", "mixstyle_p": 1.0}, None),  # p = 1: every step mixes (upper bound)
    "coral": ("coral", {}, 1.10),
    "mldg-first": ("mldg", {"order": "first"}, 1.5),
    "mldg-second": ("mldg", {"order": "second"}, 3.0),
    "groupdro": ("groupdro", {}, None),
    "fish": ("fish", {}, None),
    # weight averaging (--average.method, vidlit/averaging.py) on erm: the per-step update of the average
    "erm+ema": ("erm", {}, 1.10),
    "erm+swad": ("erm", {}, 1.10),
}
#: label -> --average.method of the rows that average weights after every optimizer step
AVERAGING = {"erm+ema": "ema", "erm+swad": "swad"}


def make_batches(n: int, batch_size: int, num_domains: int, num_classes: int, frames: int, size: int, device: torch.device, seed: int = 0) -> list[dict]:
    """``n`` batches of normalised clips (B, 3, T, S, S) with balanced domains (B,) and labels (B,)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        out.append({
            "video": torch.randn(batch_size, 3, frames, size, size, generator=g).to(device),
            "label": torch.randint(0, num_classes, (batch_size,), generator=g).to(device),
            "domain": (torch.arange(batch_size) % num_domains).to(device),
        })
    return out


def build(label: str, backbone: str, num_classes: int, num_domains: int, device: torch.device, lr: float):
    from vidlit.models.strategy import STRATEGIES

    name, kwargs, _ = VARIANTS[label]
    torch.manual_seed(0)  # the same initial backbone for every strategy
    model = STRATEGIES.get(name)(num_classes=num_classes, num_domains=num_domains, backbone=backbone, **kwargs).to(device).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    return model, opt


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Runner:
    """One strategy's training steps; its step counter gives fresh random draws each step (as
    ``global_step`` does in a real run)."""

    def __init__(self, model, opt, batches: list[dict], average: Optional[str] = None) -> None:
        self.model, self.opt, self.batches, self.step = model, opt, batches, 0
        model.step_generator = self._generator
        self.averaging = None
        if average:
            from vidlit.callbacks.averaging import WeightAveraging

            self.averaging = WeightAveraging(average)

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.step)

    def run(self, steps: int) -> None:
        for _ in range(steps):
            batch = self.batches[self.step % len(self.batches)]
            self.opt.zero_grad(set_to_none=True)
            loss, _ = self.model.compute_loss(batch)
            loss.backward()
            self.opt.step()
            self.step += 1
            if self.averaging is not None:  # what the callback does after every optimizer step
                self.averaging.update(self.model, self.step)


def measure(labels: Sequence[str], args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    batches = make_batches(args.num_batches, args.batch_size, args.num_domains, args.num_classes, args.frames, args.size, device)
    runners = {lab: _Runner(*build(lab, args.backbone, args.num_classes, args.num_domains, device, args.lr), batches, AVERAGING.get(lab))
               for lab in labels}
    for r in runners.values():
        r.run(args.warmup)
    times: dict[str, list[float]] = {lab: [] for lab in labels}
    order = list(labels)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    for rep in range(args.reps):
        for lab in order[rep % len(order):] + order[: rep % len(order)]:
            _sync(device)
            t0 = clock()
            runners[lab].run(args.steps)
            _sync(device)
            times[lab].append((clock() - t0) / (args.steps * args.batch_size))
    rows = {}
    for lab in labels:
        paired = [t / e for t, e in zip(times[lab], times["erm"])]
        rows[lab] = {
            "ms_per_clip": 1e3 * statistics.median(times[lab]),
            "ratio_vs_erm": statistics.median(paired),
            "target": VARIANTS[lab][2],
            "times_s_per_clip": times[lab],
        }
    return rows


def print_table(rows: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"training cost per clip vs erm: backbone {args.backbone}, batch {args.batch_size} x 3 x {args.frames} x "
        f"{args.size}^2, {args.num_domains} domains, device {args.device}, torch threads {torch.get_num_threads()}, "
        f"{args.clock} time, {args.reps} reps x {args.steps} steps (median)"
    )
    print(f"{'strategy':<13} {'ms/clip':>9} {'x erm':>7} {'target':>7}  ")
    for lab, row in rows.items():
        target = row["target"]
        verdict = "" if target is None else ("ok" if row["ratio_vs_erm"] <= target else "OVER")
        tgt = f"<={target:.2f}" if target is not None else "-"
        print(f"{lab:<13} {row['ms_per_clip']:>9.2f} {row['ratio_vs_erm']:>7.2f} {tgt:>7}  {verdict}")


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmarks/strategies.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="tiny3d")
    p.add_argument("--batch-size", type=int, default=12)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--num-domains", type=int, default=3)
    p.add_argument("--num-classes", type=int, default=5)
    p.add_argument("--num-batches", type=int, default=4, help="distinct pre-made batches, cycled")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per strategy per rep")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per strategy first")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument(
        "--clock", choices=["cpu", "wall"], default=None,
        help="cpu: this process's CPU time (robust on a shared machine; default on CPU), wall: elapsed time (default on CUDA)",
    )
    p.add_argument("--only", nargs="+", choices=list(VARIANTS), help="strategies to measure (erm always is)")
    p.add_argument("--json", default=None, help="also write the numbers to this file")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    args.clock = args.clock or ("wall" if torch.device(args.device).type == "cuda" else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    labels = ["erm"] + [lab for lab in (args.only or VARIANTS) if lab != "erm"]
    rows = measure(labels, args)
    print_table(rows, args)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "torch_threads": torch.get_num_threads(), "results": rows}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
