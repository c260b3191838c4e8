"""``python -m vidlit``: the command table and dispatch (imports a command's module only when it runs)."""
from __future__ import annotations

import re
import sys
import time
from typing import Any, Optional

from vidlit.utils.errors import VidlitError

#: every command: (name, "module:function" in vidlit.commands, one line for --help). The module is
#: imported only when its command runs, so --help imports nothing heavy.
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("fit", "cli:run_cli", "train a strategy on the source domains, test the best checkpoint on the held-out ones (results.json)"),
    ("validate", "cli:run_cli", "evaluate a checkpoint on the source validation split and held-out domains (--ckpt_path CKPT)"),
    ("test", "cli:run_cli", "evaluate a checkpoint on the held-out domains (--ckpt_path CKPT)"),
    ("predict", "cli:run_cli", "write predictions.csv for a checkpoint on videos (--ckpt_path CKPT)"),
    ("list", "listing:main", "list the strategies, backbones and dataset formats"),
    ("sweep", "sweep:main", "run a grid of strategies x held-out domains x seeds (and hyperparameter draws)"),
    ("report", "report:main", "tables of the results.json files under a folder (DomainBed style)"),
    ("bench", "bench:main", "measure data loading and training speed"),
    ("export", "export:main", "write a checkpoint as a TorchScript or ONNX model that takes uint8 clips (--ckpt_path CKPT)"),
    ("explain", "explain:main", "Grad-CAM saliency over space and time of a checkpoint on clips: mp4, PNG strips, per-frame curves"),
    ("adapt", "adapt:main", "few-shot: fine-tune a run's checkpoint on K labelled videos per class of its target, test on the rest"),
)

#: LightningCLI's subcommands: their --help opens with :func:`short_help`, then LightningCLI's full list
HELP_SUBCOMMANDS = ("fit", "validate", "test", "predict")

#: the flags people use, ``(flag, value, one line)``; the subcommands a line is for (None: all four)
SHORT_FLAGS: tuple[tuple[str, str, str, Optional[tuple[str, ...]]], ...] = (
    ("--strategy", "NAME", "the DG method (erm, dann, coral, ...: python -m vidlit list)", None),
    ("--backbone", "NAME", "the network (tiny3d, r2plus1d_18, x3d_s, ...: python -m vidlit list)", None),
    ("--dataset", "NAME", "the dataset format (default folder: ROOT/<domain>/<class>/; python -m vidlit list)", None),
    ("--data.root", "DIR", "where the videos are (folder: none = the embedded synthetic set)", None),
    ("--data.target_domains", "'[a, b]'", "the held-out domains, tested; every other domain trains", None),
    ("--trainer.max_epochs", "N", "epochs to train", ("fit",)),
    ("--trainer.precision", "P", "bf16-mixed, 16-mixed or 32-true (default: the hardware's best)", None),
    ("--trainer.devices", "N", "GPUs (or CPU processes) to use; several run DDP", None),
    ("--ckpt_path", "last", "resume the run in --trainer.default_root_dir from its last checkpoint", ("fit",)),
    ("--ckpt_path", "CKPT", "the checkpoint to evaluate (its run's settings are used)", ("validate", "test", "predict")),
    ("--trainer.default_root_dir", "DIR", "the run folder (default runs/<strategy>-<dataset>-<time>)", ("fit",)),
    ("--config", "FILE", "a YAML of these settings (e.g. a run's config.yaml, configs/*.yaml)", None),
    ("--seed_everything", "N", "the seed (data order, augmentation, initialisation)", None),
)


def short_help(command: str) -> str:
    """The short section ``python -m vidlit COMMAND --help`` opens with (COMMAND: fit, validate,
    test or predict): the flags people use, one line each, then a pointer to the full list."""
    rows = [(f"{flag} {value}", text) for flag, value, text, only in SHORT_FLAGS if only is None or command in only]
    width = max(len(left) for left, _ in rows)
    lines = [f"usage: python -m vidlit {command} [options]", "", "common options:"]
    lines += [f"  {left:{width}s}  {text}" for left, text in rows]
    lines += ["", ("every option (LightningCLI's full list; with --strategy NAME / --dataset NAME: that one's "
                   "--model.* / --data.*) follows:"), ""]
    return "\n".join(lines)


