"""The ERM strategy and the fine-tuning machinery every strategy inherits."""
from __future__ import annotations

import pytest
import torch

from strategies.erm import ERM
from vidlit.models.strategy import STRATEGIES


def batch(b: int = 8, classes: int = 3, t: int = 4, s: int = 32) -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "video": torch.randint(0, 256, (b, 3, t, s, s), dtype=torch.uint8, generator=g),
        "label": torch.arange(b) % classes,
        "domain": torch.arange(b) % 2,
    }


def test_erm_is_registered():
    assert STRATEGIES.get("erm") is ERM and STRATEGIES.get("ERM") is ERM


def test_normalisation_happens_on_the_device_side():
    model = ERM(num_classes=3, num_domains=2)
    out = model.on_after_batch_transfer(batch(), 0)
    assert out["video"].dtype == torch.float32
    assert abs(out["video"].mean().item()) < 0.5  # uint8 noise ~127 -> ~0 with the 'simple' preset


def test_erm_overfits_a_tiny_batch():
    torch.manual_seed(0)
    model = ERM(num_classes=3, num_domains=2, weight_decay=0.0)
    data = model.on_after_batch_transfer(batch(s=16), 0)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    first = None
    for _ in range(40):
        loss, _ = model.compute_loss(data)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first
    with torch.no_grad():
        model.eval()
        assert (model(data["video"]).argmax(-1) == data["label"]).float().mean() == 1.0


def test_linear_probe_freezes_backbone_and_its_batchnorm():
    model = ERM(num_classes=3, num_domains=2, freeze="backbone")
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    model.train()
    bns = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    assert bns and all(not m.training for m in bns)
    before = bns[0].running_mean.clone()
    data = model.on_after_batch_transfer(batch(), 0)
    loss, _ = model.compute_loss(data)
    loss.backward()
    assert torch.equal(bns[0].running_mean, before)
    assert all(p.grad is None for p in model.backbone.parameters())


def test_partial_fine_tune_trains_only_last_stages():
    model = ERM(num_classes=3, num_domains=2, freeze="all_but_1")
    stages = model.backbone.stages()
    assert all(p.requires_grad for p in stages[-1].parameters())
    assert not any(p.requires_grad for s in stages[:-1] for p in s.parameters())
    with pytest.raises(ValueError, match="only 4 stages"):
        ERM(num_classes=3, num_domains=2, freeze="all_but_9")
    with pytest.raises(ValueError, match="--model.freeze"):
        ERM(num_classes=3, num_domains=2, freeze="sometimes")


def test_learning_rates_and_schedule():
    import lightning.pytorch as pl

    model = ERM(num_classes=3, num_domains=2, lr=1e-2, backbone_lr_mult=0.1, warmup_epochs=1)

    class FakeTrainer:
        estimated_stepping_batches = 100
        max_epochs = 10

    model.trainer = None
    object.__setattr__(model, "_trainer", FakeTrainer())
    conf = model.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert [g["initial_lr"] for g in opt.param_groups] == pytest.approx([1e-3, 1e-2])
    assert opt.param_groups[1]["lr"] < 0.1 * 1e-2  # warmup starts low
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[1]["lr"])
        opt.step()
        sched.step()
    assert max(lrs) == pytest.approx(1e-2, rel=0.1) and lrs.index(max(lrs)) == 10  # 1 epoch warmup
    assert lrs[-1] < 1e-4  # cosine to ~0
    assert pl.LightningModule  # keep import used


def test_pretrained_default_lowers_backbone_lr(tmp_path):
    """With pretrained weights the backbone learns 10x slower than the new head by default."""
    from vidlit.models.backbones import build_backbone

    path = tmp_path / "tiny.pth"
    torch.save(build_backbone("tiny3d").net.state_dict(), path)
    model = ERM(num_classes=3, num_domains=2, pretrained=str(path), lr=1e-2, warmup_epochs=0)

    class FakeTrainer:
        estimated_stepping_batches = 10
        max_epochs = 1

    object.__setattr__(model, "_trainer", FakeTrainer())
    opt = model.configure_optimizers()["optimizer"]
    assert [g["initial_lr"] for g in opt.param_groups] == pytest.approx([1e-3, 1e-2])
