"""Every ``python -m vidlit ...`` command shown in README.md and docs/*.md parses: a doc cannot show a
flag or a name that does not exist.

``fit|validate|test|predict`` lines run with ``--print_config`` (the whole LightningCLI parser,
nothing trained); ``sweep`` lines go through the sweep's own parser and search-space checks, and
their pass-through flags through ``fit --print_config``; ``list`` runs; other commands (``report``,
``bench``, and any added later) must exist and every ``--flag`` they show must appear in their
``--help``. Placeholders a reader replaces (``...``, ``NAME``, ``CKPT``) are dropped or kept as text.
"""
from __future__ import annotations

import contextlib
import glob
import io
import os
import re
import shlex

import pytest

from tests.helpers import REPO

DOCS = [os.path.join(REPO, "README.md"), *sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))]
FIT_LIKE = ("fit", "validate", "test", "predict")


def doc_commands() -> list[tuple[str, list[str]]]:
    """``(where, argv after 'python -m vidlit')`` of each command line in fenced blocks and inline code."""
    found = []
    for path in DOCS:
        rel = os.path.relpath(path, REPO)
        lines = open(path, encoding="utf-8").read().splitlines()
        in_block, i = False, 0
        while i < len(lines):
            line, lineno = lines[i], i + 1
            if line.lstrip().startswith("```"):
                in_block = not in_block
                i += 1
                continue
            if in_block:
                while line.rstrip().endswith("\\") and i + 1 < len(lines):  # continuation lines
                    i += 1
                    line = line.rstrip()[:-1] + " " + lines[i].strip()
                # a command line (maybe after VAR=value or time); not output or comments that quote one
                texts = [line] if re.match(r"\s*(\w+=\S+\s+)*(/usr/bin/time\s+(-v\s+)?)?python -m vidlit", line) else []
            else:
                texts = re.findall(r"`(python -m vidlit [^`]*)`", line)
            # a synopsis with <placeholders> or ${...} describes commands, it is not one
            texts = [t for t in texts if not re.search(r"<\w[^>]*>|\$\{", t)]
            for text in texts:
                for part in re.split(r"&&|;|\|", text):  # one command of a chain or pipe
                    m = re.search(r"python -m vidlit\b(.*)", part)
                    if m:
                        found.append((f"{rel}:{lineno}", _argv(m.group(1))))
            i += 1
    return found


def _argv(text: str) -> list[str]:
    text = re.sub(r"(^|\s)#.*$", "", text)  # a trailing comment
    try:
        words = shlex.split(text)
    except ValueError:
        words = text.split()
    return [w for w in words if w not in ("...", "[options]", "[--quick]")]


COMMANDS = doc_commands()


def test_the_docs_show_commands():
    assert len(COMMANDS) >= 30, COMMANDS  # the extraction itself works


def _print_config(argv: list[str]) -> None:
    from vidlit.commands.cli import run_cli

    out = io.StringIO()
    with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stdout(out):
        run_cli(argv + ["--print_config"])
    assert exit_info.value.code in (0, None), out.getvalue()[-2000:]
    assert "trainer:" in out.getvalue()


@pytest.mark.parametrize("where, argv", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_documented_command_parses(where, argv, capsys, monkeypatch):
    monkeypatch.chdir(REPO)  # configs/... paths are relative to the repository root
    if not argv or argv[0] in ("-h", "--help"):
        return
    command = argv[0]
    if command in FIT_LIKE:
        if any(a in ("-h", "--help") for a in argv):
            return
        _print_config(argv)
    elif command == "sweep":
        from vidlit.commands import sweep

        args, passthrough = sweep.parse_args(argv[1:])
        sweep.search_spaces(args.strategies, args.dataset, args.hparam)
        _print_config(["fit", "--strategy", args.strategies[0], "--dataset", args.dataset, *passthrough])
    elif command == "list":
        from vidlit.commands.main import main

        assert main(argv) == 0
    else:
        from vidlit.commands.main import main

        words = [a for a in argv if not a.startswith("-")]
        help_argv = [command] + ([words[1]] if command == "bench" and len(words) > 1 else []) + ["--help"]
        with contextlib.suppress(SystemExit):
            code = main(help_argv)
            assert code in (0, None), f"{where}: `python -m vidlit {' '.join(help_argv)}` failed"
        text = capsys.readouterr().out
        for flag in (a.split("=", 1)[0] for a in argv if a.startswith("--")):
            assert flag in text, f"{where}: {flag} is not an option of `python -m vidlit {' '.join(help_argv[:-1])}`"
