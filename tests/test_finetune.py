"""Gradual unfreezing (vidlit/finetune.py) and layer-wise lr decay (``--model.llrd``)."""
from __future__ import annotations

import os

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from vidlit.data.fake import CLASSES, BalancedBatches, _SetEpoch, source_splits
from vidlit.utils.errors import VidlitError
from vidlit.callbacks.finetune import GradualUnfreeze
from vidlit.models.strategy import STRATEGIES


def small_data():
    train, _ = source_splits(per_class=6, size=32)  # 4 training clips per (domain, class): 5 batches of 12
    return train


class Record(pl.Callback):
    """The model's state at the end of every training epoch, and each step's lr per group name."""

    def __init__(self) -> None:
        self.states: list[dict] = []
        self.lrs: list[dict] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.states.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.lrs.append({g.get("name"): g["lr"] for g in trainer.optimizers[0].param_groups})


class StopAfter(pl.Callback):
    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


def fit(epochs: int, callbacks=(), ckpt_dir=None, ckpt_path=None, strategy="erm", **model_kw):
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    model = STRATEGIES.get(strategy)(num_classes=len(CLASSES), num_domains=3, **model_kw)
    data = BalancedBatches(small_data(), 4)
    cbs = [_SetEpoch(data), *callbacks]
    if ckpt_dir:
        cbs.append(ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0))
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=bool(ckpt_dir),
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                         callbacks=cbs)
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=None), ckpt_path=ckpt_path, weights_only=True)
    return model, trainer


def backbone_keys(state: dict) -> list[str]:
    return [k for k in state if k.startswith("backbone.")]


def test_backbone_frozen_before_the_epoch_then_trained_at_lr_times_mult():
    rec = Record()
    pl.seed_everything(0, verbose=False)  # the model fit() builds: same seed, same initial weights
    first = STRATEGIES.get("erm")(num_classes=len(CLASSES), num_domains=3, backbone_lr_mult=0.25)
    init = {k: v.clone() for k, v in first.state_dict().items()}
    model, trainer = fit(3, [GradualUnfreeze(unfreeze_at_epoch=2), rec], backbone_lr_mult=0.25)
    bb = backbone_keys(init)
    assert any("running_mean" in k for k in bb)
    for epoch in (0, 1):  # backbone parameters and BatchNorm statistics untouched, head trained
        assert [k for k in bb if not torch.equal(rec.states[epoch][k], init[k])] == []
        assert not torch.equal(rec.states[epoch]["head.1.weight"], init["head.1.weight"])
    changed = [k for k in bb if not torch.equal(rec.states[2][k], rec.states[1][k])]
    assert set(changed) == set(bb)  # epoch 2 trains every backbone parameter and statistic
    names = [g["name"] for g in trainer.optimizers[0].param_groups]
    assert names == ["head", "backbone"]  # one optimizer, the backbone a group of its own
    steps = len(rec.lrs) // 3
    assert all("backbone" not in lr for lr in rec.lrs[: 2 * steps])
    for lr in rec.lrs[2 * steps:]:  # the schedule's factor applies to both groups: ratio = backbone_lr_mult
        assert lr["backbone"] == pytest.approx(0.25 * lr["head"], rel=1e-9)
    assert all(p.requires_grad for p in model.backbone.parameters())
    assert not model._frozen_modules


def test_unfreezing_keeps_the_freeze_policy():
    """--model.freeze all_but_1: only the last stage is ever trained, and it is what is unfrozen."""
    rec = Record()
    model, trainer = fit(2, [GradualUnfreeze(unfreeze_at_epoch=1), rec], freeze="all_but_1")
    s0, s1 = rec.states
    assert not torch.equal(s0["backbone.net.layer3.0.weight"], s1["backbone.net.layer3.0.weight"])
    for k in ("backbone.net.stem.0.weight", "backbone.net.layer2.0.weight", "backbone.net.layer2.1.running_mean"):
        assert torch.equal(s0[k], s1[k])
    assert not model.backbone.net.stem[0].weight.requires_grad and model.backbone.net.layer3[0].weight.requires_grad
    assert model.backbone.net.stem[1] in model._frozen_modules and model.backbone.net.layer3[1] not in model._frozen_modules


