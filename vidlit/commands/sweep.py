"""``python -m vidlit sweep``: a DomainBed-style grid of ``fit`` runs, run locally or by W&B agents.

The grid is strategies x held-out domains x seeds (x hyperparameter draws). Each run is a normal
``python -m vidlit fit`` subprocess in its own folder
``<out>/<dataset>/<strategy>[/hp=<k>]/target=<domain>/seed=<seed>``, up to ``--parallel`` at a
time. Rerunning the same command skips finished runs (``results.json`` present) and resumes
broken ones (``checkpoints/last.ckpt`` present: ``--ckpt_path last``). Any other flag
(``--trainer.*``, ``--data.*``, ``--model.*``, ``--wandb.*``, ``--backbone``, ``--config``) is
passed to every run. ``--wandb`` writes a W&B sweep config instead of running anything. fit's own
names for what the sweep sets are accepted with their fit meaning: ``--seed_everything N`` is
``--seeds N`` and ``--trainer.default_root_dir DIR`` is ``--out DIR`` (giving both is an error).
When the runs end, the sweep prints the tables of ``python -m vidlit report OUT`` (finished runs
only; failed ones are listed).

Hyperparameter draws (``--n_hparams K``) come from each strategy's own search space
(``Strategy.search_space()``: the shared base entries lr, weight decay, dropout plus the method's
own, declared beside its code as ``SEARCH_SPACE``). ``--hparam NAME=SPACE`` adds or replaces an
entry for the strategies that accept NAME (a name no strategy of the grid accepts is an error).
Draw ``k`` of a strategy is seeded by a hash of (strategy, dataset, k, name), so it stays the same
when code, the grid or the search space's other entries change; draw 0 is the defaults.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from vidlit.run.files import SWEEP_FILE
from vidlit.utils.errors import VidlitError
from vidlit.utils.io import write_json

LOG_FILE = "sweep.log"
#: fit flags the sweep sets per run and does not take (fit's --seed_everything and
#: --trainer.default_root_dir it takes, as its own --seeds N and --out DIR: one name, one meaning)
OWN_FLAGS = ("--strategy", "--data.target_domains", "--ckpt_path")
DEFAULT_SEEDS = [0, 1, 2]
DEFAULT_OUT = "sweeps"


class SweepError(VidlitError):
    """A bad sweep command line; the message says what to change."""


@dataclass(frozen=True)
class Param:
    """One hyperparameter's search space: ``NAME=loguniform:LOW:HIGH``, ``uniform:LOW:HIGH``,
    ``int:LOW:HIGH`` or ``choice:A,B,...``."""

    name: str
    kind: str
    args: tuple

    @classmethod
    def parse(cls, spec: str) -> "Param":
        name, sep, rest = spec.partition("=")
        kind, _, values = rest.partition(":")
        name = name.strip().removeprefix("--")
        try:
            if not sep or not name:
                raise ValueError
            if kind == "choice":
                args: tuple = tuple(_scalar(v) for v in values.split(","))
            elif kind in ("loguniform", "uniform", "int"):
                low, high = (float(v) for v in values.split(":"))
                if high < low or (kind == "loguniform" and low <= 0):
                    raise ValueError
                args = (low, high)
            else:
                raise ValueError
        except ValueError:
            raise SweepError(
                f"--hparam '{spec}': expected NAME=loguniform:LOW:HIGH, uniform:LOW:HIGH, int:LOW:HIGH or choice:A,B,... "
                "(e.g. model.lr=loguniform:1e-4:1e-2)"
            ) from None
        return cls(name, kind, args)

    def draw(self, rng: np.random.Generator) -> Any:
        if self.kind == "choice":
            return self.args[int(rng.integers(len(self.args)))]
        low, high = self.args
        if self.kind == "int":
            return int(rng.integers(int(low), int(high) + 1))
        value = math.exp(rng.uniform(math.log(low), math.log(high))) if self.kind == "loguniform" else rng.uniform(low, high)
        return float(f"{value:.3g}")

    def wandb(self) -> dict:
        """This space in W&B sweep syntax."""
        if self.kind == "choice":
            return {"values": list(self.args)}
        dist = {"loguniform": "log_uniform_values", "uniform": "uniform", "int": "int_uniform"}[self.kind]
        low, high = (int(v) for v in self.args) if self.kind == "int" else self.args
        return {"distribution": dist, "min": low, "max": high}


def _scalar(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def draw_hparams(strategy: str, dataset: str, draw: int, space: Sequence[Param]) -> dict[str, Any]:
    """Values of hyperparameter draw ``draw`` (0 = the defaults: no overrides). Each value's seed is
    a hash of (strategy, dataset, draw, name): stable across code changes and independent of the
    other entries of ``space``."""
    if draw == 0:
        return {}
    out = {}
    for p in space:
        digest = hashlib.sha256(f"{strategy}|{dataset}|{draw}|{p.name}".encode()).digest()
        out[p.name] = p.draw(np.random.default_rng(int.from_bytes(digest[:8], "little")))
    return out


@dataclass
class Run:
    """One ``fit`` of the grid."""

    strategy: str
    dataset: str
    target: str
    seed: int
    draw: Optional[int]
    hparams: dict
    run_dir: str
    command: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        hp = f" hp={self.draw}" if self.draw is not None else ""
        return f"{self.strategy}{hp} target={self.target} seed={self.seed}"

    def state(self) -> str:
        """``done`` (results.json), ``resume`` (last.ckpt) or ``new``."""
        if os.path.isfile(os.path.join(self.run_dir, "results.json")):
            return "done"
        if os.path.isfile(os.path.join(self.run_dir, "checkpoints", "last.ckpt")):
            return "resume"
        return "new"


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(
        prog="python -m vidlit sweep", allow_abbrev=False,
        description="Run strategies x held-out domains x seeds (x hyperparameter draws) as `python -m vidlit fit` runs. "
        "Other flags (--trainer.*, --data.*, --model.*, --wandb.*, --backbone, --config) go to every run.",
    )
    p.add_argument("--strategies", nargs="+", default=["erm"], help="strategies to compare (default: erm)")
    p.add_argument("--dataset", default="folder", help="dataset format, as for fit (default: folder)")
    p.add_argument("--targets", nargs="+", help="held-out domains, one run each (default: every domain of the dataset)")
    p.add_argument("--seeds", nargs="+", type=int, help="values of --seed_everything (default: 0 1 2)")
    p.add_argument("--seed_everything", metavar="N", help="fit's name for one seed: the same as --seeds N")
    p.add_argument("--n_hparams", type=int, default=1, help="hyperparameter draws per strategy: draw 0 is the defaults (default: 1)")
    p.add_argument("--hparam", action="append", default=[], metavar="NAME=SPACE",
                   help="add or replace a search space entry of the strategies that accept NAME, e.g. "
                   "model.lr=loguniform:1e-4:1e-2, model.dropout=choice:0,0.5 (repeat it; choice:V fixes a value); "
                   "default: each strategy's own space (python -m vidlit sweep --show_space)")
    p.add_argument("--show_space", action="store_true", help="print each strategy's search space (with --hparam applied) and exit")
    p.add_argument("--out", help=f"root folder of the run folders (default: {DEFAULT_OUT})")
    p.add_argument("--trainer.default_root_dir", dest="default_root_dir", metavar="DIR", help="fit's name for the folder: the same as --out DIR")
    p.add_argument("--name", help="sweep name, used as the W&B group (default: the --out folder's name)")
    p.add_argument("--parallel", type=int, default=1, help="runs at a time on this machine (default: 1)")
    p.add_argument("--dry_run", action="store_true", help="print the plan and the commands, run nothing")
    p.add_argument("--wandb", action="store_true", help="write a W&B sweep config (for `wandb agent`) instead of running")
    args, rest = p.parse_known_args(list(argv))
    bad = [a for a in rest if a.split("=", 1)[0] in OWN_FLAGS]
    if bad:
        raise SweepError(f"{bad[0].split('=', 1)[0]} is set by the sweep for each run; use --strategies/--targets/--seeds instead")
    if rest and not rest[0].startswith("--"):
        raise SweepError(f"unexpected argument '{rest[0]}': sweep options and fit flags all start with --")
    if args.parallel < 1 or args.n_hparams < 1:
        raise SweepError("--parallel and --n_hparams must be at least 1")
    if args.seed_everything is not None:
        if args.seeds is not None:
            raise SweepError("--seed_everything N is the same as --seeds N: give one of them (--seeds 0 1 2 for several seeds)")
        try:
            args.seeds = [int(args.seed_everything)]
        except ValueError:
            raise SweepError(f"--seed_everything {args.seed_everything}: expected one integer (--seeds 0 1 2 for several seeds)") from None
    if args.default_root_dir is not None:
        if args.out is not None:
            raise SweepError("--trainer.default_root_dir DIR is the same as --out DIR: give one of them")
        args.out = args.default_root_dir
    args.seeds = args.seeds if args.seeds is not None else list(DEFAULT_SEEDS)
    args.out = args.out if args.out is not None else DEFAULT_OUT
    return args, rest


def _flag_values(passthrough: list[str], prefix: str) -> list[str]:
    """The ``--prefix*`` flags (with their values) of ``passthrough``."""
    out, keep = [], False
    for a in passthrough:
        if a.startswith("--"):
            keep = a.startswith(prefix)
        if keep:
            out.append(a)
    return out


def discover_domains(dataset: str, passthrough: list[str]) -> list[str]:
    """Every domain of the dataset as the ``--data.*`` flags define it (minus given source domains)."""
    from jsonargparse import ArgumentParser

    from vidlit.data.datamodule import DATAMODULES

    cls = DATAMODULES.get(dataset)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "data")
    try:
        cfg = parser.parse_args(_flag_values(passthrough, "--data."))
        dm = cls(**cfg.data.as_dict())
        dm.prepare_index()
    except Exception as err:  # noqa: BLE001 - any failure means the user should name the domains
        raise SweepError(f"could not list the domains of --dataset {dataset} ({err}); pass them with --targets") from err
    sources = set(cfg.data.get("source_domains") or [])
    return [d for d in sorted(set(dm.source_domains) | set(dm.target_domains)) if d not in sources]


def search_spaces(strategies: Sequence[str], dataset: str, overrides: Sequence[str]) -> dict[str, list[Param]]:
    """Each strategy's search space: its own (``Strategy.search_space()``) with the ``--hparam``
    entries it accepts added or replaced. Every problem (a name that no strategy of the grid, the
    dataset or the Trainer accepts; abbreviations are not names) is reported at once."""
    import difflib

    from vidlit.models.strategy import STRATEGIES
    from vidlit.utils.registry import init_arg_names

    given = [Param.parse(s) for s in overrides]
    accepted = {s: STRATEGIES.get(s).hparam_names() for s in strategies}
    problems = []
    for p in given:
        section, _, key = p.name.partition(".")
        if section == "model":
            known = set().union(*accepted.values())
        elif section == "data":
            from vidlit.data.datamodule import DATAMODULES

            known = init_arg_names(DATAMODULES.get(dataset))
        elif section == "trainer":
            from lightning.pytorch import Trainer

            known = init_arg_names(Trainer)
        else:
            problems.append(f"'{p.name}' is not a model.*, data.* or trainer.* flag")
            continue
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.6)
            hint = f" (did you mean {', '.join(f'{section}.{c}' for c in close)}?)" if close else ""
            who = f"strategies {', '.join(strategies)}" if section == "model" else ("--dataset " + dataset if section == "data" else "the Trainer")
            problems.append(f"--hparam {p.name}: no such argument of {who}{hint}")
    if problems:
        raise SweepError("; ".join(problems))
    spaces = {}
    for s in strategies:
        space = {p.name: p for p in (Param.parse(f"{k}={v}") for k, v in STRATEGIES.get(s).search_space().items())}
        for p in given:
            section, _, key = p.name.partition(".")
            if section != "model" or key in accepted[s]:
                space[p.name] = p
        spaces[s] = sorted(space.values(), key=lambda p: p.name)
    return spaces


def plan(args: argparse.Namespace, passthrough: list[str], targets: list[str]) -> list[Run]:
    """Every run of the grid, with its command (``--ckpt_path last`` added for broken runs)."""
    spaces = search_spaces(args.strategies, args.dataset, args.hparam)
    name = args.name or os.path.basename(os.path.abspath(args.out))
    runs = []
    for strategy in args.strategies:
        space = spaces[strategy] if args.n_hparams > 1 else []
        for draw in range(args.n_hparams):
            hp = draw_hparams(strategy, args.dataset, draw, space)
            for target in targets:
                for seed in args.seeds:
                    parts = [args.out, args.dataset, strategy] + ([f"hp={draw}"] if space else []) + [f"target={target}", f"seed={seed}"]
                    run = Run(strategy, args.dataset, target, seed, draw if space else None, hp, os.path.join(*parts))
                    run.command = fit_command(run, passthrough, name)
                    runs.append(run)
    return runs


def fit_command(run: Run, passthrough: list[str], sweep_name: str) -> list[str]:
    cmd = [sys.executable, "-m", "vidlit", "fit", "--strategy", run.strategy, "--dataset", run.dataset, *passthrough]
    given = {a.split("=", 1)[0] for a in passthrough if a.startswith("--")}
    # progress stays on: a run's stdout is its sweep.log, where it prints one plain line per epoch
    if "--wandb.group" not in given:
        cmd += ["--wandb.group", sweep_name]
    if "--wandb.name" not in given:
        cmd += ["--wandb.name", f"{sweep_name}/{run.dataset}/{run.label.replace(' ', '/')}"]
    for key, value in run.hparams.items():
        cmd += [f"--{key}", json.dumps(value) if not isinstance(value, str) else value]
    cmd += ["--data.target_domains", json.dumps([run.target]), "--seed_everything", str(run.seed),
            "--trainer.default_root_dir", run.run_dir]
    if run.state() == "resume":
        cmd += ["--ckpt_path", "last"]
    return cmd


def _record(run: Run, status: str, **extra: Any) -> None:
    """``<run_dir>/sweep.json``: the run's grid coordinates, command and status (read by report)."""
    write_json(os.path.join(run.run_dir, SWEEP_FILE), {
        "strategy": run.strategy, "dataset": run.dataset, "target": run.target, "seed": run.seed,
        "hparams_draw": run.draw, "hparams": run.hparams, "command": run.command, "status": status, **extra,
    })