def command_list() -> str:
    """What ``python -m vidlit --help`` (and ``-h``, and no arguments) prints."""
    lines = ["usage: python -m vidlit COMMAND [options]", "", "commands:"]
    lines += [f"  {name:9s} {text}" for name, _, text in COMMANDS]
    lines += ["", "python -m vidlit COMMAND --help lists the options of COMMAND "
              "(fit --strategy NAME --help: with that strategy's options)."]
    return "\n".join(lines)


def merge_aliases(args: Any, command: str, *pairs: tuple[str, str, str, str]) -> None:
    """Two flags of one setting (``(dest, flag, alias_dest, alias)``, e.g. ``--out`` and fit's
    ``--trainer.default_root_dir``): the one given is kept in ``args.<dest>``; both given with different
    values is a one-line error. Their argparse defaults must be None (None: not given)."""
    for dest, flag, alias_dest, alias in pairs:
        value, other = getattr(args, dest), getattr(args, alias_dest)
        if value is not None and other is not None and value != other:
            raise VidlitError(f"{command}: {flag} {value} and {alias} {other} are the same setting with different values; give one")
        setattr(args, dest, value if value is not None else other)
        delattr(args, alias_dest)


def _one_line(err: BaseException) -> str:
    """The user-facing message; for errors re-raised from a DataLoader worker, the original one."""
    text = str(err)
    if isinstance(err, KeyError) and len(err.args) == 1 and isinstance(err.args[0], str):
        text = err.args[0]  # KeyError's str() adds quotes
    if "Original Traceback" in text:
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        text = re.sub(r"^[\w.]+Error: ", "", lines[-1]) if lines else text
    return text


def _user_error(err: BaseException) -> Optional[BaseException]:
    """The :class:`VidlitError` behind ``err``: itself, or the one a DataLoader worker raised
    (PyTorch re-raises a worker's exception as the same class when it can, else wraps it)."""
    seen = 0
    while err is not None and seen < 8:
        if isinstance(err, VidlitError):
            return err
        err = err.__cause__ or err.__context__
        seen += 1
    return None


def command_function(name: str):
    """The function that runs command ``name`` (its module imported now)."""
    import importlib

    target = next(target for n, target, _ in COMMANDS if n == name)
    module, _, func = target.partition(":")
    return getattr(importlib.import_module(f"vidlit.commands.{module}"), func)


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from vidlit import START_TIME

    start = START_TIME if argv is None or argv == sys.argv[1:] else time.time()
    command = argv[0] if argv else ""
    if command in ("-h", "--help"):
        print(command_list())
        return 0
    if not argv:  # a command is required: the list, and exit status 2 (as for any usage error)
        print(command_list(), file=sys.stderr)
        print("vidlit: error: no command given", file=sys.stderr)
        return 2
    names = [name for name, _, _ in COMMANDS]
    try:
        if command not in names:
            import difflib

            close = difflib.get_close_matches(command, names, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise VidlitError(f"unknown command '{command}'{hint}; the commands: python -m vidlit --help")
        if command in HELP_SUBCOMMANDS and ("--help" in argv or "-h" in argv):
            print(short_help(command), flush=True)
        run = command_function(command)
        if run.__name__ == "run_cli":  # LightningCLI's subcommands: the whole command line
            run(argv, start)
            return 0
        return int(run(argv[1:]) or 0)
    except Exception as err:  # noqa: BLE001 -- user errors are one line; anything else is a bug: traceback
        user = _user_error(err)
        if user is None:
            raise
        print(f"vidlit: error: {_one_line(user)}", file=sys.stderr)
        return 2
