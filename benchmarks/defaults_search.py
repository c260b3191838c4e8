"""The small search behind each strategy's defaults (docs/STRATEGIES.md, "How the defaults were chosen").

Each candidate value of a strategy's own hyperparameter is trained with the strategy's other
defaults, its real ``configure_optimizers`` and a Lightning Trainer on in-memory generated clips of
three source domains (``vidlit.data.fake.fit_in_memory``: 32 px, 8 frames, 10 epochs, about 10 s a
run on one thread), over several seeds; printed: mean source-domain validation accuracy and its
difference to ERM's on the same seeds. Accuracies, not timings: the numbers do not depend on the
machine's load.

    python -m vidlit bench defaults_search --seeds 0 1 2
    python -m vidlit bench defaults_search --only mixup coral
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Any, Optional, Sequence

#: strategy -> [(argument, candidate values)]; ``None`` is the argument's own default
GRID: dict[str, list[tuple[str, list[Any]]]] = {
    "dann": [("lambda_value", [0.3, 1.0, 3.0])],
    "mixup": [("alpha", [0.1, 0.2, 0.4]), ("mix_prob", [0.25, 0.5])],
    "mldg": [("inner_lr", [None, 0.02, 0.1])],
    "fish": [("inner_lr", [None, 0.02, 0.1])],
    "coral": [("coral_weight", [0.1, 0.3, 1.0])],
    "groupdro": [("eta", [0.01, 0.1])],
}
#: whole configurations compared with the defaults: the first round's DANN optimisation, and it
#: with only the betas changed (which of its three differences made it collapse)
ABLATIONS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "dann": [
        ("first-round", {"lambda_schedule": "constant", "betas": (0.9, 0.999), "disc_weight_decay": 0.05}),
        ("first-round, betas 0.5/0.9", {"lambda_schedule": "constant", "disc_weight_decay": 0.05}),
        ("defaults, constant lambda", {"lambda_schedule": "constant"}),
    ],
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vidlit bench defaults_search", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds per candidate (default: 0 1 2)")
    p.add_argument("--only", nargs="+", default=list(GRID), help=f"strategies to search (default: {' '.join(GRID)})")
    p.add_argument("--arguments", nargs="+", help="search only these arguments (default: all of the strategies' entries)")
    p.add_argument("--ablations", action="store_true", help="also train the whole configurations in ABLATIONS")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    p.add_argument("--out", help="also write the table as JSON to this file")
    args = p.parse_args(argv)
    import logging

    import torch

    from vidlit.data.fake import fit_in_memory

    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    def mean_acc(name: str, **kw: Any) -> tuple[float, list[float]]:
        accs = [fit_in_memory(name, seed=s, **kw)[0] for s in args.seeds]
        return statistics.fmean(accs), accs

    rows: list[dict] = []
    erm, erm_accs = mean_acc("erm")
    print(f"{'strategy':10s} {'argument':14s} {'value':>8s} {'val acc':>8s} {'- erm':>7s}  per seed", flush=True)
    print(f"{'erm':10s} {'':14s} {'':>8s} {erm:8.3f} {0:+7.3f}  {' '.join(f'{a:.3f}' for a in erm_accs)}", flush=True)
    rows.append({"strategy": "erm", "val_acc": erm, "per_seed": erm_accs})
    for name, arg, values in ((n, a, v) for n in args.only for a, v in GRID[n] if not args.arguments or a in args.arguments):
        for value in values:
            acc, accs = mean_acc(name, **({} if value is None else {arg: value}))
            shown = "default" if value is None else f"{value:g}"
            print(f"{name:10s} {arg:14s} {shown:>8s} {acc:8.3f} {acc - erm:+7.3f}  {' '.join(f'{a:.3f}' for a in accs)}", flush=True)
            rows.append({"strategy": name, "argument": arg, "value": value, "val_acc": acc, "per_seed": accs, "minus_erm": acc - erm})
    for name in (n for n in args.only if args.ablations):
        for label, kw in ABLATIONS.get(name, []):
            acc, accs = mean_acc(name, **kw)
            print(f"{name:10s} {label:>23s} {acc:8.3f} {acc - erm:+7.3f}  {' '.join(f'{a:.3f}' for a in accs)}", flush=True)
            rows.append({"strategy": name, "ablation": label, "overrides": kw, "val_acc": acc, "per_seed": accs, "minus_erm": acc - erm})
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"seeds": args.seeds, "rows": rows}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