def _test_acc(run: Run) -> str:
    try:
        with open(os.path.join(run.run_dir, "results.json")) as fh:
            acc = json.load(fh).get("test_acc")
        return f"test_acc {100 * acc:.1f}%" if acc is not None else "no test accuracy"
    except (OSError, ValueError):
        return "results.json unreadable"


def execute(runs: list[Run], parallel: int) -> int:
    """Run the grid, ``parallel`` processes at a time; returns the number of failed runs."""
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    console = Console()
    todo = [r for r in runs if r.state() != "done"]
    skipped = len(runs) - len(todo)
    resumed = sum(r.state() == "resume" for r in todo)
    console.print(f"sweep: {len(runs)} runs: {skipped} finished (skipped), {resumed} to resume, {len(todo) - resumed} to start; {parallel} at a time")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if parallel > 1 and "OMP_NUM_THREADS" not in env:  # parallel CPU runs would oversubscribe the cores
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // parallel))
    failed: list[tuple[Run, str]] = []
    active: list[tuple[Run, subprocess.Popen, Any]] = []
    columns = (TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(), TextColumn("runs done"), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("sweep", total=len(runs), completed=skipped)
        queue = list(todo)
        try:
            while queue or active:
                while queue and len(active) < parallel:
                    run = queue.pop(0)
                    os.makedirs(run.run_dir, exist_ok=True)
                    log = open(os.path.join(run.run_dir, LOG_FILE), "a")
                    log.write(f"\n$ {shlex.join(run.command)}\n")
                    log.flush()
                    _record(run, "running", started=time.time())
                    active.append((run, subprocess.Popen(run.command, stdout=log, stderr=subprocess.STDOUT, env=env), log))
                for item in list(active):
                    run, proc, log = item
                    if proc.poll() is None:
                        continue
                    active.remove(item)
                    log.close()
                    progress.advance(task)
                    done = progress.tasks[task].completed
                    if proc.returncode == 0 and run.state() == "done":
                        _record(run, "done", finished=time.time())
                        console.print(escape(f"[{done}/{len(runs)}] done   {run.label}: {_test_acc(run)}"))
                    else:
                        why = f"exit {proc.returncode}" if proc.returncode else "no results.json"
                        _record(run, f"failed ({why})", finished=time.time())
                        failed.append((run, why))
                        console.print(escape(f"[{done}/{len(runs)}] ") + "[red]failed[/red] "
                                      + escape(f"{run.label} ({why}): see {os.path.join(run.run_dir, LOG_FILE)}"))
                time.sleep(0.5)
        except KeyboardInterrupt:
            for run, proc, log in active:
                proc.terminate()
            for run, proc, log in active:
                proc.wait()
                log.close()
                _record(run, "interrupted", finished=time.time())
            console.print("sweep interrupted: rerun the same command to resume")
            raise
    if failed:
        console.print(f"{len(failed)} run(s) failed; fix the cause and rerun the same command (finished runs are skipped):")
        for run, why in failed:
            console.print(escape(f"  {run.run_dir} ({why})"))
    return len(failed)


def wandb_sweep_config(args: argparse.Namespace, passthrough: list[str], targets: list[str]) -> dict:
    """A W&B sweep config whose command is ``python -m vidlit fit ...`` (the grid as parameters)."""
    params: dict[str, Any] = {
        "strategy": {"values": list(args.strategies)},
        "data.target_domains": {"values": [json.dumps([t]) for t in targets]},
        "seed_everything": {"values": list(args.seeds)},
    }
    config: dict[str, Any] = {"name": args.name or os.path.basename(os.path.abspath(args.out)), "method": "grid"}
    if args.n_hparams > 1:
        (strategy,) = args.strategies  # one config per strategy: their spaces differ
        for p in search_spaces(args.strategies, args.dataset, args.hparam)[strategy]:
            params[p.name] = p.wandb()
        config["method"] = "random"  # W&B grids cannot hold distributions: sample everything instead
        config["run_cap"] = len(args.strategies) * len(targets) * len(args.seeds) * args.n_hparams
    fixed: list[str] = []  # an agent's output is a log: the progress bar prints plain lines there
    config.update({
        "metric": {"name": "test_acc", "goal": "maximize"},
        "parameters": params,
        "command": ["${env}", "${interpreter}", "-m", "vidlit", "fit", "--dataset", args.dataset, *passthrough, *fixed, "${args}"],
    })
    project = _flag_values(passthrough, "--wandb.project")
    if len(project) == 2:
        config["project"] = project[1]
    return config


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args, passthrough = parse_args(sys.argv[1:] if argv is None else argv)
        if args.show_space:
            for strategy, space in search_spaces(args.strategies, args.dataset, args.hparam).items():
                print(f"{strategy}: " + " ".join(f"{p.name}={p.kind}:{':'.join(str(a) for a in p.args) if p.kind != 'choice' else ','.join(str(a) for a in p.args)}" for p in space))
            return 0
        targets = args.targets or discover_domains(args.dataset, passthrough)
        if args.wandb:
            import yaml

            os.makedirs(args.out, exist_ok=True)
            # hyperparameter spaces differ per strategy: one W&B sweep per strategy when searching
            groups = [[s] for s in args.strategies] if args.n_hparams > 1 and len(args.strategies) > 1 else [list(args.strategies)]
            for group in groups:
                path = os.path.join(args.out, "wandb_sweep.yaml" if len(groups) == 1 else f"wandb_sweep_{group[0]}.yaml")
                with open(path, "w") as fh:
                    yaml.safe_dump(wandb_sweep_config(argparse.Namespace(**{**vars(args), "strategies": group}), passthrough, targets), fh, sort_keys=False)
                print(f"wrote {path}")
            print("start each:   wandb sweep FILE.yaml\nthen on each machine: wandb agent ENTITY/PROJECT/SWEEP_ID")
            return 0
        runs = plan(args, passthrough, targets)
    except SweepError as err:
        print(f"vidlit sweep: error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        for run in runs:
            print(f"{run.state():7s} {run.run_dir}\n        {shlex.join(run.command)}")
        print(f"{len(runs)} runs: " + ", ".join(f"{sum(r.state() == s for r in runs)} {s}" for s in ("done", "resume", "new")))
        return 0
    failed = execute(runs, args.parallel)
    closing_report(args.out)
    return 1 if failed else 0


def closing_report(out: str) -> None:
    """The tables of ``python -m vidlit report OUT`` (written to its default folder), printed when
    the sweep ends; the runs that finished count even when others failed."""
    from vidlit.commands import report

    print(f"\nsweep: the report of {out} (python -m vidlit report {shlex.quote(out)}):\n", flush=True)
    try:
        code = report.main([out])
    except Exception as err:  # noqa: BLE001 - the runs are done: a report failure must not hide them
        print(f"vidlit sweep: the report failed ({type(err).__name__}: {err})", file=sys.stderr)
        code = 1
    if code:
        print(f"vidlit sweep: no report table; fix the cause above and run: python -m vidlit report {shlex.quote(out)}", file=sys.stderr)
