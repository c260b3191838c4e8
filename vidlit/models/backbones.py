"""One backbone registry shared by every strategy.

Every entry is a builder ``fn(pretrained: str | None) -> Backbone``. A :class:`Backbone` maps
normalised clips ``(B, C, T, H, W)`` (float, C = 3) to pooled features ``(B, D)`` and exposes
``out_dim`` (D), ``stage_names`` (ordered top-level stages, used by the freeze policies, ``--model.llrd``
and the MixStyle and Grad-CAM hooks) and the normalisation preset its pretrained weights expect.
The stages hold every parameter of the backbone exactly once, in input-to-output order
(tests/test_backbone_stages.py): a layer outside every stage would be frozen by ``--model.freeze
all_but_N`` and trained at the lowest stage's lr by ``--model.llrd``. A module between or after the
named stages (X3D's head block, MViT's class token) joins a stage through ``stage_extras``.

Register a new backbone with one function::

    @register_backbone("my_net", norm="imagenet", size=112, num_frames=16)
    def my_net(pretrained=None):
        net = ...
        return Backbone(net, out_dim=512, stage_names=["stem", "layer1", ...])
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from vidlit.utils.errors import MissingDependencyError
from vidlit.utils.registry import Registry
from vidlit.models.weights import (  # noqa: F401 - re-exported: the loading API lives in vidlit.models.weights
    INFLATED, PretrainedWeightsError, WeightsInfo, WeightsNotCachedError, hub_checkpoint_path, is_vidlit_checkpoint,
    forget_file, load_checkpoint_backbone, load_weights, read_file, resolve, torchvision_info,
)

#: (mean, std) per channel for each normalisation preset, applied to frames scaled to [0, 1].
NORM_PRESETS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "kinetics": ((0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "pytorchvideo": ((0.45, 0.45, 0.45), (0.225, 0.225, 0.225)),
    "simple": ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
}


def norm_preset(mean: Sequence[float], std: Sequence[float], name: str) -> str:
    """The name of the preset with this mean/std (a new preset ``name`` when none matches)."""
    for key, (m, sd) in NORM_PRESETS.items():
        if all(abs(a - b) < 1e-6 for a, b in zip((*m, *sd), (*mean, *std))):
            return key
    NORM_PRESETS[name] = (tuple(mean), tuple(std))  # type: ignore[assignment]
    return name


@dataclass(frozen=True)
class BackboneSpec:
    """What the registry knows about a backbone before building it."""

    name: str
    builder: Callable[..., "Backbone"]
    norm: str
    size: int  # preferred square input size in pixels
    num_frames: int  # preferred frames per clip
    family: str
    #: the published weights (``--model.pretrained default``) and their metadata; None: there are none
    weights: Optional[WeightsInfo] = None


BACKBONES: Registry[BackboneSpec] = Registry("backbone", "--backbone")


def register_backbone(
    name: str, *, norm: str, size: int, num_frames: int, family: str = "custom", weights: Optional[WeightsInfo] = None
) -> Callable[[Callable[..., "Backbone"]], Callable[..., "Backbone"]]:
    """Decorator: register ``fn(pretrained=None) -> Backbone`` under ``name``; ``weights``
    describes its published weights (None: it has none, ``pretrained default`` is an error)."""

    def deco(fn: Callable[..., Backbone]) -> Callable[..., Backbone]:
        BACKBONES.register(name)(BackboneSpec(name.lower(), fn, norm, size, num_frames, family, weights))
        return fn

    return deco


class Backbone(nn.Module):
    """Wraps a network so that ``forward(x: (B, C, T, H, W)) -> (B, out_dim)``."""

    def __init__(
        self,
        net: nn.Module,
        out_dim: int,
        stage_names: Sequence[str],
        forward_fn: Optional[Callable[[nn.Module, torch.Tensor], torch.Tensor]] = None,
        stage_extras: Optional[dict[str, Sequence[str]]] = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.out_dim = int(out_dim)
        self.stage_names = list(stage_names)
        self._forward_fn = forward_fn
        #: stage name -> modules of ``net`` outside the named stages that train, freeze and take their lr
        #: with that stage (the named module stays the stage's hook point for MixStyle and Grad-CAM)
        self.stage_extras = {k: list(v) for k, v in (stage_extras or {}).items()}
        unknown = sorted(set(self.stage_extras) - set(self.stage_names))
        if unknown:
            raise ValueError(f"stage_extras names {unknown}, which are not in stage_names {self.stage_names}")

    def stages(self) -> list[nn.Module]:
        """Top-level stages in input-to-output order, one per ``stage_names`` entry: the named module,
        or, for a stage with ``stage_extras``, an ``nn.ModuleList`` of it and its extra modules (made
        here, not registered: the checkpoint layout is the network's)."""
        out = []
        for name in self.stage_names:
            stage = self.net.get_submodule(name)
            extras = [self.net.get_submodule(e) for e in self.stage_extras.get(name, ())]
            out.append(nn.ModuleList([stage, *extras]) if extras else stage)
        return out

    def set_input_norm(self, given: tuple, wanted: tuple) -> None:
        """Inputs arrive normalised with ``given`` (mean, std) (the registry's preset, which the
        strategy applies) but these weights expect ``wanted`` (e.g. ImageNet's, for inflated
        ImageNet weights): convert exactly, per channel, ``x * scale + shift``. Stored as the
        buffer ``renorm`` (so a checkpoint carries it; absent when nothing is converted)."""
        (mg, sg), (mw, sw) = given, wanted
        scale = torch.tensor(sg) / torch.tensor(sw)
        shift = (torch.tensor(mg) - torch.tensor(mw)) / torch.tensor(sw)
        if torch.allclose(scale, torch.ones(3)) and torch.allclose(shift, torch.zeros(3)):
            return
        self.register_buffer("renorm", torch.stack([scale, shift]).view(2, 1, 3, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        renorm = getattr(self, "renorm", None)
        if renorm is not None:
            x = x * renorm[0].to(x.dtype) + renorm[1].to(x.dtype)
        out = self._forward_fn(self.net, x) if self._forward_fn else self.net(x)
        return out.flatten(1)


def build_backbone(name: str, pretrained: Optional[str] = None) -> Backbone:
    """Build a registered backbone. ``pretrained``: None (random init), ``default`` (the published
    weights: torch hub cache, downloaded once unless ``VIDLIT_OFFLINE=1``), ``imagenet_inflated``
    (r3d_18/mc3_18), a URL, a weights file, or a vidlit checkpoint (its backbone, strictly).
    See :mod:`vidlit.weights`."""
    spec = BACKBONES.get(name)
    if pretrained is None or str(pretrained).lower() in ("default", "true", INFLATED):
        return spec.builder(pretrained=pretrained)
    path = resolve(pretrained, spec.name, spec.weights.url if spec.weights else None)
    try:
        if is_vidlit_checkpoint(read_file(path)):  # fine-tuning from a vidlit run: same layout, strict
            bb = spec.builder(pretrained=None)
            load_checkpoint_backbone(bb, spec.name, path)
            return bb
        return spec.builder(pretrained=path)
    finally:
        forget_file()  # the memoised file is not kept in memory once the backbone has its weights


# --------------------------------------------------------------------------- tiny 3D CNN (CPU demo)
def _conv_bn(cin: int, cout: int, k: tuple[int, int, int], s: tuple[int, int, int]) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(cin, cout, k, s, tuple(i // 2 for i in k), bias=False), nn.BatchNorm3d(cout), nn.ReLU(inplace=True)
    )


@register_backbone("tiny3d", norm="simple", size=64, num_frames=8, family="vidlit", weights=None)  # no published weights
def tiny3d(pretrained: Optional[str] = None, width: int = 24) -> Backbone:
    """A 4-stage 3D CNN (~0.4 M parameters) for the CPU demo and tests; D = 8 * width."""
    w = width
    net = nn.Sequential()
    net.add_module("stem", _conv_bn(3, w, (3, 5, 5), (1, 2, 2)))
    net.add_module("layer1", _conv_bn(w, w * 2, (3, 3, 3), (1, 2, 2)))
    net.add_module("layer2", _conv_bn(w * 2, w * 4, (3, 3, 3), (2, 2, 2)))
    net.add_module("layer3", _conv_bn(w * 4, w * 4, (3, 3, 3), (2, 2, 2)))
    net.add_module("pool", AvgMaxPool3d())
    load_weights(net, "tiny3d", pretrained, None, ())
    return Backbone(net, w * 8, ["stem", "layer1", "layer2", "layer3"])


class AvgMaxPool3d(nn.Module):
    """Global average and max pooling, concatenated: (B, C, T, H, W) -> (B, 2C). The max keeps the
    response of small moving objects that a plain average over a large background dilutes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=(2, 3, 4)), x.amax(dim=(2, 3, 4))], 1)


# --------------------------------------------------------------------------- torchvision video models
def _torchvision_video(name: str, pretrained: Optional[str]) -> Backbone:
    from torchvision.models import get_model, get_model_weights

    net = get_model(name, weights=None)
    url = get_model_weights(name).DEFAULT.url
    extras: Optional[dict[str, list[str]]] = None
    inflated = str(pretrained).lower() == INFLATED
    if inflated and name not in ("r3d_18", "mc3_18"):
        raise PretrainedWeightsError(
            f"--model.pretrained {INFLATED}: only r3d_18 and mc3_18 start from inflated ImageNet weights, not '{name}'; "
            "use 'default' (its Kinetics weights)"
        )
    if name in ("r3d_18", "mc3_18", "r2plus1d_18"):
        if inflated:
            _load_inflated(net, name)
        else:
            load_weights(net, name, pretrained, url, ("fc.",))
        dim, net.fc = net.fc.in_features, nn.Identity()
        stages = ["stem", "layer1", "layer2", "layer3", "layer4"]
    elif name == "s3d":
        load_weights(net, name, pretrained, url, ("classifier.",))
        dim = net.classifier[1].in_channels
        net.classifier = nn.Identity()
        stages = [f"features.{i}" for i in range(len(net.features))]
    elif name == "mvit_v2_s":
        load_weights(net, name, pretrained, url, ("head.",))
        dim, net.head = net.head[1].in_features, nn.Identity()
        stages = ["conv_proj"] + [f"blocks.{i}" for i in range(len(net.blocks))] + ["norm"]
        extras = {"conv_proj": ["pos_encoding"]}  # the class token (and absolute positions, where used): input side
    elif name == "swin3d_t":
        load_weights(net, name, pretrained, url, ("head.",))
        dim, net.head = net.head.in_features, nn.Identity()
        stages = ["patch_embed"] + [f"features.{i}" for i in range(len(net.features))] + ["norm"]
    else:  # pragma: no cover - guarded by the registrations below
        raise KeyError(name)
    bb = Backbone(net, dim, stages, stage_extras=extras)
    if inflated:  # the data arrive with this backbone's Kinetics preset; ImageNet kernels want ImageNet's
        imagenet = torchvision_info("resnet18")
        bb.set_input_norm(NORM_PRESETS[BACKBONES.get(name).norm], (imagenet.mean, imagenet.std))
    return bb


def _load_inflated(net: nn.Module, name: str) -> None:
    """torchvision's ImageNet ResNet-18 (cache or download), inflated into ``net`` (I3D)."""
    from vidlit.models.inflate import inflate_state_dict
    from vidlit.models.weights import read_state_dict

    info = torchvision_info("resnet18")
    path = resolve("default", "resnet18 (ImageNet, for imagenet_inflated)", info.url)
    try:
        state = inflate_state_dict(net, read_state_dict(path))
    except KeyError as err:
        raise PretrainedWeightsError(f"weights file '{path}' cannot be inflated into '{name}': {err.args[0]}") from None
    net.load_state_dict(state, strict=False)


def _s3d_forward(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return net.features(x).mean(dim=(2, 3, 4))


# preset, crop size and clip length from each weights enum's own metadata (its transforms, `clip_len`)
for _name in ("r3d_18", "mc3_18", "r2plus1d_18", "s3d", "mvit_v2_s", "swin3d_t"):
    _info = torchvision_info(_name)
    _norm = norm_preset(_info.mean, _info.std, _name)

    def _builder(pretrained: Optional[str] = None, _n: str = _name) -> Backbone:
        bb = _torchvision_video(_n, pretrained)
        if _n == "s3d":  # s3d's own forward ends in a 1x1 conv classifier: pool the features ourselves
            bb._forward_fn = _s3d_forward
        return bb

    register_backbone(_name, norm=_norm, size=_info.size, num_frames=_info.num_frames, family="torchvision", weights=_info)(_builder)


# --------------------------------------------------------------------------- pytorchvideo builders
_PTV_URL = "https://dl.fbaipublicfiles.com/pytorchvideo/model_zoo/kinetics/{}.pyth"


def _ptv_models():
    try:
        # only `models`: pytorchvideo.transforms is broken on current torchvision
        import pytorchvideo.models.resnet
        import pytorchvideo.models.slowfast
        import pytorchvideo.models.x3d

        ptv = pytorchvideo.models
    except Exception as err:  # noqa: BLE001
        raise MissingDependencyError(
            f"this backbone needs pytorchvideo's model builders (pip install 'vidlit[pytorchvideo]'): {err}"
        ) from err
    return ptv


def _strip_ptv_head(net: nn.Module) -> int:
    head = net.blocks[-1]
    dim = head.proj.in_features
    head.proj = nn.Identity()
    head.activation = None
    if hasattr(head, "output_pool"):
        head.output_pool = nn.AdaptiveAvgPool3d(1)
    return dim


def _ptv_backbone(name: str, pretrained: Optional[str], crop: int, frames: int) -> Backbone:
    ptv = _ptv_models()
    if name.startswith("x3d"):
        depth = {"x3d_xs": "XS", "x3d_s": "S", "x3d_m": "M"}[name]
        net = ptv.x3d.create_x3d(input_clip_length=frames, input_crop_size=crop, depth_factor=2.2)
    elif name == "slow_r50":
        net = ptv.resnet.create_resnet(model_depth=50, model_num_class=400)
    else:  # slowfast_r50
        net = ptv.slowfast.create_slowfast(model_depth=50, model_num_class=400)
    url = _PTV_URL.format(PTV_WEIGHTS[name][0])
    load_weights(net, name, pretrained, url, ("blocks.%d.proj" % (len(net.blocks) - 1),))
    dim = _strip_ptv_head(net)
    for block in net.blocks[-2:]:  # make the head's fixed-size pools global so any T, H, W works
        for mod_name, mod in list(block.named_modules()):
            if isinstance(mod, nn.AvgPool3d):
                parent = block.get_submodule(mod_name.rsplit(".", 1)[0]) if "." in mod_name else block
                setattr(parent, mod_name.rsplit(".", 1)[-1], nn.AdaptiveAvgPool3d(1))
    # stages: the blocks before the head block that have parameters (not SlowFast's pathway pooling: an
    # empty last stage would leave --model.freeze all_but_1 nothing to train); the head block's own layers
    # (X3D: pre_conv, its BatchNorm, post_conv; a third of X3D-XS) train with the last stage
    stages = [f"blocks.{i}" for i in range(len(net.blocks) - 1) if any(True for _ in net.blocks[i].parameters())]
    head = f"blocks.{len(net.blocks) - 1}"
    extras = {stages[-1]: [head]} if any(True for _ in net.blocks[-1].parameters()) else None
    forward = _slowfast_forward if name == "slowfast_r50" else None
    return Backbone(net, dim, stages, forward, extras)


def _slowfast_forward(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    slow = x[:, :, :: 4]  # alpha = 4: the slow pathway sees every 4th frame
    return net([slow, x])


#: pytorchvideo's model zoo (Kinetics-400): file, training crop (the crop its hub builders are made
#: for), frames per clip ("frame length x sample rate"; SlowFast: its fast pathway, alpha = 4); every
#: model card normalises with mean 0.45, std 0.225
PTV_WEIGHTS = {
    "x3d_xs": ("X3D_XS", 160, 4), "x3d_s": ("X3D_S", 160, 13), "x3d_m": ("X3D_M", 224, 16),
    "slow_r50": ("SLOW_8x8_R50", 224, 8), "slowfast_r50": ("SLOWFAST_8x8_R50", 224, 32),
}  # fmt: skip

for _name, (_file, _size, _frames) in PTV_WEIGHTS.items():
    _info = WeightsInfo(_PTV_URL.format(_file), (0.45,) * 3, (0.225,) * 3, _size, _frames, f"pytorchvideo model zoo {_file}")

    def _ptv_builder(pretrained: Optional[str] = None, _n: str = _name, _s: int = _size, _f: int = _frames) -> Backbone:
        return _ptv_backbone(_n, pretrained, _s, _f)

    _norm = norm_preset(_info.mean, _info.std, _name)
    register_backbone(_name, norm=_norm, size=_size, num_frames=_frames, family="pytorchvideo", weights=_info)(_ptv_builder)


# --------------------------------------------------------------------------- image backbones on video
class TemporalShift(nn.Module):
    """TSM: shift 1/fold_div of the channels one step back in time and 1/fold_div forward, then
    apply ``block``. Input (B*T, C, H, W) with T = ``num_frames``."""

    def __init__(self, block: nn.Module, fold_div: int = 8) -> None:
        super().__init__()
        self.block, self.fold_div, self.num_frames = block, fold_div, 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.num_frames
        bt, c, h, w = x.shape
        x5 = x.view(bt // t, t, c, h, w)
        fold = c // self.fold_div
        out = torch.zeros_like(x5)
        out[:, :-1, :fold] = x5[:, 1:, :fold]  # shift left (future -> now)
        out[:, 1:, fold : 2 * fold] = x5[:, :-1, fold : 2 * fold]  # shift right (past -> now)
        out[:, :, 2 * fold :] = x5[:, :, 2 * fold :]
        return self.block(out.view(bt, c, h, w))


def _frames_forward(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per-frame 2D network, features averaged over time (TSN consensus). x: (B, C, T, H, W)."""
    b, c, t, h, w = x.shape
    for m in net.modules():
        if isinstance(m, TemporalShift):
            m.num_frames = t
    feats = net(x.transpose(1, 2).reshape(b * t, c, h, w))
    return feats.view(b, t, -1).mean(1)


def _image_resnet(name: str, arch: str, pretrained: Optional[str], shift: bool) -> Backbone:
    from torchvision.models import get_model, get_model_weights

    net = get_model(arch, weights=None)
    load_weights(net, name, pretrained, get_model_weights(arch).DEFAULT.url, ("fc.",))
    dim, net.fc = net.fc.in_features, nn.Identity()
    if shift:  # residual shift: wrap the first conv of every residual block
        for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
            for blk in layer:
                blk.conv1 = TemporalShift(blk.conv1)
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    net.conv1, net.bn1, net.relu, net.maxpool = stem, nn.Identity(), nn.Identity(), nn.Identity()
    return Backbone(net, dim, ["conv1", "layer1", "layer2", "layer3", "layer4"], _frames_forward)


for _arch in ("resnet18", "resnet50"):
    for _kind in ("tsn", "tsm"):

        def _img_builder(pretrained: Optional[str] = None, _a: str = _arch, _k: str = _kind) -> Backbone:
            return _image_resnet(f"{_k}_{_a}", _a, pretrained, shift=_k == "tsm")

        # ImageNet weights: preset and crop from torchvision's enum; frames: TSM's 8 segments (2D weights have none)
        _info = torchvision_info(_arch)
        _norm = norm_preset(_info.mean, _info.std, _arch)
        register_backbone(f"{_kind}_{_arch}", norm=_norm, size=_info.size, num_frames=8, family="image", weights=_info)(_img_builder)
