"""``python -m vidlit report DIR``: DomainBed-style tables from every ``results.json`` under DIR.

Runs are first grouped by their **settings**: every entry of the run's ``config.yaml`` except
seeds, held-out domains, paths, logging and display options (:data:`IGNORED`), and, for runs of
``sweep --n_hparams``, the entries the sweep searched over (read from each run's ``sweep.json``).
Runs whose settings differ (backbone, epochs, clip size, frames, dataset root, data options,
strategy options outside the search) are never averaged or selected together: each settings
group is its own table, headed by the settings that differ between the groups.

Per group: rows are strategies, columns each held-out domain and Avg, cells the accuracy (%)
as mean +- standard error over seeds, computed as DomainBed's ``collect_results.format_mean``
does (``np.std(list(data) / np.sqrt(len(data)))``): the std with ddof=0, divided by sqrt(n)
(:func:`mean_se`; the sample std, ddof=1, would give sqrt(n / (n - 1)) times more: x 1.22 at
3 seeds). The Seeds column gives the seeds per cell (a range when they differ; a cell with fewer
seeds than the most in its row then says its own, e.g. ``(n=1)``); a cell of one seed is the
value alone, with no standard error (never ``± 0.0``). The cells are for

* training-domain validation: the checkpoint (and, among the hyperparameter draws of one sweep,
  the draw) with the best source-domain validation accuracy, ties broken by the lower
  source-domain validation loss (``val_loss``; without it, the lowest draw): ``test_acc``;
* oracle, an upper bound: the epoch (and draw) with the best target-domain accuracy:
  ``oracle_test_acc``;
* in-domain (source validation, ``val_acc``) vs out-of-domain (target test, ``test_acc``);
* for weight-averaged runs (``--average.method swad|ema``), the same runs without averaging (their
  epoch-selected checkpoint, :func:`vidlit.run.results.unaveraged`) and the paired gain from averaging.

Avg is computed per seed (mean over the held-out domains, for seeds that have all of them), then
mean +- SE over those seeds.

Per group, every strategy is also compared with a reference (``--reference``, default erm), paired:
its training-domain-validation test accuracy minus the reference's, over the (held-out domain,
seed) pairs both have; mean +- SE (:func:`mean_se`) over the pairs, a normal 95% interval (mean +-
1.96 SE), n, and a verdict (:func:`verdict`): ``better``/``worse`` when the interval excludes 0,
``within noise`` when it contains it, ``too few pairs`` for n < 2.

Run folders without a usable ``results.json`` (failed, killed or still running) are listed at the
end, never silently dropped. Writes ``report.md`` (also printed), ``report_<dataset>[-<k>].csv`` and
``report_<dataset>[-<k>].png`` (bar chart) per group into ``--out``, by default
``reports/<name of DIR>`` under the current folder (:func:`default_out`), never into the folder of runs.
"""
from __future__ import annotations

import argparse
import csv
import inspect
import json
import math
import os
import sys
from collections import defaultdict
from typing import Any, Optional, Sequence

from vidlit.run.files import RESULTS_FILE, SWEEP_FILE
from vidlit.run.results import unaveraged

SKIP_DIRS = {"wandb", "checkpoints", "samples"}  # W&B keeps a copy of results.json under wandb/
RUN_MARKERS = {RESULTS_FILE, SWEEP_FILE, "config.yaml"}
CONFIG_FILE = "config.yaml"
#: config entries that do not change what a run computes (or that the report shows as rows and
#: columns): seeds, held-out domains, where things are written, logging and display
IGNORED = {
    "seed_everything", "data.seed", "model.seed", "data.target_domains", "strategy", "dataset", "ckpt_path",
    "trainer.default_root_dir", "trainer.logger", "trainer.enable_progress_bar", "trainer.enable_model_summary",
    "trainer.enable_autolog_hparams", "trainer.log_every_n_steps", "data.num_workers", "data.cache_dir",
    "checkpoint.dirpath", "checkpoint.verbose", "weights_only", "config", "print_config",
}
IGNORED_PREFIXES = ("wandb.", "saliency.")  # saliency: a diagnostic after testing, not what is trained
#: shown in every table's "Settings" line (when present)
SUMMARY_KEYS = ("model.backbone", "trainer.max_epochs", "data.size", "data.num_frames", "data.frame_stride", "data.num_clips", "data.root")
DEFAULT_REFERENCE = "erm"  #: the strategy the paired comparison subtracts (--reference)
REPORTS_DIR = "reports"  #: default --out: reports/<name of DIR> under the current folder
ALIASES = {"backbone": "model.backbone", "epochs": "trainer.max_epochs", "max_epochs": "trainer.max_epochs"}


