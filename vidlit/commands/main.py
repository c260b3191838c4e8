"""``python -m vidlit``: the command table and dispatch (imports a command's module only when it runs)."""
from __future__ import annotations

import re
import sys
import time
from typing import Optional

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



def command_list() -> str:
    """What ``python -m vidlit --help`` (and ``-h``, and no arguments) prints."""
    lines = ["usage: python -m vidlit COMMAND [options]", "", "commands:"]
    lines += [f"  {name:9s} {text}" for name, _, text in COMMANDS]
    lines += ["", "python -m vidlit COMMAND --help lists the options of COMMAND "
              "(fit --strategy NAME --help: with that strategy's options)."]
    return "\n".join(lines)


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
