"""The CLI is strict and short-spoken (tracker issue 14): the command list, ``--ckpt_path last``
without a checkpoint, no prefix matching of flags, one-line unknown-flag errors, and evaluating a
checkpoint with its own run's settings. Every test runs the real CLI in a subprocess."""
from __future__ import annotations

import json
import os

import pytest

from tests.helpers import TINY_FLAGS, run_vidlit

COMMANDS = ("fit", "validate", "test", "predict", "list", "sweep", "report", "bench")


def _command_lines(text: str) -> dict[str, str]:
    lines = {}
    for line in text.splitlines():
        words = line.split()
        if line.startswith("  ") and words and words[0] in COMMANDS:
            lines[words[0]] = line
    return lines


@pytest.mark.parametrize("args,rc", [(["--help"], 0), (["-h"], 0), ([], 2)])
def test_help_lists_every_command_with_one_line(args, rc):
    proc = run_vidlit(*args)
    assert proc.returncode == rc, proc.stderr[-2000:]
    text = proc.stdout if rc == 0 else proc.stderr
    lines = _command_lines(text)
    assert set(lines) == set(COMMANDS), text
    assert all(len(line.split()) > 2 for line in lines.values())  # a description on the same line
    assert "Traceback" not in proc.stderr
    if rc:
        assert proc.stderr.strip().splitlines()[-1] == "vidlit: error: no command given"


def test_unknown_command_is_one_line_with_the_closest():
    proc = run_vidlit("fti")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["vidlit: error: unknown command 'fti' (did you mean fit?); the commands: python -m vidlit --help"]


def test_ckpt_path_last_without_last_ckpt_is_one_line_naming_the_folder(tiny_root, tmp_path):
    run_dir = tmp_path / "never-trained"
    proc = run_vidlit("fit", "--data.root", tiny_root, "--trainer.default_root_dir", str(run_dir), "--ckpt_path", "last", *TINY_FLAGS)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    err = proc.stderr.strip().splitlines()
    assert err[-1].startswith("vidlit: error: --ckpt_path last:") and f"'{run_dir}'" in err[-1]
    assert len([ln for ln in err if "error" in ln.lower()]) == 1 and "Traceback" not in proc.stderr
    assert not run_dir.exists()  # nothing trained, nothing written


def test_flags_are_never_matched_by_prefix():
    proc = run_vidlit("fit", "--trainer.max_ep", "2", "--print_config")
    assert proc.returncode == 2, proc.stdout[-2000:]
    assert "max_epochs: 2" not in proc.stdout
    err = proc.stderr.strip().splitlines()
    assert err == [err[-1]], proc.stderr  # one line, no usage
    assert err[0].startswith("vidlit: error: unknown option --trainer.max_ep (did you mean --trainer.max_epochs")
    assert "python -m vidlit fit --help" in err[0]
    # the full name still works
    proc = run_vidlit("fit", "--trainer.max_epochs", "2", "--print_config")
    assert proc.returncode == 0 and "max_epochs: 2" in proc.stdout


@pytest.mark.parametrize("command", ["fit", "validate", "test", "predict"])
def test_unknown_flag_is_one_line_with_the_closest_names(command):
    proc = run_vidlit(command, "--strategy", "dann", "--model.lambda_schedul", "ganin")
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1, proc.stderr
    assert "unknown option --model.lambda_schedul (did you mean --model.lambda_schedule" in err[0]
    assert f"python -m vidlit {command} --strategy dann --help" in err[0]


def test_a_value_of_the_wrong_type_is_one_line():
    proc = run_vidlit("fit", "--trainer.max_epochs", "abc")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "vidlit: error: --trainer.max_epochs: expected int or null, got 'abc' (options: python -m vidlit fit --help)"]