class ReportError(ValueError):
    """A report that cannot be made as asked; the message says which flag to use."""


def _read_json(path: str) -> Optional[dict]:
    try:
        with open(path) as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(data, dict) and not (prefix and "class_path" in data):
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    out[prefix[:-1]] = data
    return out


def _ignored(key: str, value: Any) -> bool:
    if key in IGNORED or key.startswith(IGNORED_PREFIXES):
        return True
    if key == "trainer.callbacks":  # progress bars change nothing; other callbacks (early stopping) do
        items = value if isinstance(value, list) else [value]
        return all(value is None or "ProgressBar" in str(v.get("class_path", "") if isinstance(v, dict) else v) for v in items)
    return False


def run_settings(run_dir: str) -> Optional[dict[str, Any]]:
    """The run's settings from its ``config.yaml`` (flat ``section.key`` names, without
    :data:`IGNORED`), or None when the file is missing or unreadable."""
    import yaml

    try:
        with open(os.path.join(run_dir, CONFIG_FILE)) as fh:
            config = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(config, dict):
        return None
    return {k: v for k, v in _flatten(config).items() if not _ignored(k, v)}


def _sweep_root(run_dir: str, res: dict, draw: int) -> Optional[str]:
    """``<out>`` of a sweep run ``<out>/<dataset>/<strategy>/hp=<k>/target=<d>/seed=<s>``."""
    parts = os.path.normpath(os.path.abspath(run_dir)).split(os.sep)
    if len(parts) < 6 or parts[-3] != f"hp={draw}" or not parts[-2].startswith("target=") or not parts[-1].startswith("seed="):
        return None
    return os.sep.join(parts[:-5])


def find_runs(root: str) -> tuple[list[dict], list[tuple[str, str]]]:
    """(usable results, [(run folder, why it has no usable results)]) under ``root``. Each result
    gets ``_dir``, ``_draw`` (the sweep's hyperparameter draw, or None), ``_hparams`` (that
    draw's overrides), ``_settings`` (:func:`run_settings`) and ``_pool`` (what selection across
    draws may compare it with: its sweep, or only itself)."""
    results, problems = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        if not RUN_MARKERS & set(filenames):
            continue
        sweep = _read_json(os.path.join(dirpath, SWEEP_FILE)) or {}
        if RESULTS_FILE not in filenames:
            if set(filenames) & RUN_MARKERS == {SWEEP_FILE} and "status" not in sweep:
                continue  # a sweep-level record, not a run
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
            draw = sweep.get("hparams_draw")
            res["_dir"], res["_draw"], res["_hparams"] = dirpath, draw, dict(sweep.get("hparams") or {})
            res["_settings"] = run_settings(dirpath)
            root_of_sweep = _sweep_root(dirpath, res, draw) if draw is not None else None
            if sweep.get("wandb_sweep"):  # a `wandb agent` run: its draws are the runs of that W&B sweep
                root_of_sweep = f"wandb:{sweep['wandb_sweep']}"
            res["_pool"] = ("sweep", root_of_sweep) if root_of_sweep else ("run", dirpath)
            results.append(res)
    return results, problems


def _declared_classes() -> dict[str, dict]:
    """Every class of ``vidlit/models/strategy.py`` and ``strategies/*.py`` as its source declares
    it, read without importing (``report`` stays clear of torch): ``{class: {"bases", "defaults",
    "params", "registered", "exact"}}``; ``exact`` is False when a default is not a literal."""
    import ast

    from vidlit.utils.registry import plugin_folder

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    files = [os.path.join(here, "models", "strategy.py")]
    folder = plugin_folder("strategies")
    if folder and os.path.isdir(folder):
        files += sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".py") and not f.startswith("_"))
    classes: dict[str, dict] = {}
    for path in files:
        try:
            with open(path) as fh:
                tree = ast.parse(fh.read())
        except (OSError, SyntaxError):
            continue
        for node in tree.body:
            if not isinstance(node, ast.ClassDef):
                continue
            registered = [d.args[0].value for d in node.decorator_list
                          if isinstance(d, ast.Call) and getattr(d.func, "id", None) == "register_strategy"
                          and d.args and isinstance(d.args[0], ast.Constant)]
            info = {"bases": [b.id for b in node.bases if isinstance(b, ast.Name)], "defaults": {}, "params": [],
                    "registered": registered, "exact": True, "has_init": False}
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    info["has_init"] = True
                    args = item.args.args[1:] + item.args.kwonlyargs
                    defaults = [None] * (len(item.args.args[1:]) - len(item.args.defaults)) + list(item.args.defaults) + list(item.args.kw_defaults)
                    for arg, default in zip(args, defaults):
                        info["params"].append(arg.arg)
                        if default is None:
                            continue
                        try:
                            info["defaults"][arg.arg] = ast.literal_eval(default)
                        except ValueError:
                            info["exact"] = False
            classes[node.name] = info
    return classes


