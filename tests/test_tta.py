"""Test-time adaptation (vidlit/tta.py): AdaBN's statistics, Tent's parameters and objective,
per-domain state, no labels, the model restored; AdaBN's gain on a shifted target."""
from __future__ import annotations

import copy
import hashlib
import json
import os

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from vidlit.utils.errors import VidlitError
from vidlit.models.metrics import PerDomainAccuracy
from vidlit.models.strategy import STRATEGIES
from vidlit.callbacks.tta import TestTimeAdaptation, batchnorms, entropy

BN = nn.modules.batchnorm._BatchNorm


class Items(torch.utils.data.Dataset):
    """Map-style single videos (as vidlit's ClipDataset gives them: with ``index`` and ``domain_ids``)."""

    def __init__(self, clips: dict) -> None:
        self.clips = clips
        self.domain_ids = clips["domain"]

    def __len__(self) -> int:
        return len(self.clips["label"])

    def __getitem__(self, i: int) -> dict:
        return {"video": self.clips["video"][i], "label": self.clips["label"][i], "domain": self.clips["domain"][i], "index": i}


def tiny_model(seed: int = 0) -> pl.LightningModule:
    torch.manual_seed(seed)
    model = STRATEGIES.get("erm")(num_classes=3, num_domains=2, backbone="tiny3d")
    model.domain_names = {"test": ["d0", "d1"]}
    return model


