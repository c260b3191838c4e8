"""Command-line pre-parsing before LightningCLI: ``--strategy``/``--dataset``/``--backbone``, and a checkpoint's settings."""
from __future__ import annotations

import os
import sys
from typing import Optional

import yaml

from vidlit.data.datamodule import DATAMODULES
from vidlit.models.backbones import BACKBONES
from vidlit.models.strategy import STRATEGIES
from vidlit.run.checkpoint import LINKED, checkpoint_settings
from vidlit.utils.registry import init_arg_names
from vidlit.run.rundir import checkpoint_run_dir
from vidlit.utils.errors import VidlitError
from vidlit.utils.registry import UnknownNameError

SUBCOMMANDS = ("fit", "validate", "test", "predict")


def _flag_value(args: list[str], i: int, flag: str) -> tuple[Optional[str], int]:
    """If ``args[i]`` is ``flag VALUE`` or ``flag=VALUE``: (VALUE, index after it); else (None, i)."""
    a = args[i]
    if a == flag:
        if i + 1 >= len(args) or args[i + 1].startswith("--"):
            raise UnknownNameError(f"{flag} needs a name")
        return args[i + 1], i + 2
    if a.startswith(flag + "="):
        return a.split("=", 1)[1], i + 1
    return None, i


def _config_keys(path: str) -> dict:
    """Top-level ``strategy``/``dataset`` of a ``--config`` file (empty when it is not a file:
    the parser then reports it)."""
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
    except (OSError, yaml.YAMLError):
        return {}
    return {k: data[k] for k in ("strategy", "dataset") if isinstance(data, dict) and data.get(k) is not None}


def resolve_selection(argv: list[str]) -> tuple[str, str, list[str]]:
    """The strategy and dataset a command line selects, and the arguments for the parser.

    Arguments are read left to right and the last one wins, as for every other flag: ``--strategy``
    and ``--dataset`` (removed here: they pick the classes), the ``strategy:``/``dataset:`` keys of
    each ``--config`` file at that file's position, and ``--backbone NAME``, rewritten in place as
    ``--model.backbone NAME`` so that a ``--config`` before it loses and one after it wins. The
    chosen names are passed last (``--strategy S --dataset D``), so ``--print_config`` and the
    saved ``config.yaml`` name the classes actually trained."""
    strategy, dataset = "erm", "folder"
    out: list[str] = []
    i = 0
    while i < len(argv):
        value, j = _flag_value(argv, i, "--strategy")
        if value is not None:
            strategy, i = value, j
            continue
        value, j = _flag_value(argv, i, "--dataset")
        if value is not None:
            dataset, i = value, j
            continue
        value, j = _flag_value(argv, i, "--backbone")
        if value is not None:
            BACKBONES.get(value)
            out += ["--model.backbone", value]
            i = j
            continue
        a = argv[i]
        path = argv[i + 1] if a == "--config" and i + 1 < len(argv) else (a.split("=", 1)[1] if a.startswith("--config=") else None)
        if path is not None:
            keys = _config_keys(path)
            strategy, dataset = keys.get("strategy", strategy), keys.get("dataset", dataset)
            out += argv[i : i + (2 if a == "--config" else 1)]
            i += 2 if a == "--config" else 1
            continue
        out.append(a)
        i += 1
    strategy, dataset = str(strategy).lower(), str(dataset).lower()
    STRATEGIES.get(strategy)
    DATAMODULES.get(dataset)
    if out and out[0] in SUBCOMMANDS:
        out += ["--strategy", strategy, "--dataset", dataset]
    return strategy, dataset, out


EVAL_COMMANDS = ("validate", "test", "predict")


def _last_flag(argv: list[str], flag: str) -> Optional[str]:
    value = None
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif a.startswith(flag + "="):
            value = a.split("=", 1)[1]
    return value


def with_checkpoint_settings(argv: list[str]) -> tuple[list[str], Optional[str]]:
    """``validate|test|predict --ckpt_path CKPT``: the arguments with the settings of CKPT's run put
    first (strategy, dataset, model and data), so that every flag given overrides them; and the
    run folder. Other command lines are returned as they are."""
    if not argv or argv[0] not in EVAL_COMMANDS:
        return argv, None
    ckpt = _last_flag(argv, "--ckpt_path")
    if not ckpt or ckpt in ("last", "best", "hpc", "registry") or "--help" in argv or "-h" in argv:
        return argv, None
    if not os.path.isfile(ckpt):
        if any(a.split("=", 1)[0] == "--print_config" for a in argv):
            return argv, None  # the configuration as given (a documented command with an example path)
        raise VidlitError(f"--ckpt_path: no checkpoint file '{ckpt}'; pass a .ckpt file (e.g. RUN/checkpoints/last.ckpt)")
    found, source = checkpoint_settings(ckpt)
    head = [argv[0]] + [x for k in ("strategy", "dataset") if found.get(k) for x in (f"--{k}", str(found[k]))]
    # the classes the user's flags select in the end (their --strategy/--dataset/--config win)
    strategy, dataset, _ = resolve_selection(head + argv[1:])
    sections = {}
    for section, cls in (("model", STRATEGIES.get(strategy)), ("data", DATAMODULES.get(dataset))):
        values = found.get(section)
        if isinstance(values, dict):
            ok = init_arg_names(cls) - LINKED[section]
            if section == "data" and found.get("dataset") and str(found["dataset"]).lower() != dataset:
                # another dataset format (e.g. predict --dataset files): the clip settings, not which videos
                ok -= {"root", "source_domains", "target_domains", "classes", "videos", "run"}
            sections[section] = {k: v for k, v in values.items() if k in ok}
    if sections:
        head += ["--config", yaml.safe_dump(sections, default_flow_style=True, width=1 << 30).strip()]
    keys = [f"strategy {found.get('strategy', strategy)}", f"backbone {(found.get('model') or {}).get('backbone', '?')}",
            f"dataset {found.get('dataset', dataset)}"]
    print(f"vidlit: {argv[0]} with the settings of {source} ({', '.join(keys)}); flags given override them", file=sys.stderr)
    return head + argv[1:], checkpoint_run_dir(ckpt)