def _declared_chain(name: Optional[str]) -> Optional[list[dict]]:
    """The declared classes of registered strategy ``name``, base first; None when it cannot be
    read exactly from the source (then :func:`_strategy_defaults` imports it)."""
    classes = _declared_classes()
    cls = next((c for c, info in classes.items() if str(name).lower() in [r.lower() for r in info["registered"]]), None)
    chain: list[dict] = []
    while cls is not None:
        info = classes.get(cls)
        if info is None or not info["exact"] or len(info["bases"]) > 1:
            return None
        chain.append(info)
        if cls == "Strategy":
            return list(reversed(chain))
        cls = info["bases"][0] if info["bases"] else None
    return None


def _strategy_defaults(name: Optional[str]) -> dict[str, Any]:
    """``{"model.NAME": default}`` of a registered strategy (the most derived class's default wins:
    dann's own ``betas`` default, not the base class's); empty when the strategy is unknown here.
    Read from the source when every default is a literal, else from the imported class."""
    chain = _declared_chain(name)
    if chain is not None:
        out: dict[str, Any] = {}
        for info in chain:
            out.update({f"model.{k}": v for k, v in info["defaults"].items()})
        return out
    from vidlit.models.strategy import STRATEGIES

    try:
        cls = STRATEGIES.get(str(name))
    except Exception:  # noqa: BLE001 - a run of a strategy that no longer exists: compare raw values
        return {}
    out = {}
    for klass in reversed(cls.__mro__):
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        try:
            params = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            continue
        for p in params:
            if p.default is not inspect.Parameter.empty and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                out[f"model.{p.name}"] = p.default
    return out


def _same(a: Any, b: Any) -> bool:
    return _key({"v": a}) == _key({"v": b})


def _strategy_params() -> set[str]:
    """``model.*`` names every strategy has (the base class's arguments)."""
    base = _declared_classes().get("Strategy")
    if base is not None and base["params"]:
        return {f"model.{n}" for n in base["params"]}
    from vidlit.models.strategy import Strategy

    return {f"model.{n}" for n in inspect.signature(Strategy.__init__).parameters if n not in ("self", "args", "kwargs")}


def _fmt(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def _sortable(value: Any) -> tuple:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value, "")
    return (1, 0, _fmt(value))


def _key(d: dict) -> str:
    return json.dumps(d, sort_keys=True, default=str)


def group_runs(results: list[dict]) -> list[dict]:
    """Settings groups: ``{"dataset", "shared", "differs", "searched", "runs"}``, each run with
    ``_row`` (its row: the strategy, plus its own options when a strategy has several variants in
    the group). ``shared`` holds the settings every strategy has; ``differs`` the names whose
    values differ between the groups of the same dataset."""
    # the sweep's search space: every name a draw of that sweep overrode (draw 0 overrides none)
    space: dict[tuple, set[str]] = defaultdict(set)
    for r in results:
        if r["_pool"][0] == "sweep":
            space[(r["_pool"], r.get("dataset"), r.get("strategy"))].update(r["_hparams"])
    base = _strategy_params()
    by_key: dict[tuple, dict] = {}
    for r in results:
        settings = r["_settings"]
        if settings is None:
            settings = {"config.yaml": "missing", "model.backbone": r.get("backbone")}
        searched = space.get((r["_pool"], r.get("dataset"), r.get("strategy")), set()) if r["_pool"][0] == "sweep" else set()
        # strategy options at that strategy's own default are "default": strategies with different
        # defaults (dann's betas) are still compared in one table
        defaults = _strategy_defaults(r.get("strategy"))
        settings = {k: v for k, v in settings.items() if k not in searched
                    and not (k.startswith("model.") and k != "model.backbone" and k in defaults and _same(v, defaults[k]))}
        shared = {k: v for k, v in settings.items() if not k.startswith("model.") or k in base}
        r["_own"] = {k: v for k, v in settings.items() if k not in shared}
        r["_searched"] = sorted(searched)
        g = by_key.setdefault((r.get("dataset", "?"), _key(shared)), {"dataset": r.get("dataset", "?"), "shared": shared, "runs": [], "searched": {}})
        g["runs"].append(r)
        g["searched"].setdefault(r.get("strategy", "?"), set()).update(searched)
    groups = list(by_key.values())
    for dataset in {g["dataset"] for g in groups}:
        same = [g for g in groups if g["dataset"] == dataset]
        names = sorted(set().union(*(g["shared"] for g in same)))
        differs = [n for n in names if len({_key({"v": g["shared"].get(n)}) for g in same}) > 1] if len(same) > 1 else []
        for g in same:
            g["differs"] = differs
    for g in groups:
        g["searched"] = {s: sorted(v) for s, v in sorted(g["searched"].items(), key=lambda kv: _row_order(kv[0])) if v}
        variants: dict[str, set[str]] = defaultdict(set)
        for r in g["runs"]:
            variants[r.get("strategy", "?")].add(_key(r["_own"]))
        for r in g["runs"]:
            s = r.get("strategy", "?")
            if len(variants[s]) == 1:
                r["_row"] = s
            else:
                others = [json.loads(v) for v in variants[s]]
                diff = sorted(k for k in set().union(*others) if len({_key({"v": o.get(k)}) for o in others}) > 1)
                r["_row"] = f"{s} (" + ", ".join(f"{k.removeprefix('model.')}={_setting(r['_own'], k)}" for k in diff) + ")"
    groups.sort(key=lambda g: (g["dataset"], [_sortable(g["shared"][n]) if n in g["shared"] else (-1, 0, "") for n in g["differs"]]))
    return groups