def test_off_by_default_changes_nothing():
    a, _ = fit(1, [GradualUnfreeze()])
    b, _ = fit(1)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    with pytest.raises(VidlitError, match="unfreeze_at_epoch"):
        GradualUnfreeze(-1)


@pytest.mark.parametrize("stop", [2, 3])  # a checkpoint before the unfreeze epoch, and one after it
def test_resume_across_the_unfreeze_epoch_matches_an_uninterrupted_run(tmp_path, stop):
    ref, _ = fit(4, [GradualUnfreeze(unfreeze_at_epoch=2)], backbone_lr_mult=0.5, llrd=0.5)
    d = str(tmp_path / "ck")
    fit(4, [GradualUnfreeze(unfreeze_at_epoch=2), StopAfter(stop)], ckpt_dir=d, backbone_lr_mult=0.5, llrd=0.5)
    state = torch.load(os.path.join(d, "last.ckpt"), map_location="cpu", weights_only=True)
    assert state["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"] == stop
    groups = state["optimizer_states"][0]["param_groups"]
    assert len(groups) == (1 if stop == 2 else 5)  # head, then the 4 stages' groups
    resumed, trainer = fit(4, [GradualUnfreeze(unfreeze_at_epoch=2)], ckpt_dir=d, ckpt_path=os.path.join(d, "last.ckpt"),
                           backbone_lr_mult=0.5, llrd=0.5)
    assert [g["name"] for g in trainer.optimizers[0].param_groups][0] == "head"
    want = ref.state_dict()
    different = [k for k, v in resumed.state_dict().items() if not torch.allclose(v.float(), want[k].float(), atol=1e-6)]
    assert different == []


# ----------------------------------------------------------------------------- layer-wise lr decay
def test_llrd_gives_each_stage_its_lr():
    model = STRATEGIES.get("erm")(num_classes=3, num_domains=2, lr=1e-3, backbone_lr_mult=0.5, llrd=0.8)
    groups = {g["name"]: g for g in model.param_groups()}
    stages = model.backbone.stage_names  # stem, layer1, layer2, layer3
    assert list(groups) == [f"backbone.{s}" for s in stages] + ["head"]
    for k, s in enumerate(reversed(stages)):  # k = 0 for the top stage
        assert groups[f"backbone.{s}"]["lr"] == pytest.approx(1e-3 * 0.5 * 0.8 ** k)
        assert {id(p) for p in groups[f"backbone.{s}"]["params"]} == {id(p) for p in model.backbone.net.get_submodule(s).parameters()}
    assert groups["head"]["lr"] == 1e-3
    n = sum(len(g["params"]) for g in groups.values())
    assert n == len(list(model.parameters()))  # every parameter in exactly one group
    # without llrd: one backbone group, as before
    plain = STRATEGIES.get("erm")(num_classes=3, num_domains=2, lr=1e-3, backbone_lr_mult=0.5)
    assert [(g["name"], g["lr"]) for g in plain.param_groups()] == [("backbone", 5e-4), ("head", 1e-3)]
    # a strategy with groups of its own keeps them
    dann = STRATEGIES.get("dann")(num_classes=3, num_domains=2, llrd=0.8)
    assert [g["name"] for g in dann.param_groups()][-2:] == ["head", "discriminator"]
    with pytest.raises(VidlitError, match="llrd"):
        STRATEGIES.get("erm")(num_classes=3, num_domains=2, llrd=1.5)


def test_llrd_lrs_through_a_trainer():
    rec = Record()
    fit(1, [rec], lr=1e-3, backbone_lr_mult=1.0, llrd=0.5)
    for lr in rec.lrs:  # the schedule scales every group alike: the ratios stay
        assert lr["backbone.layer3"] == pytest.approx(lr["head"]) and lr["backbone.stem"] == pytest.approx(lr["head"] / 8)


def test_cli_flags_parse(tmp_path):
    from tests.helpers import run_vidlit

    proc = run_vidlit("fit", "--finetune.unfreeze_at_epoch", "2", "--model.llrd", "0.8", "--print_config")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "unfreeze_at_epoch: 2" in proc.stdout and "llrd: 0.8" in proc.stdout
