"""Weight averaging (vidlit/averaging.py): SWAD's window, exact means, BatchNorm recompute, resume."""
from __future__ import annotations

import json
import os
import random

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from tests.helpers import REPO, TINY_FLAGS, run_vidlit
from vidlit.run.files import AVERAGED_CHECKPOINT
from vidlit.models.averaging import SwadWindow, recompute_bn, swad_window
from vidlit.callbacks.averaging import WeightAveraging


def _paper_window(losses, ns, ne, r):
    """The paper's formulas, brute force, on the (possibly shorter) tail at the end of the curve."""
    n = len(losses)
    s = next(i for i in range(n) if losses[i] <= min(losses[i:i + ns]))
    thr = r * sum(losses[s:s + ns]) / len(losses[s:s + ns])
    e = next((i for i in range(s, n) if min(losses[i:i + ne]) > thr), n)
    return s, e


def test_window_follows_the_swad_rule_on_a_made_up_curve():
    # falls to 1.0 at evaluation 4, flat (within 1.3 x 1.05) until 8, then 6 evaluations above 1.365
    curve = [5, 4, 3, 2, 1.0, 1.1, 1.05, 1.2, 1.25, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 1.0]
    assert swad_window(curve, 3, 6, 1.3) == (4, 9)
    # one dip back under the threshold within N_e keeps the window open
    curve2 = curve[:9] + [1.4, 1.5, 1.3, 1.6, 1.7, 1.8, 1.9, 2.0, 2.1, 2.2]
    assert swad_window(curve2, 3, 6, 1.3) == (4, 12)
    # still improving at the end: the last segment only
    assert swad_window([5, 4, 3, 2, 1], 3, 6, 1.3) == (4, 5)
    rng = random.Random(0)
    for _ in range(500):
        n, ns, ne = rng.randint(1, 25), rng.randint(1, 4), rng.randint(1, 7)
        losses = [rng.choice([0.5, 1.0, 1.2, 1.5, 2.0, 3.0]) * rng.uniform(0.9, 1.1) for _ in range(n)]
        r = rng.choice([1.0, 1.1, 1.3, 2.0])
        assert swad_window(losses, ns, ne, r) == _paper_window(losses, ns, ne, r), (losses, ns, ne, r)


def test_online_window_admits_exactly_the_segments_of_the_window():
    curve = [5, 4, 3, 2, 1.0, 1.1, 1.05, 1.2, 1.25, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 1.0]
    w = SwadWindow(3, 6, 1.3)
    admitted = [p for i, loss in enumerate(curve) for p in w.add(loss, i)] + w.finish()
    assert admitted == list(range(4, 9)) and (w.start, w.end) == (4, 9)


def _tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def test_swad_average_is_the_mean_of_every_step_in_the_window():
    model, cb = _tiny(), WeightAveraging("swad", swad_patience=2, swad_overfit_patience=2, swad_tolerance=1.2)
    curve = [3.0, 2.0, 1.0, 1.1, 1.05, 2.0, 2.5, 0.5]  # window: evaluations 2..4 (5 and 6 above 1.2 x 1.05)
    steps_per_eval = [2, 3, 4, 1, 3, 2, 2, 3]  # unequal segments: the mean is over steps, not segments
    snapshots, step = {}, 0
    for e, (loss, k) in enumerate(zip(curve, steps_per_eval)):
        for _ in range(k):
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn_like(p))
            step += 1
            cb.update(model, step)
            snapshots.setdefault(e, []).append([p.detach().clone() for p in model.parameters()])
        cb.evaluation(loss, step)
    got = cb.averaged()
    assert (cb.window.start, cb.window.end) == (2, 5)
    inside = [s for e in range(2, 5) for s in snapshots[e]]
    assert cb.average.count == len(inside) == 8
    for i, t in enumerate(got):
        torch.testing.assert_close(t, torch.stack([s[i] for s in inside]).mean(0), atol=1e-6, rtol=1e-6)
    # a model ahead or behind the window gives another mean: the test above would see it
    everything = [s for e in snapshots for s in snapshots[e]]
    assert not torch.allclose(got[0], torch.stack([s[0] for s in everything]).mean(0), atol=1e-3)


