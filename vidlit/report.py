"""``python -m vidlit report DIR``: DomainBed-style tables from every ``results.json`` under DIR.

Per dataset: rows are strategies, columns each held-out domain and Avg, cells the accuracy (%)
as mean +- standard error (sample std / sqrt(n)) over seeds, for

* training-domain validation: the checkpoint (and, with ``sweep --n_hparams``, the
  hyperparameter draw) with the best source-domain validation accuracy: ``test_acc``;
* oracle, an upper bound: the epoch (and draw) with the best target-domain accuracy:
  ``oracle_test_acc``;
* in-domain (source validation, ``val_acc``) vs out-of-domain (target test, ``test_acc``).

Avg is computed per seed (mean over the held-out domains, for seeds that have all of them), then
mean +- SE over those seeds. Run folders without a usable ``results.json`` (failed, killed or still
running) are listed at the end, never silently dropped. Writes ``report.md`` (also printed),
``report_<dataset>.csv`` and ``report_<dataset>.png`` (bar chart).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from collections import defaultdict
from typing import Any, Optional, Sequence

from vidlit.results import RESULTS_FILE
from vidlit.sweep import SWEEP_FILE

SKIP_DIRS = {"wandb", "checkpoints", "samples"}  # W&B keeps a copy of results.json under wandb/
RUN_MARKERS = {RESULTS_FILE, SWEEP_FILE, "config.yaml"}


def _read_json(path: str) -> Optional[dict]:
    try:
        with open(path) as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def find_runs(root: str) -> tuple[list[dict], list[tuple[str, str]]]:
    """(usable results, [(run folder, why it has no usable results)]) under ``root``. Each result
    gets ``_dir`` and ``_draw`` (the sweep's hyperparameter draw, or None)."""
    results, problems = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        if not RUN_MARKERS & set(filenames):
            continue
        sweep = _read_json(os.path.join(dirpath, SWEEP_FILE)) or {}
        if RESULTS_FILE not in filenames:
            status = sweep.get("status", "incomplete")
            if status == "running":
                status = "running, or killed"
            why = f"no results.json ({status})"
            if os.path.isfile(os.path.join(dirpath, "checkpoints", "last.ckpt")):
                why += "; checkpoints/last.ckpt present: rerun the sweep (or fit --ckpt_path last) to resume"
            problems.append((dirpath, why))
            continue
        res = _read_json(os.path.join(dirpath, RESULTS_FILE))
        if res is None:
            problems.append((dirpath, "results.json is not readable JSON"))
        elif res.get("test_acc") is None:
            problems.append((dirpath, "results.json has no test accuracy"))
        else:
            res["_dir"], res["_draw"] = dirpath, sweep.get("hparams_draw")
            results.append(res)
    return results, problems


def select(results: list[dict]) -> dict[tuple, dict]:
    """Per (dataset, strategy, target, seed): over hyperparameter draws, training-domain validation
    picks the draw with the best ``val_acc``; oracle takes the best ``oracle_test_acc``."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in results:
        target = "+".join(r.get("target_domains") or ["?"])
        groups[(r.get("dataset", "?"), r.get("strategy", "?"), target, r.get("seed"))].append(r)
    chosen = {}
    for key, runs in groups.items():
        best = max(runs, key=lambda r: (r.get("val_acc") if r.get("val_acc") is not None else -1, -(r["_draw"] or 0)))
        oracles = [r["oracle_test_acc"] for r in runs if r.get("oracle_test_acc") is not None]
        chosen[key] = {"test": best["test_acc"], "val": best.get("val_acc"), "oracle": max(oracles) if oracles else None}
    return chosen


def mean_se(values: Sequence[float]) -> tuple[Optional[float], Optional[float], int]:
    """Mean and standard error (sample std / sqrt(n); None for n < 2) in %, and n."""
    vals = [100 * v for v in values if v is not None]
    n = len(vals)
    if not n:
        return None, None, 0
    mean = sum(vals) / n
    se = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1) / n) if n > 1 else None
    return mean, se, n


def _cell(stat: tuple) -> str:
    mean, se, n = stat
    if mean is None:
        return "-"
    return f"{mean:.1f} ± {se:.1f}" if se is not None else f"{mean:.1f}"


def dataset_tables(chosen: dict[tuple, dict], dataset: str) -> dict[str, Any]:
    """The three tables of one dataset: {"targets", "strategies", "tables": {name: {strategy: {column: stat}}}}."""
    keys = [k for k in chosen if k[0] == dataset]
    targets = sorted({k[2] for k in keys})
    strategies = sorted({k[1] for k in keys}, key=lambda s: (s != "erm", s))
    tables: dict[str, dict] = {"training-domain validation": {}, "oracle": {}, "in vs out of domain": {}}
    for s in strategies:
        seeds = sorted({k[3] for k in keys if k[1] == s}, key=str)
        per = {t: {seed: chosen.get((dataset, s, t, seed)) for seed in seeds} for t in targets}
        for name, field in (("training-domain validation", "test"), ("oracle", "oracle")):
            row = {t: mean_se([c[field] for c in per[t].values() if c is not None]) for t in targets}
            avgs = []
            for seed in seeds:
                cells = [per[t][seed] for t in targets]
                if all(c is not None and c[field] is not None for c in cells):
                    avgs.append(sum(c[field] for c in cells) / len(cells))
            row["Avg"] = mean_se(avgs)
            tables[name][s] = row
        ins, outs, gaps = [], [], []
        for seed in seeds:
            cells = [per[t][seed] for t in targets if per[t][seed] is not None and per[t][seed]["val"] is not None]
            if cells:
                ins.append(sum(c["val"] for c in cells) / len(cells))
                outs.append(sum(c["test"] for c in cells) / len(cells))
                gaps.append(ins[-1] - outs[-1])
        tables["in vs out of domain"][s] = {
            "in-domain (source val)": mean_se(ins), "out-of-domain (target test)": mean_se(outs), "gap (in - out)": mean_se(gaps),
        }
    return {"targets": targets, "strategies": strategies, "tables": tables}


TITLES = {
    "training-domain validation": "Model selection: training-domain validation (test accuracy on the held-out domain)",
    "oracle": "Model selection: oracle, an UPPER BOUND (selected on the held-out domain itself; not a fair comparison)",
    "in vs out of domain": "In-domain vs out-of-domain accuracy (training-domain validation)",
}


def _markdown_table(rows: dict[str, dict], columns: list[str]) -> list[str]:
    out = ["| Strategy | " + " | ".join(columns) + " | Seeds |", "|---|" + "---:|" * len(columns) + "---:|"]
    for strategy, row in rows.items():
        ns = sorted({row[c][2] for c in columns if row[c][2]})
        seeds = "-" if not ns else (str(ns[0]) if len(ns) == 1 else f"{ns[0]}-{ns[-1]}")
        out.append(f"| {strategy} | " + " | ".join(_cell(row[c]) for c in columns) + f" | {seeds} |")
    return out


def render(root: str, per_dataset: dict[str, dict], problems: list[tuple[str, str]], n_results: int) -> str:
    lines = [f"# vidlit report: {root}", "", f"{n_results} finished runs. Accuracy in %, mean ± standard error over seeds "
             "(Avg: per-seed mean over the held-out domains; Seeds: runs per cell).", ""]
    for dataset, info in per_dataset.items():
        lines += [f"## Dataset `{dataset}`", ""]
        for name, rows in info["tables"].items():
            columns = info["targets"] + ["Avg"] if name != "in vs out of domain" else list(next(iter(rows.values())).keys())
            lines += [f"### {TITLES[name]}", "", *_markdown_table(rows, columns), ""]
    if problems:
        lines += [f"## Runs without results ({len(problems)})", ""]
        lines += [f"- `{path}`: {why}" for path, why in problems]
        lines.append("")
    return "\n".join(lines)


def write_csv(path: str, dataset: str, info: dict) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["dataset", "table", "strategy", "column", "mean_pct", "se_pct", "n_seeds"])
        for name, rows in info["tables"].items():
            for strategy, row in rows.items():
                for column, (mean, se, n) in row.items():
                    w.writerow([dataset, name, strategy, column, "" if mean is None else round(mean, 4), "" if se is None else round(se, 4), n])


def write_chart(path: str, dataset: str, info: dict) -> None:
    """Grouped bars: held-out domains and Avg on x, one bar per strategy, SE as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = info["tables"]["training-domain validation"]
    columns = info["targets"] + ["Avg"]
    width = 0.8 / max(1, len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(columns) * max(1, len(rows)) ** 0.5), 4))
    for i, (strategy, row) in enumerate(rows.items()):
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(columns))]
        means = [row[c][0] or 0 for c in columns]
        errs = [row[c][1] if row[c][1] is not None else float("nan") for c in columns]  # nan: no error bar
        ax.bar(xs, means, width, yerr=errs, capsize=3, label=strategy)
    ax.set_xticks(range(len(columns)), columns)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{dataset}: held-out domain accuracy\n(training-domain validation; mean ± SE over seeds)", fontsize=10)
    ax.legend(title="strategy")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vidlit report", description="DomainBed-style tables from the results.json files under DIR.")
    p.add_argument("dir", help="folder to search (e.g. a sweep's --out)")
    p.add_argument("--out", help="where to write report.md, report_<dataset>.csv/.png (default: DIR)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if not os.path.isdir(args.dir):
        print(f"vidlit report: error: '{args.dir}' is not a folder; pass a sweep's --out folder or any folder of runs", file=sys.stderr)
        return 2
    results, problems = find_runs(args.dir)
    if not results and not problems:
        print(f"vidlit report: error: no run folders (results.json, sweep.json or config.yaml) under '{args.dir}'", file=sys.stderr)
        return 2
    chosen = select(results)
    per_dataset = {d: dataset_tables(chosen, d) for d in sorted({k[0] for k in chosen})}
    out = args.out or args.dir
    os.makedirs(out, exist_ok=True)
    text = render(args.dir, per_dataset, problems, len(results))
    print(text)
    with open(os.path.join(out, "report.md"), "w") as fh:
        fh.write(text)
    for dataset, info in per_dataset.items():
        write_csv(os.path.join(out, f"report_{dataset}.csv"), dataset, info)
        write_chart(os.path.join(out, f"report_{dataset}.png"), dataset, info)
    print(f"wrote {os.path.join(out, 'report.md')}" + "".join(f", report_{d}.csv, report_{d}.png" for d in per_dataset))
    return 0
