"""No clutter: a fit that fails on bad input leaves no run folder and starts no W&B run; eval
commands log to W&B only when asked; resuming prints no checkpoint-folder warning."""
from __future__ import annotations

import glob
import os
import shutil
import types

import pytest

from tests.helpers import TINY_FLAGS, run_vidlit
from vidlit.commands.cli import VidlitCLI
from vidlit.data.synthetic import DOMAINS

OFFLINE = {"WANDB_MODE": "offline"}  # W&B would start (and write a wandb/ folder) if anything asked for it


def _wandb_dirs(where) -> list[str]:
    return glob.glob(os.path.join(str(where), "**", "wandb"), recursive=True)


@pytest.fixture()
def bad_root(tiny_root, tmp_path) -> str:
    """Two domains of the tiny set, one of them holding a file that is not a video."""
    root = tmp_path / "data"
    os.makedirs(root)
    os.symlink(os.path.join(tiny_root, DOMAINS[0]), root / DOMAINS[0])
    for cls in os.listdir(os.path.join(tiny_root, DOMAINS[1])):
        os.makedirs(root / DOMAINS[1] / cls)
        for name in os.listdir(os.path.join(tiny_root, DOMAINS[1], cls)):
            os.symlink(os.path.join(tiny_root, DOMAINS[1], cls, name), root / DOMAINS[1] / cls / name)
    (root / DOMAINS[1] / cls / "broken.mp4").write_bytes(b"not a video at all" * 10)
    return str(root)


@pytest.mark.parametrize("case", ["missing_root", "bad_ckpt", "bad_model_option", "unreadable_data", "unwritten_given_dir"])
def test_failed_fit_leaves_no_run_folder_and_no_wandb(case, tiny_root, bad_root, tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    flags = {
        "missing_root": ["--data.root", str(tmp_path / "nowhere")],
        "bad_ckpt": ["--data.root", tiny_root, "--ckpt_path", str(tmp_path / "missing.ckpt")],
        "bad_model_option": ["--data.root", tiny_root, "--model.freeze", "bogus"],
        "unreadable_data": ["--data.root", bad_root, "--data.target_domains", f"[{DOMAINS[0]}]"],
        # a folder the user names that does not exist yet is removed again (with the parent it needed)
        "unwritten_given_dir": ["--data.root", str(tmp_path / "nowhere"), "--trainer.default_root_dir", "out/run1"],
    }[case]
    r = run_vidlit("fit", *flags, *TINY_FLAGS, cwd=str(cwd), env=OFFLINE)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert os.listdir(cwd) == [], (os.listdir(cwd), r.stderr[-1500:])
    assert _wandb_dirs(tmp_path) == [] and "W&B" not in r.stderr


def test_failed_fit_keeps_a_folder_that_existed(tmp_path):
    run_dir = tmp_path / "mine"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("keep me")
    r = run_vidlit("fit", "--data.root", str(tmp_path / "nowhere"), "--trainer.default_root_dir", str(run_dir),
                   *TINY_FLAGS, cwd=str(tmp_path), env=OFFLINE)
    assert r.returncode != 0
    assert (run_dir / "notes.txt").read_text() == "keep me"


def test_cleanup_keeps_a_run_that_trained(tmp_path):
    """A crash after training (an exception in testing or writing results) keeps the run folder."""
    def fake(run_dir, step=0):
        return types.SimpleNamespace(_new_dirs=[str(run_dir), str(run_dir.parent)],
                                     trainer=types.SimpleNamespace(is_global_zero=True, global_step=step))

    trained = tmp_path / "runs" / "trained"
    (trained / "checkpoints").mkdir(parents=True)
    (trained / "checkpoints" / "last.ckpt").write_bytes(b"x")
    VidlitCLI._remove_new_run_dir(fake(trained))
    assert (trained / "checkpoints" / "last.ckpt").is_file()
    stepped = tmp_path / "runs" / "stepped"
    stepped.mkdir()
    VidlitCLI._remove_new_run_dir(fake(stepped, step=3))
    assert stepped.is_dir()
    empty = tmp_path / "runs" / "empty"
    empty.mkdir()
    VidlitCLI._remove_new_run_dir(fake(empty))
    assert not empty.exists() and (tmp_path / "runs").is_dir()  # the parent is not empty: kept


@pytest.fixture(scope="module")
def trained(tiny_root, tmp_path_factory) -> str:
    """A one-epoch run without W&B."""
    run_dir = str(tmp_path_factory.mktemp("clutter") / "run")
    r = run_vidlit("fit", "--data.root", tiny_root, *TINY_FLAGS, "--trainer.max_epochs", "1",
                   "--trainer.default_root_dir", run_dir, env={"WANDB_MODE": "disabled"})
    assert r.returncode == 0, r.stderr[-3000:]
    return run_dir


def test_eval_logs_to_wandb_only_when_asked(trained, tmp_path):
    ckpt = os.path.join(trained, "checkpoints", "last.ckpt")
    plain = tmp_path / "plain"
    r = run_vidlit("test", "--ckpt_path", ckpt, "--trainer.default_root_dir", str(plain), "--data.num_workers", "0",
                   "--trainer.enable_progress_bar", "false", cwd=str(tmp_path), env=OFFLINE)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (plain / "test_results.json").is_file() and _wandb_dirs(plain) == [] and "W&B" not in r.stderr
    asked = tmp_path / "asked"
    r = run_vidlit("test", "--ckpt_path", ckpt, "--trainer.default_root_dir", str(asked), "--data.num_workers", "0",
                   "--trainer.enable_progress_bar", "false", "--wandb.project", "p", cwd=str(tmp_path), env=OFFLINE)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _wandb_dirs(asked) == [str(asked / "wandb")]


def test_failed_eval_leaves_no_eval_folder(trained, tmp_path):
    ckpt = os.path.join(trained, "checkpoints", "last.ckpt")
    r = run_vidlit("test", "--ckpt_path", ckpt, "--data.root", str(tmp_path / "nowhere"), "--data.num_workers", "0",
                   cwd=str(tmp_path), env=OFFLINE)
    assert r.returncode != 0 and "--data.root" in r.stderr, r.stderr[-2000:]
    assert not os.path.exists(os.path.join(trained, "eval")) and not os.path.exists(tmp_path / "runs")


def test_resume_prints_no_checkpoint_folder_warning(trained, tiny_root, tmp_path):
    run_dir = str(tmp_path / "resumed")
    shutil.copytree(trained, run_dir)
    r = run_vidlit("fit", "--data.root", tiny_root, *TINY_FLAGS, "--trainer.max_epochs", "2",
                   "--trainer.default_root_dir", run_dir, "--ckpt_path", "last", env={"WANDB_MODE": "disabled"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Epoch 1" in r.stdout + r.stderr or os.path.isfile(os.path.join(run_dir, "results.json"))
    assert "exists and is not empty" not in r.stdout + r.stderr