def test_ema_follows_its_formula_and_state_round_trips():
    model, cb = _tiny(), WeightAveraging("ema", ema_decay=0.9)
    want = None
    for t in range(30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        cb.update(model, t + 1)
        w = [p.detach().clone() for p in model.parameters()]
        d = min(0.9, (1 + t) / (10 + t))
        want = w if want is None else [d * a + (1 - d) * b for a, b in zip(want, w)]
        if t == 14:  # a checkpoint in the middle: a fresh callback continues exactly
            state = cb.state_dict()
            cb = WeightAveraging("ema", ema_decay=0.9)
            cb.load_state_dict(state)
    for got, ref in zip(cb.averaged(), want):
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)


def test_batchnorm_statistics_are_recomputed_exactly_and_frozen_ones_kept():
    model = _tiny()
    bn = model[1]
    bn.running_mean.fill_(7.0)
    bn.running_var.fill_(9.0)
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(5, 3, generator=g) * 3 + 1 for _ in range(4)]
    assert recompute_bn(model, batches) == 1
    h = torch.cat([model[0](b) for b in batches]).detach()
    # momentum None: the mean over batches of each batch's statistics (equal batch sizes: the overall mean)
    torch.testing.assert_close(bn.running_mean, h.mean(0), atol=1e-5, rtol=0)
    torch.testing.assert_close(bn.running_var, torch.stack([model[0](b).detach().var(0) for b in batches]).mean(0), atol=1e-5, rtol=0)
    assert bn.momentum == 0.1 and model.training
    frozen = _tiny()
    frozen[1].running_mean.fill_(7.0)
    frozen.train()
    frozen[1].eval()  # as --model.freeze / --model.freeze_bn leave it: not recomputed
    frozen.train = lambda mode=True: (nn.Module.train(frozen, mode), frozen[1].eval())[0]  # type: ignore[method-assign]
    assert recompute_bn(frozen, batches) == 0
    assert torch.all(frozen[1].running_mean == 7.0)


SWAD_FLAGS = ("--average.method", "swad", "--average.swad_patience", "2", "--average.swad_overfit_patience", "2")
STEP_WEIGHTS_ENV = "VIDLIT_TEST_STEP_WEIGHTS"


class StepWeights(pl.Callback):
    """Saves the averaged parameters after every optimizer step of ``fit`` to
    ``$VIDLIT_TEST_STEP_WEIGHTS/step-N.pt`` (N: ``global_step``), one file per step, so a run
    killed and resumed leaves every step's weights (a step redone after the resume rewrites its file).
    Passed to the CLI as ``--trainer.callbacks+=tests.test_averaging.StepWeights``."""

    def __init__(self) -> None:
        self.folder = os.environ[STEP_WEIGHTS_ENV]
        self._last = -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self._last:
            return
        self._last = trainer.global_step
        os.makedirs(self.folder, exist_ok=True)
        params = {n: p.detach().cpu().clone() for n, p in pl_module.named_parameters() if p.is_floating_point()}
        torch.save(params, os.path.join(self.folder, f"step-{trainer.global_step}.pt"))


def _recording(folder: str) -> tuple[tuple, dict]:
    """CLI flags and environment that record every step's weights into ``folder`` (:class:`StepWeights`)."""
    return ("--trainer.callbacks+=tests.test_averaging.StepWeights",), {STEP_WEIGHTS_ENV: folder, "PYTHONPATH": REPO}


