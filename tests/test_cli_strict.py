"""The CLI is strict and short-spoken (tracker issue 14): the command list, ``--ckpt_path last``
without a checkpoint, no prefix matching of flags, one-line unknown-flag errors, and evaluating a
checkpoint with its own run's settings. Every test runs the real CLI in a subprocess."""
from __future__ import annotations

import json
import os

import pytest

from tests.helpers import TINY_FLAGS, run_vidlit
from vidlit.commands.args import SUBCOMMANDS
from vidlit.commands.main import COMMANDS as TABLE

#: the commands vidlit has had since each was added: the table may grow, never lose one of these
KNOWN = ("fit", "validate", "test", "predict", "list", "sweep", "report", "bench", "export", "explain", "adapt")
#: every command: the table's, and any that the table lost (those fail the tests below)
COMMANDS = tuple(dict.fromkeys([name for name, _, _ in TABLE] + list(KNOWN) + list(SUBCOMMANDS)))


def _command_lines(text: str) -> dict[str, str]:
    lines = {}
    for line in text.splitlines():
        words = line.split()
        if line.startswith("  ") and words and words[0] in COMMANDS:
            lines[words[0]] = line
    return lines


def test_the_command_table_has_every_command_the_cli_dispatches():
    names = [name for name, _, _ in TABLE]
    assert len(names) == len(set(names))
    assert set(names) == set(COMMANDS), set(COMMANDS) - set(names)  # none lost from the table
    assert all(text.strip() for _, _, text in TABLE)


@pytest.mark.parametrize("args,rc", [(["--help"], 0), (["-h"], 0), ([], 2)])
def test_help_lists_every_command_with_one_line(args, rc):
    proc = run_vidlit(*args)
    assert proc.returncode == rc, proc.stderr[-2000:]
    text = proc.stdout if rc == 0 else proc.stderr
    lines = _command_lines(text)
    assert set(lines) == set(COMMANDS), (set(COMMANDS) - set(lines), text)
    descriptions = {name: text for name, _, text in TABLE}
    for name, line in lines.items():  # its description on the same line
        assert len(line.split()) > 2 and line.split(None, 1)[1] == descriptions.get(name), line
    assert "Traceback" not in proc.stderr
    if rc:
        assert proc.stderr.strip().splitlines()[-1] == "vidlit: error: no command given"


#: ``python -m vidlit NAME --help`` for each NAME in argv, in one interpreter (one import of torch
#: and Lightning instead of one per command): the entry point of ``python -m vidlit``, its exit
#: status and output per command, as JSON
_DISPATCH = """
import contextlib, io, json, sys
import vidlit.__main__ as entry
out = {}
for name in sys.argv[1:]:
    sys.argv = ["vidlit", name, "--help"]
    buf, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
        try:
            code = entry._run()
        except SystemExit as ex:
            code = ex.code if isinstance(ex.code, int) else (0 if ex.code is None else 1)
    out[name] = [code, buf.getvalue(), err.getvalue()]
print(json.dumps(out))
"""