def random_clips(n_per_domain: int = 6, seed: int = 0) -> dict:
    """Two target domains of random uint8 clips with different appearance statistics."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, 120, (n_per_domain, 3, 4, 16, 16), generator=g, dtype=torch.uint8)
    b = torch.randint(100, 256, (n_per_domain, 3, 4, 16, 16), generator=g, dtype=torch.uint8)
    return {"video": torch.cat([a, b]), "label": torch.randint(0, 3, (2 * n_per_domain,), generator=g),
            "domain": torch.tensor([0] * n_per_domain + [1] * n_per_domain)}


class Probe(pl.Callback):
    """Records the model's state (parameters and buffers) at every test batch's end."""

    def __init__(self) -> None:
        self.states: list[dict] = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.states.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})


def run_test(model, clips, tta: TestTimeAdaptation, batch_size: int, *extra: pl.Callback) -> dict:
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, callbacks=[tta, *extra])
    names = list(model.domain_names["test"])

    def setup(stage: str) -> None:  # no DataModule: the test domains and their metric from the test's names
        type(model).setup(model, stage)
        model.domain_names["test"] = names
        model.test_acc = PerDomainAccuracy(len(names))

    model.setup = setup
    out = trainer.test(model, torch.utils.data.DataLoader(Items(clips), batch_size=batch_size), verbose=False)
    return out[0]


def snapshot(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


# ----------------------------------------------------------------------------- AdaBN
def test_adabn_statistics_are_the_target_clips_statistics():
    model, clips = tiny_model(), random_clips()
    before = snapshot(model)
    # batches of 4 (domains straddle batches): the first BatchNorm's statistics are still exact
    cb = TestTimeAdaptation("adabn")
    run_test(model, clips, cb, batch_size=4)
    assert cb.summary["tta"]["clips_per_domain"] == {"d0": 6, "d1": 6}
    stem = model.backbone.net.stem
    with torch.no_grad():
        for d, name in enumerate(("d0", "d1")):
            x = stem[0](model.normalize(clips["video"][clips["domain"] == d])).double()
            mean = x.mean((0, 2, 3, 4))
            var = x.transpose(0, 1).flatten(1).var(1, unbiased=True)
            torch.testing.assert_close(cb.adapted[name]["backbone.net.stem.1.running_mean"].double(), mean, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(cb.adapted[name]["backbone.net.stem.1.running_var"].double(), var, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(cb.adapted["d0"]["backbone.net.stem.1.running_mean"], cb.adapted["d1"]["backbone.net.stem.1.running_mean"])
    assert_same_state(before, snapshot(model))  # restored after the test

    # one batch per domain: every layer's statistics are those of a train-mode pass over the domain
    cb = TestTimeAdaptation("adabn")
    run_test(model, clips, cb, batch_size=6)
    for d, name in enumerate(("d0", "d1")):
        ref = copy.deepcopy(model)
        for _, m in batchnorms(ref):
            m.momentum = 1.0  # running statistics := this batch's (unbiased variance)
        ref.train()
        with torch.no_grad():
            ref(ref.normalize(clips["video"][clips["domain"] == d]))
        for n, m in batchnorms(ref):
            torch.testing.assert_close(cb.adapted[name][f"{n}.running_mean"], m.running_mean, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(cb.adapted[name][f"{n}.running_var"], m.running_var, rtol=1e-4, atol=1e-5)


def test_adabn_scores_each_domain_with_its_own_statistics():
    """The accuracy under AdaBN is that of the model evaluated (eval mode) with each domain's
    adapted statistics loaded, and batches mixing two domains are split between them."""
    model, clips = tiny_model(), random_clips()
    cb = TestTimeAdaptation("adabn")
    out = run_test(model, clips, cb, batch_size=5)  # batch 2 holds d0 and d1 clips
    preds = []
    for d, name in enumerate(("d0", "d1")):
        ref = copy.deepcopy(model).eval()
        ref.load_state_dict({**ref.state_dict(), **cb.adapted[name]})
        with torch.no_grad():
            preds.append(ref(ref.normalize(clips["video"][clips["domain"] == d])).argmax(-1))
    for d, name in enumerate(("d0", "d1")):
        acc = (preds[d] == clips["label"][clips["domain"] == d]).float().mean()
        assert out[f"test/acc/{name}"] == pytest.approx(float(acc), abs=1e-6)


# ----------------------------------------------------------------------------- Tent
def test_tent_changes_only_batchnorm_affine_parameters_and_restores_the_model():
    model, clips = tiny_model(), random_clips()
    before = snapshot(model)
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    probe = Probe()
    cb = TestTimeAdaptation("tent", lr=1e-2, order="loader")
    run_test(model, clips, cb, 4, probe)
    affine = {f"{n}.{w}" for n, _ in batchnorms(model) for w in ("weight", "bias")}
    during = probe.states[-1]
    changed = {k for k in before if not torch.equal(before[k], during[k])}
    assert changed and changed <= affine  # running statistics, convolutions, head: unchanged
    assert changed == affine  # every affine parameter moved
    assert_same_state(before, snapshot(model))  # restored after the test
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    assert all(p.grad is None for p in model.parameters())
    # per-domain state: d1 starts from the original weights, not from d0's adapted ones
    assert set(cb.adapted) == {"d0", "d1"}
    assert not torch.equal(cb.adapted["d0"]["backbone.net.stem.1.weight"], cb.adapted["d1"]["backbone.net.stem.1.weight"])


def test_tent_lowers_the_entropy_of_a_repeated_batch():
    model, clips = tiny_model(), random_clips()
    one = {k: v[:6] for k, v in clips.items()}  # domain d0
    repeated = {k: v.repeat(*([6] + [1] * (v.dim() - 1))) for k, v in one.items()}
    cb = TestTimeAdaptation("tent", lr=1e-2, order="loader")
    run_test(model, repeated, cb, 6)
    ent = cb.entropies["d0"]
    assert len(ent) == 6 and ent[-1] < ent[0] - 1e-3 and all(b < a for a, b in zip(ent, ent[1:]))
    # the objective is the mean entropy of the batch's predictions (batch statistics in BatchNorm)
    ref = copy.deepcopy(model)
    for _, m in batchnorms(ref):
        m.train()
        m.track_running_stats = False
    with torch.no_grad():
        assert ent[0] == pytest.approx(float(entropy(ref(ref.normalize(one["video"]))).mean()), rel=1e-5)


def test_tent_reads_no_labels():
    model, clips = tiny_model(), random_clips()
    results = []
    for labels in (clips["label"], clips["label"].flip(0) % 3, torch.zeros_like(clips["label"])):
        cb = TestTimeAdaptation("tent", lr=1e-2)  # the shuffled stream
        run_test(model, {**clips, "label": labels}, cb, 4)
        results.append((cb.adapted, cb._online.clone(), cb.entropies))
    for adapted, online, ent in results[1:]:
        for name in ("d0", "d1"):
            assert_same_state(results[0][0][name], adapted[name])
        assert torch.equal(results[0][1], online) and results[0][2] == ent


def test_tent_episodic_and_options():
    model, clips = tiny_model(), random_clips()
    one = {k: v[:6].repeat(*([3] + [1] * (v.dim() - 1))) for k, v in clips.items()}
    cb = TestTimeAdaptation("tent", lr=1e-2, order="loader", episodic=True)
    run_test(model, one, cb, 6)
    ent = cb.entropies["d0"]
    assert ent[0] == pytest.approx(ent[1], rel=1e-6) == pytest.approx(ent[2], rel=1e-6)  # reset after every batch
    for bad in ({"method": "tnt"}, {"method": "tent", "steps": 0}, {"method": "tent", "lr": 0.0}, {"method": "tent", "order": "x"}):
        with pytest.raises(VidlitError, match="--tta"):
            TestTimeAdaptation(**bad)


# ----------------------------------------------------------------------------- behaviour
def test_adabn_recovers_accuracy_on_a_target_with_shifted_appearance():
    """ERM trained on the in-memory source domains; the target is clean clips with a global
    brightness and colour change (per-channel gain and offset). Without adaptation the trained
    statistics mismatch; AdaBN's statistics of the target clips bring the accuracy back."""
    from vidlit.data.fake import CLASSES, BalancedBatches, _SetEpoch, render_clips, source_splits

    torch.set_num_threads(1)
    train, _ = source_splits()
    pl.seed_everything(0, verbose=False)
    model = STRATEGIES.get("erm")(num_classes=len(CLASSES), num_domains=3)
    batches = BalancedBatches(train, 8)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=10, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, callbacks=[_SetEpoch(batches)])
    trainer.fit(model, torch.utils.data.DataLoader(batches, batch_size=None))
    target = render_clips(("clean",), per_class=8, frames=16, size=32, seed=5)
    video = target["video"][:, :, ::2].float() * torch.tensor([0.5, 0.35, 0.45]).view(1, 3, 1, 1, 1) + 20
    target = {**target, "video": video.clamp(0, 255).to(torch.uint8)}
    model.domain_names = {"test": ["target"]}
    acc = {m: run_test(model, target, TestTimeAdaptation(m), 10)["test/acc"] for m in ("none", "adabn")}
    assert acc["adabn"] >= acc["none"] + 0.2, acc


