"""The backbone registry: every entry maps (B, C, T, H, W) clips to (B, D) features."""
from __future__ import annotations

import pytest
import torch

from vidlit.models.backbones import BACKBONES, Backbone, PretrainedWeightsError, build_backbone, hub_checkpoint_path, register_backbone
from vidlit.utils.registry import Registry, UnknownNameError

REQUIRED = {"r3d_18", "mc3_18", "r2plus1d_18", "s3d", "mvit_v2_s", "swin3d_t", "x3d_xs", "x3d_s", "x3d_m",
            "slow_r50", "slowfast_r50", "tsn_resnet18", "tsn_resnet50", "tsm_resnet18", "tsm_resnet50", "tiny3d"}


def test_registry_lists_required_backbones():
    assert REQUIRED <= set(BACKBONES.names())


@pytest.mark.parametrize("name,frames,size", [("tiny3d", 8, 32), ("r3d_18", 4, 32), ("tsn_resnet18", 4, 32), ("tsm_resnet18", 4, 32)])
def test_backbone_shapes_and_gradients(name, frames, size):
    bb = build_backbone(name)
    x = torch.randn(2, 3, frames, size, size, requires_grad=True)
    y = bb(x)
    assert y.shape == (2, bb.out_dim)
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert len(bb.stages()) == len(bb.stage_names) >= 3


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REQUIRED - {"tiny3d", "r3d_18", "tsn_resnet18", "tsm_resnet18"}))
def test_every_backbone_builds_and_runs(name):
    spec = BACKBONES.get(name)
    bb = build_backbone(name)
    size = 224 if name == "mvit_v2_s" else 64
    # the fewest frames the weights accept (torchvision's min_temporal_size; SlowFast: its alpha x 8)
    frames = spec.num_frames if name == "slowfast_r50" else max(4, spec.weights.min_frames)
    with torch.no_grad():
        y = bb.eval()(torch.randn(1, 3, frames, size, size))
    assert y.shape == (1, bb.out_dim)


def test_tsm_shift_mixes_time():
    """TSM must let a frame's features depend on its neighbours; TSN must not."""
    torch.manual_seed(0)
    for name, mixes in (("tsm_resnet18", True), ("tsn_resnet18", False)):
        bb = build_backbone(name).eval()
        x = torch.randn(1, 3, 4, 32, 32)
        x2 = x.clone()
        x2[:, :, 0] += 1.0  # change frame 0 only
        net = bb.net
        f = lambda v: net(v.transpose(1, 2).reshape(4, 3, 32, 32))  # noqa: E731 - per-frame features
        from vidlit.models.backbones import TemporalShift

        for m in net.modules():
            if isinstance(m, TemporalShift):
                m.num_frames = 4
        with torch.no_grad():
            changed = (f(x)[1] - f(x2)[1]).abs().max().item() > 1e-6
        assert changed == mixes, name


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(UnknownNameError) as err:
        build_backbone("resnet9000")
    assert "valid names" in str(err.value) and "r3d_18" in str(err.value)


def test_default_pretrained_missing_fails_fast_with_path(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setenv("VIDLIT_OFFLINE", "1")  # online it would download (see tests/test_pretrained.py)
    with pytest.raises(PretrainedWeightsError) as err:
        build_backbone("r3d_18", pretrained="default")
    assert str(tmp_path) in str(err.value) and "r3d_18" in str(err.value)


def test_pretrained_from_cache_and_file(monkeypatch, tmp_path):
    """Weights in the torch hub cache (as torchvision would have saved them) or a local file load."""
    from torchvision.models import get_model, get_model_weights

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    reference = get_model("r3d_18", weights=None)
    path = hub_checkpoint_path(get_model_weights("r3d_18").DEFAULT.url)
    import os

    os.makedirs(os.path.dirname(path))
    torch.save(reference.state_dict(), path)
    for source in ("default", path):
        bb = build_backbone("r3d_18", pretrained=source)
        assert torch.equal(bb.net.stem[0].weight, reference.stem[0].weight)
    with pytest.raises(PretrainedWeightsError, match="does not exist"):
        build_backbone("r3d_18", pretrained=str(tmp_path / "nope.pth"))
    torch.save({"unrelated": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(PretrainedWeightsError, match="does not fit"):
        build_backbone("r3d_18", pretrained=str(tmp_path / "bad.pth"))


def test_register_new_backbone_is_one_function():
    @register_backbone("unit_test_net", norm="imagenet", size=16, num_frames=2)
    def _net(pretrained=None):
        net = torch.nn.Sequential(torch.nn.Conv3d(3, 4, 1), torch.nn.AdaptiveAvgPool3d(1))
        return Backbone(net, 4, ["0"])

    assert build_backbone("unit_test_net")(torch.zeros(1, 3, 2, 16, 16)).shape == (1, 4)


def test_registry_rejects_double_registration():
    reg: Registry = Registry("thing", "--thing")
    reg.register("a")(object())
    with pytest.raises(ValueError):
        reg.register("a")(object())