def assert_averaged_checkpoint_is_the_window_mean(run_dir: str, steps_dir: str) -> None:
    """``checkpoints/best-averaged.ckpt`` holds the mean of the weights after every optimizer step
    inside the SWAD window that ``results.json`` reports (the steps after the validation before the
    window's first one, up to its last one), each step's weights as :class:`StepWeights` saved them."""
    res = json.load(open(os.path.join(run_dir, "results.json")))
    s, e = res["average"]["window"]
    steps = {h["epoch"]: h["step"] for h in res["history"]}  # one validation per epoch
    first, last = (steps[s - 1] if s > 0 else 0) + 1, steps[e - 1]
    window = list(range(first, last + 1))
    assert len(window) == res["average"]["n_averaged"] >= 2
    snaps = [torch.load(os.path.join(steps_dir, f"step-{k}.pt"), map_location="cpu", weights_only=True) for k in window]
    averaged = torch.load(os.path.join(run_dir, "checkpoints", AVERAGED_CHECKPOINT), map_location="cpu", weights_only=True)["state_dict"]
    assert set(snaps[0]) <= set(averaged) and len(snaps[0]) > 10
    moved = 0
    for name in snaps[0]:
        want = torch.stack([snap[name].double() for snap in snaps]).mean(0)
        torch.testing.assert_close(averaged[name].double(), want, atol=1e-6, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
        moved += not torch.allclose(snaps[-1][name], snaps[0][name])
    assert moved > 0  # the steps differ, so neither the last nor any single step's weights equal the mean
    name = next(n for n in snaps[-1] if not torch.allclose(snaps[-1][n], snaps[0][n]))
    assert not torch.allclose(averaged[name], snaps[-1][name], atol=1e-6)


def _fit(root: str, run_dir: str, *extra: str, average: tuple = SWAD_FLAGS) -> list[str]:
    return ["fit", "--data.root", root, *TINY_FLAGS, "--trainer.max_epochs", "3", "--trainer.default_root_dir", run_dir,
            *average, *extra]


def test_swad_through_fit_reports_and_tests_the_averaged_model(tiny_root, tmp_path):
    run_dir = str(tmp_path / "run")
    record, env = _recording(str(tmp_path / "steps"))
    proc = run_vidlit(*_fit(tiny_root, run_dir, *record), env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert_averaged_checkpoint_is_the_window_mean(run_dir, str(tmp_path / "steps"))
    res = json.load(open(os.path.join(run_dir, "results.json")))
    avg = res["average"]
    assert avg["method"] == "swad" and avg["bn_recomputed"] == 4  # tiny3d's 4 BatchNorms
    assert res["best_checkpoint"].endswith(AVERAGED_CHECKPOINT)
    losses = [h["val_loss"] for h in res["history"]]
    assert avg["window"] == list(swad_window(losses, 2, 2, 1.3))
    steps = {h["epoch"]: h["step"] for h in res["history"]}
    s, e = avg["window"]
    assert avg["n_averaged"] == steps[e - 1] - (steps[s - 1] if s > 0 else 0)  # every step of the window
    ckpts = os.path.join(run_dir, "checkpoints")
    averaged_ckpt = torch.load(os.path.join(ckpts, AVERAGED_CHECKPOINT), map_location="cpu", weights_only=True)
    stamp = averaged_ckpt["vidlit"]  # one stamp (vidlit.run.checkpoint.STAMP_KEY): what predict/export need
    assert stamp["strategy"] == "erm" and stamp["dataset"] == "folder" and stamp["class_names"] and stamp["vidlit_version"]
    assert "callbacks" not in averaged_ckpt and "optimizer_states" not in averaged_ckpt  # weights only
    averaged = averaged_ckpt["state_dict"]
    last = torch.load(os.path.join(ckpts, "last.ckpt"), map_location="cpu", weights_only=True)
    state = last["callbacks"]["WeightAveraging"]
    assert state["method"] == "swad" and state["window"]["losses"] == pytest.approx(avg["losses"])
    # BatchNorm statistics are the averaged model's own, not the last model's
    key = next(k for k in averaged if k.endswith("running_mean"))
    assert not torch.allclose(averaged[key], last["state_dict"][key])
    # the run without averaging is in the same results: the epoch-selected checkpoint, whose numbers
    # equal those of the same run made without --average (averaging leaves the trajectory alone)
    plain_dir = str(tmp_path / "plain")
    plain = run_vidlit(*_fit(tiny_root, plain_dir, average=()))
    assert plain.returncode == 0, plain.stderr[-4000:]
    ref = json.load(open(os.path.join(plain_dir, "results.json")))
    assert "average" not in ref or ref["average"].get("method") in (None, "none")
    raw = avg["unaveraged"]
    assert raw["best_epoch"] == ref["best_epoch"] and raw["val_acc"] == ref["val_acc"]
    assert raw["test_acc"] == ref["test_acc"] and raw["test_acc_per_domain"] == ref["test_acc_per_domain"]
    # a continuous value, so neither an equal accuracy by chance nor the averaged model passes
    assert raw["val_loss"] == ref["val_loss"] and raw["val_loss"] != res["val_loss"]
    assert f"without averaging (best epoch {ref['best_epoch']})" in proc.stdout


def test_without_averaging_is_tested_like_the_averaged_model(tiny_root, tmp_path):
    """With several test views and test-time adaptation, the run without averaging
    (``average.unaveraged``, the epoch-selected checkpoint) is tested the same way as the averaged
    model: its accuracies are those of ``test --ckpt_path`` on that checkpoint with the same
    ``--data.test_views`` and ``--tta.*``, not the one-view, unadapted validation of its epoch; and
    results.json says how each side was tested."""
    run_dir = str(tmp_path / "run")
    evaluation = ("--data.test_views", "2x1", "--tta.method", "adabn")
    fit = run_vidlit(*_fit(tiny_root, run_dir, "--trainer.logger", "false", *evaluation))
    assert fit.returncode == 0, fit.stderr[-4000:]
    assert "without averaging (best epoch" in fit.stdout
    res = json.load(open(os.path.join(run_dir, "results.json")))
    avg, raw = res["average"], res["average"]["unaveraged"]
    assert avg["evaluation"] == raw["evaluation"] == {"test_views": "2x1", "tta": "adabn"}
    assert res["tta"]["method"] == "adabn" and res["best_checkpoint"].endswith(AVERAGED_CHECKPOINT)
    selected = os.path.join(run_dir, "checkpoints", f"best-epoch={raw['best_epoch']:03d}.ckpt")
    assert os.path.isfile(selected) and raw["checkpoint"] == os.path.abspath(selected)
    # the epoch-selected checkpoint tested on its own, with the same views and adaptation
    proc = run_vidlit("test", "--ckpt_path", selected, "--trainer.default_root_dir", str(tmp_path / "t"), "--trainer.logger", "false",
                      "--trainer.enable_progress_bar", "false", "--data.num_workers", "0", *evaluation)
    assert proc.returncode == 0, proc.stderr[-4000:]
    tested = json.load(open(tmp_path / "t" / "test_results.json"))
    assert tested["tta"]["method"] == "adabn"
    assert raw["test_acc"] == tested["test_acc"] and raw["test_acc_per_domain"] == tested["test_acc_per_domain"]
    # its source validation is the history's at that epoch (one view, no adaptation: as the averaged model's)
    row = next(h for h in res["history"] if h["epoch"] == raw["best_epoch"])
    assert raw["val_acc"] == row["val_acc"] and raw["val_loss"] == row["val_loss"]


@pytest.mark.slow
def test_running_average_survives_a_kill_and_resume(tiny_root, tmp_path, monkeypatch):
    from tests.test_resume import _killed_at

    ref_dir, run_dir = str(tmp_path / "ref"), str(tmp_path / "run")
    # several segments in the buffer at the kill: the window closes late (tolerance 10)
    record, env = _recording(str(tmp_path / "ref-steps"))
    extra = ["--average.swad_tolerance", "10", *record]
    proc = run_vidlit(*_fit(tiny_root, ref_dir, *extra), env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert_averaged_checkpoint_is_the_window_mean(ref_dir, str(tmp_path / "ref-steps"))
    # the killed process and the resumed one save their steps in one folder (steps redone after the
    # resume rewrite theirs): the resumed run's average is checked against the steps it went through
    _, env = _recording(str(tmp_path / "run-steps"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    _killed_at(_fit(tiny_root, run_dir, *extra), "train_batch:1:2")  # mid-epoch 1: last.ckpt is epoch 0's
    assert not os.path.exists(os.path.join(run_dir, "results.json"))
    proc = run_vidlit(*_fit(tiny_root, run_dir, *extra), "--ckpt_path", "last")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert_averaged_checkpoint_is_the_window_mean(run_dir, str(tmp_path / "run-steps"))
    got, want = (json.load(open(os.path.join(d, "results.json"))) for d in (run_dir, ref_dir))
    for res, d in ((got, run_dir), (want, ref_dir)):  # the epoch-selected checkpoint tested: the run's own file
        path = res["average"]["unaveraged"].pop("checkpoint")
        assert os.path.dirname(path) == os.path.abspath(os.path.join(d, "checkpoints"))
    assert got["average"] == want["average"] and got["test_acc"] == want["test_acc"]
    a, b = (torch.load(os.path.join(d, "checkpoints", AVERAGED_CHECKPOINT), map_location="cpu", weights_only=True)["state_dict"]
            for d in (run_dir, ref_dir))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)