# ----------------------------------------------------------------------------- CLI
BN_PROBE_ENV = "VIDLIT_TEST_BN_PROBE"


class FirstBatchNormProbe(pl.Callback):
    """For every forward of the test loop (not AdaBN's statistics pass, which runs before it): the
    input of the model's first BatchNorm (its sum, sum of squares and count per channel, float64)
    and the running statistics that layer normalises with, saved to ``$VIDLIT_TEST_BN_PROBE`` at
    the end of the test. Its input does not depend on any BatchNorm statistics, so the inputs of the
    test loop are the target clips' statistics at that layer. Passed to the CLI as
    ``--trainer.callbacks+=tests.test_tta.FirstBatchNormProbe``."""

    def __init__(self) -> None:
        self.path = os.environ[BN_PROBE_ENV]
        self.calls: list[dict] = []
        self._handle = None

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        name, bn = batchnorms(pl_module)[0]

        def pre(module, inputs) -> None:
            x = inputs[0].detach().double()
            dims = [0] + list(range(2, x.dim()))
            self.calls.append({"name": name, "sum": x.sum(dims).cpu(), "sq": (x * x).sum(dims).cpu(), "n": x.numel() // x.shape[1],
                               "clips": x.shape[0], "training": module.training, "running_mean": module.running_mean.detach().cpu().clone(),
                               "running_var": module.running_var.detach().cpu().clone()})

        self._handle = bn.register_forward_pre_hook(pre)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._handle.remove()

    def on_test_end(self, trainer, pl_module) -> None:
        torch.save(self.calls, self.path)