def _best(runs: list[dict]) -> dict:
    """Training-domain validation over draws: the best ``val_acc``; among ties the lower
    ``val_loss`` when every tied run has one, else the lowest draw."""
    top = max((r.get("val_acc") if r.get("val_acc") is not None else -1.0) for r in runs)
    tied = [r for r in runs if (r.get("val_acc") if r.get("val_acc") is not None else -1.0) == top]
    if len(tied) > 1 and all(r.get("val_loss") is not None for r in tied):
        return min(tied, key=lambda r: (r["val_loss"], _sortable(r["_draw"] or 0)))
    return min(tied, key=lambda r: _sortable(r["_draw"] or 0))


def select(runs: list[dict]) -> dict[tuple, dict]:
    """Per (row, target, seed) of one settings group: over the hyperparameter draws of one sweep,
    training-domain validation picks :func:`_best`; oracle takes the best ``oracle_test_acc``.
    Raises :class:`ReportError` when a cell holds runs that are not draws of one sweep."""
    cells: dict[tuple, list[dict]] = defaultdict(list)
    for r in runs:
        target = "+".join(r.get("target_domains") or ["?"])
        cells[(r.get("_row", r.get("strategy", "?")), target, r.get("seed"))].append(r)
    chosen = {}
    for key, cands in cells.items():
        pools = {r["_pool"] for r in cands}
        if len(pools) > 1:
            dirs = sorted(r["_dir"] for r in cands)
            raise ReportError(
                f"{len(cands)} runs of {key[0]} target={key[1]} seed={key[2]} have the same settings but are not draws of one "
                f"sweep ({', '.join(dirs)}); choose with --exclude FOLDER (or report their folders separately)"
            )
        best = _best(cands)
        oracles = [r["oracle_test_acc"] for r in cands if r.get("oracle_test_acc") is not None]
        raw = unaveraged(best)
        raw_test = raw["test_acc"] if raw is not None else None
        alike = raw is not None and _tested_alike(best, raw)
        chosen[key] = {"test": best["test_acc"], "val": best.get("val_acc"), "oracle": max(oracles) if oracles else None,
                       "dir": best["_dir"], "draws": len(cands), "fg": _foreground(best), "raw": raw_test if alike else None,
                       "gain": None if not alike or raw_test is None or best["test_acc"] is None else best["test_acc"] - raw_test}
    return chosen


def _tested_alike(res: dict, raw: dict) -> bool:
    """Whether an averaged run's model and the same run without averaging were tested alike (the
    same ``--data.test_views`` and ``--tta.*``), so that their difference is the effect of
    averaging. Runs written before ``fit`` recorded both evaluations: the side without averaging
    came from the history (one view, no adaptation), alike only when the test was plain too."""
    ev_avg, ev_raw = (res.get("average") or {}).get("evaluation"), raw.get("evaluation")
    if ev_avg and ev_raw:
        return ev_avg == ev_raw
    views = str((res.get("_settings") or {}).get("data.test_views") or "1").lower()
    return not (res.get("tta") or {}).get("method") and views in ("1", "1x1", "none", "null")


