"""Progress output: plain flushed lines when stdout is not a terminal, the Rich bar on one."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import lightning.pytorch as pl
import pytest

from tests.helpers import REPO, TINY_FLAGS, run_vidlit
from vidlit.callbacks import progress

EPOCH_LINE = re.compile(r"^Epoch (\d+)/1  train/loss [\d.e-]+  val/acc ([\d.e-]+)  val/loss [\d.e-]+  \| \d+ steps in \d+s, [\d.]+ clips/s")
STEP_LINE = re.compile(r"^Epoch (\d+)/1  step (\d+)/6  train/loss [\d.e-]+  \| [\d.]+ steps/s, [\d.]+ clips/s, epoch ETA \d+s$")


def _flags(tiny_root: str, run_dir: str) -> list[str]:
    flags = list(TINY_FLAGS)
    flags[flags.index("--trainer.enable_progress_bar") + 1] = "true"
    return ["--data.root", tiny_root, "--trainer.default_root_dir", run_dir, *flags]


def _check_epoch_lines(stdout: str, run_dir: str) -> None:
    lines = stdout.splitlines()
    epochs = [m for m in map(EPOCH_LINE.match, lines) if m]
    assert [int(m.group(1)) for m in epochs] == [0, 1], stdout[-3000:]
    with open(os.path.join(run_dir, "results.json")) as fh:
        history = json.load(fh)["history"]
    # each epoch's line shows that epoch's validation (not the sanity check's)
    assert [float(m.group(2)) for m in epochs] == pytest.approx([h["val_acc"] for h in history], abs=1e-4)
    assert "it/s" not in stdout and "\r" not in stdout and "Sanity" not in stdout  # no Rich bar frames in a log file


def test_plain_bar_prints_epoch_and_step_lines_to_a_pipe(tiny_root, tmp_path):
    run_dir = str(tmp_path / "run")
    proc = run_vidlit("fit", *_flags(tiny_root, run_dir), "--trainer.callbacks+=vidlit.callbacks.progress.PlainProgressBar",
                      "--trainer.callbacks.every_n_steps=2", env={"WANDB_MODE": "disabled"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_epoch_lines(proc.stdout, run_dir)
    steps = [(int(m.group(1)), int(m.group(2))) for m in map(STEP_LINE.match, proc.stdout.splitlines()) if m]
    assert steps == [(0, 2), (0, 4), (1, 2), (1, 4)]  # every 2 steps, the epoch's last one is its epoch line


def test_plain_lines_are_flushed_while_the_run_goes_on(tiny_root, tmp_path):
    """Without PYTHONUNBUFFERED (a cluster job, nohup): the first epoch's line arrives before the run ends."""
    run_dir = str(tmp_path / "run")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env["WANDB_MODE"] = "disabled"
    args = [sys.executable, "-m", "vidlit", "fit", *_flags(tiny_root, run_dir), "--trainer.callbacks+=vidlit.callbacks.progress.PlainProgressBar"]
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("Epoch 0/1  train/loss"):
                assert proc.poll() is None  # still training epoch 1: the line was not held in a buffer
                break
        else:
            pytest.fail("no epoch line")
    finally:
        proc.stdout.read()
        proc.wait(timeout=300)
    assert proc.returncode == 0


def test_default_fit_to_a_pipe_prints_plain_epoch_lines(tiny_root, tmp_path):
    """No progress-bar flag or callback given: `fit` itself picks the plain lines when stdout is a pipe."""
    run_dir = str(tmp_path / "run")
    proc = run_vidlit("fit", *_flags(tiny_root, run_dir), env={"WANDB_MODE": "disabled"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_epoch_lines(proc.stdout, run_dir)


def test_progress_bar_follows_isatty(monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    assert type(progress.progress_bar()) is progress.PlainProgressBar
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    assert type(progress.progress_bar()) is progress.VidlitRichProgressBar


def test_rich_bar_one_sanity_bar_and_no_sanity_metrics_in_epoch_0(tiny_root):
    from vidlit.data.datamodule import DATAMODULES
    from vidlit.models.strategy import STRATEGIES

    bar = progress.VidlitRichProgressBar()
    seen: dict = {}

    class Probe(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            seen["shown at epoch 0 start"] = sorted(bar._metric_component._metrics)
            seen["sanity bars"] = [t.description for t in bar.progress.tasks if "Sanity" in t.description]

    dm = DATAMODULES.get("folder")(root=tiny_root, size=32, num_frames=4, batch_size=12, num_workers=0)
    model = STRATEGIES.get("erm")(num_classes=dm.num_classes, num_domains=dm.num_domains)
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=2, callbacks=[bar, Probe()], logger=False,
                         enable_checkpointing=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(model, dm)
    assert len(trainer.val_dataloaders) == 2  # source and target: Lightning's bar draws a sanity bar for each
    assert seen["sanity bars"] == ["Sanity Checking"]
    assert seen["shown at epoch 0 start"] == []  # Lightning's shows the sanity check's val/acc here