def test_cli_test_with_tta_writes_tta_and_leaves_the_checkpoint(tiny_root, tmp_path_factory, tmp_path):
    from tests.helpers import REPO, run_vidlit
    from tests.test_reproducible import reference_run

    run = reference_run(tiny_root, str(tmp_path_factory.getbasetemp()))
    ckpt = os.path.join(run, "checkpoints", "last.ckpt")
    digest = hashlib.sha256(open(ckpt, "rb").read()).hexdigest()
    probe = str(tmp_path / "bn-probe.pt")
    proc = run_vidlit("test", "--ckpt_path", ckpt, "--tta.method", "adabn", "--trainer.default_root_dir", str(tmp_path / "t"),
                      "--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--data.num_workers", "0",
                      "--trainer.callbacks+=tests.test_tta.FirstBatchNormProbe", env={BN_PROBE_ENV: probe, "PYTHONPATH": REPO})
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "t" / "test_results.json").read_text())
    assert res["tta"]["method"] == "adabn" and res["tta"]["clips_per_domain"]["texture"] > 0
    assert 0 <= res["test_acc"] <= 1
    assert hashlib.sha256(open(ckpt, "rb").read()).hexdigest() == digest
    # the test normalised with the target's statistics (one target domain: texture): the first
    # BatchNorm, in eval mode, held the mean and unbiased variance of its input over the test
    # clips, not the trained statistics the checkpoint holds
    calls = torch.load(probe, weights_only=True)
    assert len(calls) >= 2 and not any(c["training"] for c in calls)
    assert sum(c["clips"] for c in calls) == res["tta"]["clips_per_domain"]["texture"]  # the clips AdaBN's pass read
    n = sum(c["n"] for c in calls)
    mean = sum(c["sum"] for c in calls) / n
    var = (sum(c["sq"] for c in calls) - n * mean * mean) / (n - 1)
    trained = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    for c in calls:
        torch.testing.assert_close(c["running_mean"].double(), mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(c["running_var"].double(), var, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(trained[f"{calls[0]['name']}.running_mean"].double(), mean, rtol=1e-2, atol=1e-3)
    proc = run_vidlit("test", "--ckpt_path", ckpt, "--tta.method", "tnt")
    assert proc.returncode == 2 and "tta.method" in proc.stderr


def test_foreground_share_under_tta_is_the_unadapted_models(tiny_root, tmp_path_factory, tmp_path):
    """``test --tta.method adabn|tent``: the foreground share (Grad-CAM at the end of the test) is
    computed on the tested checkpoint without adaptation, whatever the order of the callbacks
    (not with Tent's hooks still attached or the last domain's AdaBN statistics), so it equals the
    share of the same test without TTA; test_results.json says which model it was."""
    from tests.helpers import run_vidlit
    from tests.test_reproducible import reference_run

    run = reference_run(tiny_root, str(tmp_path_factory.getbasetemp()))
    ckpt = os.path.join(run, "checkpoints", "last.ckpt")
    shares = {}
    for method in ("none", "adabn", "tent"):
        out = tmp_path / method
        proc = run_vidlit("test", "--ckpt_path", ckpt, "--tta.method", method, "--trainer.default_root_dir", str(out),
                          "--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--data.num_workers", "0")
        assert proc.returncode == 0, proc.stderr[-3000:]
        res = json.loads((out / "test_results.json").read_text())
        assert res["foreground_share_info"]["model"] == "unadapted", res["foreground_share_info"]
        assert res["foreground_share_info"]["tta"] == method and res.get("tta", {"method": "none"})["method"] == method
        shares[method] = res["foreground_share"]
    assert shares["none"]["texture"] is not None
    assert shares["adabn"] == shares["none"] and shares["tent"] == shares["none"]