def _foreground(res: dict) -> Optional[float]:
    """The run's foreground share (vidlit.saliency), averaged over its target domains; None without."""
    vals = [v for v in (res.get("foreground_share") or {}).values() if v is not None]
    return sum(vals) / len(vals) if vals else None


def mean_se(values: Sequence[float]) -> tuple[Optional[float], Optional[float], int]:
    """Mean and standard error in %, and n. The standard error is DomainBed's: std with ddof=0
    divided by sqrt(n), i.e. sqrt(sum((v - mean)^2) / n) / sqrt(n); None for n < 2 (one seed says
    nothing about the spread: 0 would read as an exact result)."""
    vals = [100 * v for v in values if v is not None]
    n = len(vals)
    if not n:
        return None, None, 0
    mean = sum(vals) / n
    se = math.sqrt(sum((v - mean) ** 2 for v in vals) / n) / math.sqrt(n) if n > 1 else None
    return mean, se, n


def _cell(stat: tuple, most: int = 0) -> str:
    """``71.2 ± 1.3`` (n >= 2 seeds), ``71.2`` (one seed: no standard error), ``-`` (no run); `` (n=k)``
    added when the cell has fewer seeds than ``most`` (the most of its row, given in the Seeds column)."""
    mean, se, n = stat
    if mean is None:
        return "-"
    text = f"{mean:.1f} ± {se:.1f}" if se is not None else f"{mean:.1f}"
    return text + (f" (n={n})" if n < most else "")


def _row_order(row: str) -> tuple:
    return (not row.startswith("erm"), row)


def group_tables(chosen: dict[tuple, dict]) -> dict[str, Any]:
    """The three tables of one settings group: {"targets", "strategies", "tables": {name: {row: {column: stat}}}}."""
    keys = list(chosen)
    targets = sorted({k[1] for k in keys})
    strategies = sorted({k[0] for k in keys}, key=_row_order)
    tables: dict[str, dict] = {"training-domain validation": {}, "oracle": {}, "in vs out of domain": {}}
    with_fg = any(c.get("fg") is not None for c in chosen.values())
    with_raw = any(c.get("raw") is not None for c in chosen.values())
    extra = ((("without averaging", "raw"), ("averaging gain", "gain")) if with_raw else ()) + ((("foreground share", "fg"),) if with_fg else ())
    for name, _ in extra:
        tables[name] = {}
    for s in strategies:
        seeds = sorted({k[2] for k in keys if k[0] == s}, key=str)
        per = {t: {seed: chosen.get((s, t, seed)) for seed in seeds} for t in targets}
        for name, field in (("training-domain validation", "test"), ("oracle", "oracle")) + extra:
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


Z95 = 1.96  #: a normal 95% interval: mean +- 1.96 standard errors


def verdict(mean: Optional[float], se: Optional[float], n: int) -> str:
    """``better`` / ``worse`` when the 95% interval excludes 0, ``within noise`` when it contains
    it, ``too few pairs`` for n < 2 (no spread to judge by)."""
    if n < 2 or mean is None or se is None:
        return "too few pairs"
    lo, hi = mean - Z95 * se, mean + Z95 * se
    if lo <= 0 <= hi:
        return "within noise"
    return "better" if mean > 0 else "worse"


def paired_differences(chosen: dict[tuple, dict], reference: str) -> dict[str, tuple]:
    """Per row other than ``reference``: (mean, se, n) in points of its test accuracy minus the
    reference's, over the (held-out domain, seed) pairs both have (training-domain validation);
    :func:`mean_se`'s standard error (DomainBed's). Empty when ``reference`` has no runs here."""
    ref = {(k[1], k[2]): c["test"] for k, c in chosen.items() if k[0] == reference and c.get("test") is not None}
    if not ref:
        return {}
    rows = sorted({k[0] for k in chosen if k[0] != reference}, key=_row_order)
    out = {}
    for s in rows:
        diffs = [c["test"] - ref[(k[1], k[2])] for k, c in sorted(chosen.items(), key=lambda kv: (kv[0][1], str(kv[0][2])))
                 if k[0] == s and c.get("test") is not None and (k[1], k[2]) in ref]
        out[s] = mean_se(diffs)
    return out


def _signed(value: float) -> str:
    text = f"{value:+.1f}"
    return "0.0" if text in ("+0.0", "-0.0") else text


def _comparison_table(rows: dict[str, tuple], reference: str) -> list[str]:
    out = [f"| Strategy | minus {reference} (points) | 95% interval | Pairs (n) | Verdict |", "|---|---:|---:|---:|---|"]
    for s, (mean, se, n) in rows.items():
        if mean is None:
            diff, interval = "-", "-"
        elif se is None:
            diff, interval = _signed(mean), "-"  # one pair: the value alone, no interval
        else:
            diff, interval = f"{_signed(mean)} ± {se:.1f}", f"[{_signed(mean - Z95 * se)}, {_signed(mean + Z95 * se)}]"
        out.append(f"| {s} | {diff} | {interval} | {n} | {verdict(mean, se, n)} |")
    return out