def test_every_command_is_dispatched():
    """``python -m vidlit NAME --help`` for every command: exit 0 with its help, never 'unknown command' (a name dropped from the table) or an import error."""
    import subprocess
    import sys

    from tests.helpers import REPO

    proc = subprocess.run([sys.executable, "-c", _DISPATCH, *COMMANDS], cwd=REPO, capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert list(got) == list(COMMANDS)
    bad = {name: err[-1500:] for name, (code, out, err) in got.items() if code != 0 or not out.strip() or "Traceback" in err}
    assert not bad, bad
    for name, (_, out, _) in got.items():
        assert f"python -m vidlit {name}" in out or f"{name} [" in out.split("\n", 1)[0], (name, out[:500])


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


# --- validate / test / predict --ckpt_path: the checkpoint's own run settings ---------------------

EVAL = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


@pytest.fixture(scope="module")
def dann_run(tiny_root, tmp_path_factory) -> str:
    """A 1-epoch dann run: its model has options erm lacks and a domain head sized by the sources."""
    run_dir = str(tmp_path_factory.mktemp("strict") / "dann")
    flags = list(TINY_FLAGS)
    flags[flags.index("--trainer.max_epochs") + 1] = "1"
    proc = run_vidlit("fit", "--strategy", "dann", "--data.root", tiny_root, "--trainer.default_root_dir", run_dir, *flags,
                      "--trainer.limit_train_batches", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def _only(pattern_dir: str, prefix: str) -> str:
    found = [d for d in os.listdir(pattern_dir) if d.startswith(prefix)] if os.path.isdir(pattern_dir) else []
    assert len(found) == 1, (pattern_dir, found)
    return os.path.join(pattern_dir, found[0])


def test_validate_and_test_take_the_checkpoints_run_settings_and_write_into_it(dann_run, tmp_path):
    ckpt = os.path.join(dann_run, "checkpoints", "last.ckpt")
    fit_results = open(os.path.join(dann_run, "results.json"), "rb").read()
    # no --strategy, --data.root or clip size: all from the run (dann options would be refused by erm)
    proc = run_vidlit("validate", "--ckpt_path", ckpt, *EVAL, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = _only(os.path.join(dann_run, "eval"), "validate-")
    res = json.load(open(os.path.join(out, "validate_results.json")))
    assert res["strategy"] == "dann" and res["backbone"] == "tiny3d" and res["subcommand"] == res["kind"] == "validate"
    assert set(res["val_acc_per_domain"]) == {"clean", "colour", "shaky"} and set(res["target_acc_per_domain"]) == {"texture"}
    for d in ("clean", "colour", "shaky", "texture"):
        assert d in proc.stdout
    assert os.path.join(out, "validate_results.json") in proc.stdout.replace("\n", "")

    # flags given win over the run's settings
    proc = run_vidlit("test", "--ckpt_path", ckpt, "--data.eval_batch_size", "7", *EVAL, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = _only(os.path.join(dann_run, "eval"), "test-")
    res = json.load(open(os.path.join(out, "test_results.json")))
    assert res["strategy"] == "dann" and set(res["test_acc_per_domain"]) == {"texture"} and 0 <= res["test_acc"] <= 1
    assert "texture" in proc.stdout and "target (held out)" in proc.stdout
    import yaml

    cfg = yaml.safe_load(open(os.path.join(out, "test_config.yaml")))
    assert cfg["strategy"] == "dann" and cfg["model"]["lambda_schedule"] == "ganin"
    assert cfg["data"]["size"] == 32 and cfg["data"]["eval_batch_size"] == 7
    # the fit's own files are untouched, no new run under ./runs, no eval folder taken for a run by `report`
    assert open(os.path.join(dann_run, "results.json"), "rb").read() == fit_results
    assert not (tmp_path / "runs").exists()
    assert not os.path.exists(os.path.join(out, "config.yaml"))


def test_predict_and_a_checkpoint_without_its_run_folder(dann_run, tiny_root, tmp_path):
    ckpt = os.path.join(dann_run, "checkpoints", "last.ckpt")
    proc = run_vidlit("predict", "--ckpt_path", ckpt, *EVAL, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = _only(os.path.join(dann_run, "eval"), "predict-")
    # one row per video of the run's held-out domain (texture), its true class and the run's class names
    import csv
    import glob

    with open(os.path.join(dann_run, "results.json")) as fh:
        classes = json.load(fh)["class_names"]
    assert sorted(classes) == sorted(os.listdir(os.path.join(tiny_root, "texture")))
    with open(os.path.join(out, "predictions.csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    want = {os.path.realpath(p): os.path.basename(os.path.dirname(p)) for p in glob.glob(os.path.join(tiny_root, "texture", "*", "*.mp4"))}
    assert len(want) == 30 and len(rows) == len(want)
    assert {os.path.realpath(r["video"]): r["label"] for r in rows} == want
    for r in rows:
        top = [r[f"class_{k}"] for k in range(1, 6)]
        probs = [float(r[f"prob_{k}"]) for k in range(1, 6)]
        assert r["domain"] == "texture" and sorted(top) == sorted(classes) and r["predicted"] == top[0]
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1, abs=1e-4)
        assert float(r["probability"]) == probs[0] and r["correct"] == str(int(r["predicted"] == r["label"]))
    acc = 100 * sum(r["predicted"] == r["label"] for r in rows) / len(rows)
    assert f"predictions: {os.path.join(out, 'predictions.csv')} (30 videos; accuracy {acc:.1f}% on the 30 labelled)" in proc.stdout
    # moved away from its run (no config.yaml): the settings come from the checkpoint itself
    import shutil

    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(ckpt, alone / "model.ckpt")
    given = tmp_path / "given"
    proc = run_vidlit("test", "--ckpt_path", str(alone / "model.ckpt"), "--trainer.default_root_dir", str(given), *EVAL,
                      cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.load(open(given / "test_results.json"))
    assert res["strategy"] == "dann" and set(res["test_acc_per_domain"]) == {"texture"}
    assert not (alone / "eval").exists()  # --trainer.default_root_dir given: written there


def test_missing_checkpoint_is_one_line(tmp_path):
    proc = run_vidlit("test", "--ckpt_path", str(tmp_path / "nope.ckpt"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(f"vidlit: error: --ckpt_path: no checkpoint file '{tmp_path / 'nope.ckpt'}'")


def test_a_checkpoint_of_another_strategy_is_one_line(dann_run, tmp_path):
    ckpt = os.path.join(dann_run, "checkpoints", "last.ckpt")
    proc = run_vidlit("test", "--ckpt_path", ckpt, "--strategy", "erm", "--trainer.default_root_dir", str(tmp_path / "out"), *EVAL)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith(f"vidlit: error: --ckpt_path {ckpt}: its weights do not fit --strategy erm") and "discriminator" in err
    assert "Traceback" not in proc.stderr


def test_output_cut_short_by_the_reader_is_no_traceback():
    import subprocess
    import sys

    # `python -m vidlit list | head -1`, made deterministic: the reader has already closed the pipe
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "vidlit", "list"], stdout=write_end, stderr=subprocess.PIPE,
                              text=True, timeout=120)
    finally:
        os.close(write_end)
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr
    assert proc.returncode == 141
