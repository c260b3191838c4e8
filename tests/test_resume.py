"""Crash-safe resume: ``kill -9`` mid-epoch, then ``fit ... --ckpt_path last`` finishes with the
same results as an uninterrupted run, in the same W&B run."""
from __future__ import annotations

import glob
import os
import re
import signal
import subprocess
import sys
import threading

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from tests.helpers import REPO, run_vidlit
from tests.test_reproducible import accuracies, assert_same_weights, final_weights, fit_args, load_results, reference_run
from vidlit.callbacks.loggers import WANDB_ID_FILE, read_wandb_file
from vidlit.callbacks.checkpoint import AtomicModelCheckpoint
from vidlit.callbacks.history import HistoryCallback

# Lightning's TQDM bar prints "Epoch 1:  33%|###   | 2/6 [...]" (to stdout): steps done in the second epoch
EPOCH1_STEP = re.compile(r"Epoch 1:\s+\d+%\|[^|]*\|\s*(\d+)/(\d+)")
TQDM = ["--trainer.enable_progress_bar", "true", "--trainer.callbacks", "lightning.pytorch.callbacks.TQDMProgressBar"]


def _fit_until_mid_second_epoch(args: list[str], timeout: float = 300) -> str:
    """Start ``python -m vidlit ARGS``, SIGKILL it once the second epoch has done a training step
    (but not all of them); returns what it printed."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_MODE="offline")
    proc = subprocess.Popen([sys.executable, "-m", "vidlit", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen: list[str] = []
    killed = threading.Event()

    def watch() -> None:
        while True:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                return
            seen.append(chunk.decode(errors="replace"))
            steps = [(int(a), int(b)) for a, b in EPOCH1_STEP.findall("".join(seen)[-2000:])]
            if not killed.is_set() and any(0 < a < b for a, b in steps):
                proc.send_signal(signal.SIGKILL)
                killed.set()

    reader = threading.Thread(target=watch, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    text = "".join(seen)
    assert killed.is_set(), f"the run ended (exit {proc.returncode}) before it could be killed mid-epoch:\n{text[-3000:]}"
    assert proc.returncode == -signal.SIGKILL
    return text


@pytest.mark.slow
def test_kill_mid_epoch_then_resume_matches_uninterrupted_run(tiny_root, tmp_path_factory, tmp_path):
    reference_dir = reference_run(tiny_root, str(tmp_path_factory.getbasetemp()))
    reference = load_results(reference_dir)
    run_dir = str(tmp_path / "run")
    _fit_until_mid_second_epoch(fit_args(tiny_root, run_dir) + TQDM)

    # killed mid-epoch 1: last.ckpt (written atomically) is epoch 0's, with its history; no results
    assert not os.path.exists(os.path.join(run_dir, "results.json"))
    ckpt = torch.load(os.path.join(run_dir, "checkpoints", "last.ckpt"), map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 0
    assert [h["epoch"] for h in ckpt["callbacks"]["HistoryCallback"]["history"]] == [0]
    with open(os.path.join(run_dir, WANDB_ID_FILE)) as fh:
        run_id = fh.read().strip()

    proc = run_vidlit(*fit_args(tiny_root, run_dir), "--ckpt_path", "last", env={"WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Restoring states from the checkpoint path at " + os.path.join(run_dir, "checkpoints", "last.ckpt") in proc.stderr + proc.stdout

    resumed = load_results(run_dir)
    assert resumed["epochs_run"] == 2  # epoch 0 from before the kill survives in the history
    assert accuracies(resumed) == accuracies(reference)
    assert_same_weights(final_weights(run_dir), final_weights(reference_dir))  # trained exactly alike

    # one W&B run: both processes logged under the id kept in the run dir
    with open(os.path.join(run_dir, WANDB_ID_FILE)) as fh:
        assert fh.read().strip() == run_id
    offline = sorted(glob.glob(os.path.join(run_dir, "wandb", "offline-run-*")))
    assert len(offline) == 2 and all(d.endswith("-" + run_id) for d in offline)
    records = read_wandb_file(os.path.join(offline[-1], f"run-{run_id}.wandb"))
    assert [r.run.run_id for r in records if r.WhichOneof("record_type") == "run"] == [run_id]
    # the killed process's log holds what W&B had flushed (maybe nothing), possibly ending in a torn
    # record: it still reads, and `wandb sync` uploads both folders into one run
    assert isinstance(read_wandb_file(os.path.join(offline[0], f"run-{run_id}.wandb")), list)


def test_ckpt_path_last_needs_the_run_dir(tiny_root, capsys):
    from vidlit.commands.main import main

    assert main(["fit", "--data.root", tiny_root, "--ckpt_path", "last"]) == 2
    assert "--ckpt_path last resumes a run: also pass --trainer.default_root_dir" in capsys.readouterr().err


class _FallingAccuracy(pl.LightningModule):
    """val/acc falls every epoch, so only epoch 0 is ever the best checkpoint."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/acc", 1.0 / (1 + self.current_epoch))

    def test_step(self, batch, batch_idx):
        self.log("test/acc", 0.5)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_last_checkpoint_is_the_last_epoch_and_history_survives_testing_the_best(tmp_path):
    data = DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=2)
    ckpt = AtomicModelCheckpoint(dirpath=str(tmp_path), monitor="val/acc", mode="max", save_last=True, filename="best-{epoch:03d}")
    history = HistoryCallback()
    trainer = pl.Trainer(max_epochs=3, callbacks=[ckpt, history], logger=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(_FallingAccuracy(), data, data)
    assert sorted(os.listdir(tmp_path)) == ["best-epoch=000.ckpt", "last.ckpt"]  # no .tmp left behind
    last = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 2  # Lightning 2.6's save_last alone would leave epoch 0 here
    assert [h["epoch"] for h in last["callbacks"]["HistoryCallback"]["history"]] == [0, 1, 2]
    trainer.test(ckpt_path=ckpt.best_model_path, dataloaders=data, verbose=False)  # restores callback states
    assert [h["epoch"] for h in history.history] == [0, 1, 2]


# ----------------------------------------------------------------------------------------------
# Every strategy, killed anywhere, ends like an uninterrupted run; a finished run is left alone.
# DataLoader workers are on (2): the replayed-epoch bug after a restart only shows with workers.
# ----------------------------------------------------------------------------------------------
import json  # noqa: E402
import shutil  # noqa: E402

from tests.test_reproducible import STRATEGY_EPOCHS, strategy_args, strategy_reference  # noqa: E402
from vidlit.utils.fault import FAULT_ENV
from vidlit.models.strategy import STRATEGIES

KILL_EPOCHS = STRATEGY_EPOCHS  # the kill is in epoch 1: two epochs train after the restart
_strategy_args, _strategy_reference = strategy_args, strategy_reference


def _killed_at(args: list[str], point: str, timeout: float = 600) -> str:
    """Run ``python -m vidlit ARGS`` until it kills itself (SIGKILL) at ``point``; returns its output.
    Its DataLoader workers must die with it: none may be left holding the output pipe."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **{FAULT_ENV: point})
    proc = subprocess.Popen([sys.executable, "-m", "vidlit", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)  # returns once every holder of the pipe is gone
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # nothing should be left; never leave a stray process behind
        except ProcessLookupError:
            pass
    assert proc.returncode == -signal.SIGKILL, f"not killed at {point} (exit {proc.returncode}):\n{out[-3000:]}"
    return out


def _same_run(run_dir: str, reference_dir: str) -> None:
    got, want = load_results(run_dir), load_results(reference_dir)
    assert accuracies(got) == accuracies(want)
    assert got["epochs_run"] == want["epochs_run"] == KILL_EPOCHS
    assert os.path.basename(got["best_checkpoint"]) == os.path.basename(want["best_checkpoint"])
    # the same checkpoint files: no '-v1' twin of a best checkpoint written again after the kill
    assert sorted(os.listdir(os.path.join(run_dir, "checkpoints"))) == sorted(os.listdir(os.path.join(reference_dir, "checkpoints")))
    assert_same_weights(final_weights(run_dir), final_weights(reference_dir))
    best = lambda d: torch.load(load_results(d)["best_checkpoint"], map_location="cpu", weights_only=True)["state_dict"]  # noqa: E731
    assert_same_weights(best(run_dir), best(reference_dir))


@pytest.mark.slow
@pytest.mark.parametrize("strategy", STRATEGIES.names())
def test_every_strategy_killed_mid_epoch_and_after_last_validation_resumes_exactly(strategy, tiny_root, tmp_path_factory, tmp_path):
    reference_dir = _strategy_reference(tiny_root, strategy, str(tmp_path_factory.getbasetemp()))
    run_dir = str(tmp_path / "run")
    args = _strategy_args(tiny_root, strategy, run_dir)
    _killed_at(args, "train_batch:1:2")  # mid-epoch 1: last.ckpt is epoch 0's
    assert not os.path.exists(os.path.join(run_dir, "results.json"))
    assert torch.load(os.path.join(run_dir, "checkpoints", "last.ckpt"), map_location="cpu", weights_only=True)["epoch"] == 0
    # resumed, then killed after the last epoch's validation, before its checkpoints: that epoch runs again
    _killed_at([*args, "--ckpt_path", "last"], f"validation_end:{KILL_EPOCHS - 1}")
    assert not os.path.exists(os.path.join(run_dir, "results.json"))
    proc = run_vidlit(*args, "--ckpt_path", "last")
    assert proc.returncode == 0, proc.stderr[-4000:]
    _same_run(run_dir, reference_dir)
    # three processes trained this run: its wall time is their sum, more than the last one's
    wall = json.load(open(os.path.join(run_dir, ".wall_time.json")))
    assert len(wall) == 3 and load_results(run_dir)["wall_time_s"] == pytest.approx(sum(wall.values()), abs=0.05)
    assert load_results(run_dir)["wall_time_s"] > max(wall.values())


def _copy_run(src: str, dst: str) -> str:
    shutil.copytree(src, dst)
    return dst


def test_resuming_a_finished_run_trains_nothing_and_keeps_its_results(tiny_root, tmp_path_factory, tmp_path):
    reference_dir = _strategy_reference(tiny_root, "dann", str(tmp_path_factory.getbasetemp()))
    run_dir = _copy_run(reference_dir, str(tmp_path / "run"))
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    before = {name: (os.stat(os.path.join(ckpt_dir, name)).st_mtime_ns, open(os.path.join(ckpt_dir, name), "rb").read())
              for name in os.listdir(ckpt_dir)}
    results_before = open(os.path.join(run_dir, "results.json"), "rb").read()
    config_before = open(os.path.join(run_dir, "config.yaml"), "rb").read()
    proc = run_vidlit(*_strategy_args(tiny_root, "dann", run_dir), "--ckpt_path", "last")
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout + proc.stderr
    lines = [ln for ln in out.splitlines() if "run already finished" in ln]
    assert len(lines) == 1 and "nothing trained" in lines[0], out[-3000:]
    assert "Restoring states" not in out  # Lightning's fit never started: no training step, no re-validation
    assert open(os.path.join(run_dir, "results.json"), "rb").read() == results_before  # byte for byte
    assert open(os.path.join(run_dir, "config.yaml"), "rb").read() == config_before
    after = {name: (os.stat(os.path.join(ckpt_dir, name)).st_mtime_ns, open(os.path.join(ckpt_dir, name), "rb").read())
             for name in os.listdir(ckpt_dir)}
    assert after == before  # no new best-*-v1.ckpt, last.ckpt untouched


@pytest.mark.parametrize("point", ["test_start", "results_write"])
def test_killed_while_testing_or_writing_results_completes_without_training(point, tiny_root, tmp_path_factory, tmp_path):
    """Training had finished (last.ckpt is final) but results.json was never (fully) written."""
    reference_dir = _strategy_reference(tiny_root, "dann", str(tmp_path_factory.getbasetemp()))
    run_dir = _copy_run(reference_dir, str(tmp_path / "run"))
    os.remove(os.path.join(run_dir, "results.json"))
    args = [*_strategy_args(tiny_root, "dann", run_dir), "--ckpt_path", "last"]
    _killed_at(args, point)  # the resume itself is killed while testing / mid-write
    assert not os.path.exists(os.path.join(run_dir, "results.json"))  # a torn write never replaces results.json
    last_before = open(os.path.join(run_dir, "checkpoints", "last.ckpt"), "rb").read()
    proc = run_vidlit(*args)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "training had finished" in proc.stdout + proc.stderr and "Restoring states from the checkpoint path at " + os.path.join(run_dir, "checkpoints", "last.ckpt") not in proc.stdout + proc.stderr
    assert open(os.path.join(run_dir, "checkpoints", "last.ckpt"), "rb").read() == last_before
    got, want = load_results(run_dir), load_results(reference_dir)
    assert accuracies(got) == accuracies(want)
    assert os.path.basename(got["best_checkpoint"]) == os.path.basename(want["best_checkpoint"])
    assert os.path.dirname(got["best_checkpoint"]) == os.path.join(run_dir, "checkpoints")  # this run's file, not the original's
    ignored = {"wall_time_s", "run_dir", "best_checkpoint"}
    assert {k: v for k, v in got.items() if k not in ignored} == {k: v for k, v in want.items() if k not in ignored}