def comparison_title(reference: str) -> str:
    return (f"Paired difference vs {reference}: each strategy's accuracy minus {reference}'s on the same held-out domain "
            f"and seed (training-domain validation), in points; mean ± standard error over the pairs, 95% interval "
            f"mean ± 1.96 SE; within noise = the interval contains 0; too few pairs = n < 2")


TITLES = {
    "training-domain validation": "Model selection: training-domain validation (test accuracy on the held-out domain)",
    "oracle": "Model selection: oracle, an UPPER BOUND (selected on the held-out domain itself; not a fair comparison)",
    "in vs out of domain": "In-domain vs out-of-domain accuracy (training-domain validation)",
    "without averaging": "The same runs without weight averaging: the epoch-selected checkpoint of each averaged run "
                         "(averaging leaves the training trajectory unchanged; accuracy on the held-out domain at that epoch)",
    "averaging gain": "Gain from weight averaging (points): averaged minus epoch-selected model, paired per run "
                      "(only runs whose two models were tested alike: the same test views and test-time adaptation)",
    "foreground share": "Foreground share (%): Grad-CAM mass inside the moving object's mask on the held-out domain "
                        "(training-domain validation checkpoint; low = the model looks at the background; vidlit.saliency)",
}


def _markdown_table(rows: dict[str, dict], columns: list[str]) -> list[str]:
    out = ["| Strategy | " + " | ".join(columns) + " | Seeds |", "|---|" + "---:|" * len(columns) + "---:|"]
    for strategy, row in rows.items():
        ns = sorted({row[c][2] for c in columns if row[c][2]})
        seeds = "-" if not ns else (str(ns[0]) if len(ns) == 1 else f"{ns[0]}-{ns[-1]}")
        out.append(f"| {strategy} | " + " | ".join(_cell(row[c], ns[-1] if ns else 0) for c in columns) + f" | {seeds} |")
    return out


def _setting(settings: dict, name: str) -> str:
    if name not in settings and name.startswith("model."):
        return "default"  # the strategy's own default
    return _fmt(settings.get(name))


def _settings_text(shared: dict, names: Sequence[str], all_names: bool = False) -> str:
    return ", ".join(f"{n}={_setting(shared, n)}" for n in names if all_names or n in shared) or "-"


def _short_settings(shared: dict) -> str:
    """``tiny3d, 12 epochs, 112px, 16 frames`` (what is known of them)."""
    parts = []
    if shared.get("model.backbone"):
        parts.append(str(shared["model.backbone"]))
    if shared.get("trainer.max_epochs") is not None:
        parts.append(f"{shared['trainer.max_epochs']} epochs")
    if shared.get("data.size") is not None:
        parts.append(f"{shared['data.size']}px")
    if shared.get("data.num_frames") is not None:
        parts.append(f"{shared['data.num_frames']} frames")
    return ", ".join(parts) or "settings unknown"


def _stem(dataset: str, index: int, count: int) -> str:
    return f"report_{dataset}" if count == 1 else f"report_{dataset}-{index}"


def render(root: str, groups: list[dict], problems: list[tuple[str, str]], n_results: int) -> str:
    lines = [f"# vidlit report: {root}", "", f"{n_results} finished runs. Accuracy in %, mean ± standard error over seeds "
             "as in DomainBed: std (ddof=0) / sqrt(n); one seed: the value alone, no error. Avg: per-seed mean over "
             "the held-out domains. Seeds: runs per cell (a range when they differ: a cell with fewer than the row's "
             "most says its own, (n=k)). Runs with different settings are in different tables.", ""]
    for g in groups:
        same = [x for x in groups if x["dataset"] == g["dataset"]]
        k = same.index(g) + 1
        head = f"## Dataset `{g['dataset']}`"
        if len(same) > 1:
            head += f" ({k} of {len(same)}): " + _settings_text(g["shared"], g["differs"], all_names=True)
        lines += [head, "", f"Settings: {_settings_text(g['shared'], SUMMARY_KEYS)}.", ""]
        if len(same) > 1:
            lines += [f"The {len(same)} tables of `{g['dataset']}` differ in: " + ", ".join(g["differs"]) + ".", ""]
        if g["searched"]:
            lines += ["Hyperparameter search (" + "; ".join(f"{s}: {', '.join(n)}" for s, n in g["searched"].items())
                      + "): per held-out domain and seed, the draw of the sweep with the best source-domain validation "
                      "accuracy (ties: lower source-domain validation loss).", ""]
        stem = _stem(g["dataset"], k, len(same))
        lines += [f"Files: {stem}.csv, {stem}.png", ""]
        info = g["info"]
        for name, rows in info["tables"].items():
            columns = info["targets"] + ["Avg"] if name != "in vs out of domain" else list(next(iter(rows.values())).keys())
            lines += [f"### {TITLES[name]}", "", *_markdown_table(rows, columns), ""]
        reference = g.get("reference", DEFAULT_REFERENCE)
        comparison = g.get("comparison") or {}
        if comparison:
            lines += [f"### {comparison_title(reference)}", "", *_comparison_table(comparison, reference), ""]
        elif reference not in info["strategies"]:
            lines += [f"No paired comparison in this table: no `{reference}` runs (choose the reference with --reference NAME).", ""]
    if problems:
        lines += [f"## Runs without results ({len(problems)})", ""]
        lines += [f"- `{path}`: {why}" for path, why in problems]
        lines.append("")
    return "\n".join(lines)


def write_csv(path: str, dataset: str, info: dict, settings: str = "", comparison: Optional[dict] = None,
              reference: str = "") -> None:
    """One row per cell; the paired comparison's rows (table ``paired difference vs <reference>``,
    column ``difference``) also fill ``ci95_low_pct``, ``ci95_high_pct`` and ``verdict``, and their
    ``n_seeds`` is the number of (held-out domain, seed) pairs."""
    def num(x: Optional[float]) -> Any:
        return "" if x is None else round(x, 4)

    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["dataset", "settings", "table", "strategy", "column", "mean_pct", "se_pct", "n_seeds",
                    "ci95_low_pct", "ci95_high_pct", "verdict"])
        for name, rows in info["tables"].items():
            for strategy, row in rows.items():
                for column, (mean, se, n) in row.items():
                    w.writerow([dataset, settings, name, strategy, column, num(mean), num(se), n, "", "", ""])
        for strategy, (mean, se, n) in (comparison or {}).items():
            lo, hi = (mean - Z95 * se, mean + Z95 * se) if se is not None else (None, None)
            w.writerow([dataset, settings, f"paired difference vs {reference}", strategy, "difference", num(mean), num(se), n,
                        num(lo), num(hi), verdict(mean, se, n)])


def chart_figure(title: str, info: dict, chance: Optional[float] = None):
    """Grouped bars: held-out domains and Avg on x, one bar per strategy, SE as error bars, each
    bar's value written above it, chance level as a dashed line, the legend outside the axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = info["tables"]["training-domain validation"]
    columns = info["targets"] + ["Avg"]
    width = 0.8 / max(1, len(rows))
    fig, ax = plt.subplots(figsize=(max(6.5, 1.4 * len(columns) * max(1, len(rows)) ** 0.5 + 2), 4.2))
    for i, (strategy, row) in enumerate(rows.items()):
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(columns))]
        means = [row[c][0] if row[c][0] is not None else 0.0 for c in columns]
        errs = [row[c][1] if row[c][1] is not None else float("nan") for c in columns]  # nan: no error bar
        bars = ax.bar(xs, means, width, yerr=errs, capsize=3, label=strategy)
        ax.bar_label(bars, labels=[_cell((row[c][0], None, 1)) for c in columns], padding=2, fontsize=7)
    if chance is not None:
        ax.axhline(chance, color="0.3", linestyle="--", linewidth=1, label=f"chance ({chance:.1f}%)")
    ax.set_xticks(range(len(columns)), columns)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 108)
    ax.set_title(title, fontsize=9)
    ax.legend(title="strategy", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, fontsize=8)
    fig.tight_layout()
    return fig


def write_chart(path: str, title: str, info: dict, chance: Optional[float] = None) -> None:
    import matplotlib.pyplot as plt

    fig = chart_figure(title, info, chance)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _chance(runs: list[dict]) -> Optional[float]:
    counts = {len(r["class_names"]) for r in runs if r.get("class_names")}
    return 100.0 / counts.pop() if len(counts) == 1 else None


def _parse_where(items: Sequence[str]) -> list[tuple[str, Any]]:
    import yaml

    out = []
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip().removeprefix("--")
        if not sep or not name:
            raise ReportError(f"--where '{item}': expected KEY=VALUE, e.g. --where trainer.max_epochs=12 or --where model.backbone=r3d_18")
        out.append((ALIASES.get(name, name), yaml.safe_load(value) if value.strip() else None))
    return out


def filter_runs(results: list[dict], where: Sequence[str], exclude: Sequence[str]) -> list[dict]:
    """Runs whose settings match every ``--where KEY=VALUE`` and whose folder contains none of ``--exclude``."""
    conds = _parse_where(where)
    known = set().union(*((r["_settings"] or {}) for r in results)) if results else set()
    for name, _ in conds:
        if name not in known:
            close = sorted(k for k in known if name.split(".")[-1] in k)[:5]
            raise ReportError(f"--where {name}: no run has that setting" + (f" (did you mean {', '.join(close)}?)" if close else ""))
    kept = []
    for r in results:
        if any(x and (x in r["_dir"] or os.path.abspath(x) == os.path.abspath(r["_dir"])) for x in exclude):
            continue
        s = r["_settings"] or {}
        if all(name in s and (s[name] == value or str(s[name]) == str(value)) for name, value in conds):
            kept.append(r)
    return kept


def default_out(root: str) -> str:
    """``reports/<name of root>`` under the current folder: the report's files stay out of the folder
    of runs (a sweep's ``--out`` holds runs only)."""
    name = os.path.basename(os.path.normpath(os.path.abspath(root))) or "report"
    return os.path.join(REPORTS_DIR, name)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vidlit report", description="DomainBed-style tables from the results.json files under DIR.")
    p.add_argument("dir", help="folder to search (e.g. a sweep's --out)")
    p.add_argument("--out", help="where to write report.md, report_<dataset>.csv/.png (default: reports/<name of DIR> "
                   "under the current folder, outside the folder of runs)")
    p.add_argument("--reference", default=DEFAULT_REFERENCE, metavar="NAME",
                   help=f"the strategy every other one is compared with, paired per held-out domain and seed (default: {DEFAULT_REFERENCE})")
    p.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                   help="only runs with this setting (config.yaml name), e.g. trainer.max_epochs=12 or model.backbone=r3d_18; repeatable")
    p.add_argument("--exclude", action="append", default=[], metavar="FOLDER",
                   help="leave out the runs whose folder is or contains FOLDER; repeatable")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if not os.path.isdir(args.dir):
        print(f"vidlit report: error: '{args.dir}' is not a folder; pass a sweep's --out folder or any folder of runs", file=sys.stderr)
        return 2
    results, problems = find_runs(args.dir)
    if not results and not problems:
        print(f"vidlit report: error: no run folders (results.json, sweep.json or config.yaml) under '{args.dir}'", file=sys.stderr)
        return 2
    try:
        n_found = len(results)
        results = filter_runs(results, args.where, args.exclude)
        if n_found and not results:
            raise ReportError(f"no run of the {n_found} under '{args.dir}' matches --where/--exclude")
        groups = group_runs(results)
        for g in groups:
            g["chosen"] = select(g["runs"])
            g["info"] = group_tables(g["chosen"])
            g["reference"] = args.reference
            g["comparison"] = paired_differences(g["chosen"], args.reference)
        if args.reference != DEFAULT_REFERENCE and groups and not any(args.reference in g["info"]["strategies"] for g in groups):
            rows = sorted({s for g in groups for s in g["info"]["strategies"]}, key=_row_order)
            raise ReportError(f"--reference {args.reference}: no runs of it here (rows: {', '.join(rows)})")
    except ReportError as err:
        print(f"vidlit report: error: {err}", file=sys.stderr)
        return 2
    out = args.out or default_out(args.dir)
    os.makedirs(out, exist_ok=True)
    text = render(args.dir, groups, problems, len(results))
    print(text)
    with open(os.path.join(out, "report.md"), "w") as fh:
        fh.write(text)
    written = []
    for g in groups:
        same = [x for x in groups if x["dataset"] == g["dataset"]]
        k = same.index(g) + 1
        stem = os.path.join(out, _stem(g["dataset"], k, len(same)))
        differing = _settings_text(g["shared"], g["differs"], all_names=True) if len(same) > 1 else ""
        write_csv(stem + ".csv", g["dataset"], g["info"], differing, g["comparison"], g["reference"])
        title = f"{g['dataset']}: held-out domain accuracy ({_short_settings(g['shared'])})\n" \
                "training-domain validation; mean ± SE over seeds"
        write_chart(stem + ".png", title, g["info"], _chance(g["runs"]))
        written += [os.path.basename(stem) + ".csv", os.path.basename(stem) + ".png"]
    print(f"wrote {os.path.join(out, 'report.md')}" + "".join(f", {w}" for w in written) + f" (in {os.path.abspath(out)})")
    return 0
