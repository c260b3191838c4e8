"""Pretrained weights: presets from the weights' metadata, download into the torch hub cache (from a
server on 127.0.0.1: no outside network), offline and timeout errors, ImageNet inflation (I3D),
and fine-tuning from a vidlit checkpoint."""
from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import os
import socket
import threading
import time

import pytest
import torch
from torch import nn

from tests.helpers import TINY_FLAGS, run_vidlit
from vidlit.models.backbones import BACKBONES, NORM_PRESETS, Backbone, build_backbone, hub_checkpoint_path, register_backbone
from vidlit.models.weights import PretrainedWeightsError, WeightsInfo, WeightsNotCachedError, load_head

#: registered backbones that have no published weights (``pretrained default`` is an error)
NO_PUBLISHED_WEIGHTS = {"tiny3d"}
#: pytorchvideo model zoo facts (Kinetics-400 model cards): file, training crop, frames per clip
PTV_CARDS = {
    "x3d_xs": ("X3D_XS", 160, 4), "x3d_s": ("X3D_S", 160, 13), "x3d_m": ("X3D_M", 224, 16),
    "slow_r50": ("SLOW_8x8_R50", 224, 8), "slowfast_r50": ("SLOWFAST_8x8_R50", 224, 32),
}  # fmt: skip


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """An empty torch hub cache; no mirror, online."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    for var in ("VIDLIT_OFFLINE", "VIDLIT_WEIGHTS_MIRROR", "VIDLIT_DOWNLOAD_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "hub"


@contextlib.contextmanager
def serve(files: dict[str, bytes]):
    """An HTTP server on 127.0.0.1 serving ``files`` (name -> bytes); yields (base URL, hit counts)."""
    hits: dict[str, int] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            name = self.path.rsplit("/", 1)[-1]
            hits[name] = hits.get(name, 0) + 1
            if name not in files:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(files[name])))
            self.end_headers()
            self.wfile.write(files[name])

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/models", hits
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


# --------------------------------------------------------------------------- metadata
@pytest.mark.parametrize("name", sorted(BACKBONES.names()))
def test_preset_matches_the_weights_metadata(name):
    spec = BACKBONES.get(name)
    mean, std = NORM_PRESETS[spec.norm]
    if spec.family == "torchvision" or spec.family == "image":
        from torchvision.models import get_model_weights

        arch = name.split("_", 1)[1] if spec.family == "image" else name
        w = get_model_weights(arch).DEFAULT
        t = w.transforms()
        assert spec.weights is not None and spec.weights.url == w.url
        assert mean == pytest.approx(tuple(t.mean)) and std == pytest.approx(tuple(t.std)), name
        assert spec.size == t.crop_size[0]
        if spec.family == "torchvision":
            assert f"clip_len={spec.num_frames}" in w.meta["_docs"]
            assert spec.num_frames >= w.meta.get("min_temporal_size", 1)
    elif spec.family == "pytorchvideo":
        file, size, frames = PTV_CARDS[name]
        assert mean == pytest.approx((0.45,) * 3) and std == pytest.approx((0.225,) * 3)
        assert (spec.size, spec.num_frames) == (size, frames)
        assert spec.weights.url.endswith(f"/{file}.pyth")
    elif name in NO_PUBLISHED_WEIGHTS:
        assert spec.weights is None
        with pytest.raises(PretrainedWeightsError, match="no published weights"):
            build_backbone(name, "default")
    else:
        assert spec.family == "custom", f"{name}: a registered family must state its weights' metadata"


def test_s3d_and_mvit_use_their_own_statistics_not_imagenet():
    assert NORM_PRESETS[BACKBONES.get("s3d").norm] != NORM_PRESETS["imagenet"]
    assert NORM_PRESETS[BACKBONES.get("mvit_v2_s").norm] == ((0.45,) * 3, (0.225,) * 3)


# --------------------------------------------------------------------------- download / offline / timeout
def _unit_net() -> nn.Module:
    return nn.Sequential(nn.Conv3d(3, 4, 1), nn.AdaptiveAvgPool3d(1))


def _register_download_net(name: str, payload: bytes) -> str:
    file = f"{name}-{hashlib.sha256(payload).hexdigest()[:8]}.pth"  # torch.hub's hash-in-name convention
    url = f"https://weights.example.invalid/models/{file}"  # never reached: the mirror replaces the host
    info = WeightsInfo(url, (0.5,) * 3, (0.25,) * 3, 16, 2, "unit test")

    @register_backbone(name, norm="simple", size=16, num_frames=2, weights=info)
    def _net(pretrained=None):
        from vidlit.models.weights import load_weights

        net = _unit_net()
        load_weights(net, name, pretrained, url, ())
        return Backbone(net, 4, ["0"])

    return file


def test_default_downloads_once_into_the_hub_cache(hub, monkeypatch):
    ref = _unit_net()
    payload = _bytes(ref.state_dict())
    file = _register_download_net("unit_download_net", payload)
    with serve({file: payload}) as (base, hits):
        monkeypatch.setenv("VIDLIT_WEIGHTS_MIRROR", base)
        bb = build_backbone("unit_download_net", "default")
        assert torch.equal(bb.net[0].weight, ref[0].weight)
        assert (hub / "checkpoints" / file).is_file()
        build_backbone("unit_download_net", "default")  # second time: from the cache
        assert hits == {file: 1}
    monkeypatch.setenv("VIDLIT_OFFLINE", "1")  # offline with the file cached: fine
    assert torch.equal(build_backbone("unit_download_net", "default").net[0].weight, ref[0].weight)


def test_a_corrupt_download_is_refused_and_not_cached(hub, monkeypatch):
    payload = _bytes(_unit_net().state_dict())
    file = _register_download_net("unit_corrupt_net", payload)
    with serve({file: payload + b"tampered"}) as (base, _):
        monkeypatch.setenv("VIDLIT_WEIGHTS_MIRROR", base)
        with pytest.raises(WeightsNotCachedError, match="corrupt") as err:
            build_backbone("unit_corrupt_net", "default")
    assert "\n" not in str(err.value) and file in str(err.value)
    assert not (hub / "checkpoints" / file).exists() and not any((hub / "checkpoints").iterdir())


def test_pretrained_url_downloads_a_plain_file(hub):
    ref = build_backbone("tiny3d")
    with serve({"tiny.pth": _bytes(ref.net.state_dict())}) as (base, hits):
        bb = build_backbone("tiny3d", f"{base}/tiny.pth")
        build_backbone("tiny3d", f"{base}/tiny.pth")
        assert hits == {"tiny.pth": 1}
        with pytest.raises(WeightsNotCachedError, match="404") as err:
            build_backbone("tiny3d", f"{base}/nope.pth")
    assert all(torch.equal(a, b) for a, b in zip(bb.state_dict().values(), ref.state_dict().values()))
    assert f"{base}/nope.pth" in str(err.value)


def test_offline_fails_at_once_naming_file_url_and_place(hub, monkeypatch):
    from torchvision.models import get_model_weights

    monkeypatch.setenv("VIDLIT_OFFLINE", "1")
    url = get_model_weights("r3d_18").DEFAULT.url
    start = time.monotonic()
    with pytest.raises(WeightsNotCachedError) as err:
        build_backbone("r3d_18", "default")
    msg = str(err.value)
    assert time.monotonic() - start < 5
    assert "\n" not in msg and os.path.basename(url) in msg and url in msg and hub_checkpoint_path(url) in msg
    assert "VIDLIT_OFFLINE" in msg


def test_failed_download_names_file_url_and_place(hub, monkeypatch):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there: connection refused
    monkeypatch.setenv("VIDLIT_WEIGHTS_MIRROR", f"http://127.0.0.1:{port}/m")
    with pytest.raises(WeightsNotCachedError) as err:
        build_backbone("tsn_resnet18", "default")
    msg = str(err.value)
    assert "could not download" in msg and f"http://127.0.0.1:{port}/m/resnet18-f37072fd.pth" in msg
    assert str(hub / "checkpoints" / "resnet18-f37072fd.pth") in msg and "\n" not in msg


def test_a_server_that_never_answers_times_out_in_one_line(hub, monkeypatch):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # the kernel accepts connections; nobody ever answers
    held = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    monkeypatch.setenv("VIDLIT_DOWNLOAD_TIMEOUT", "1")
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/w/silent.pth"
    start = time.monotonic()
    try:
        with pytest.raises(WeightsNotCachedError) as err:
            build_backbone("tiny3d", url)
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        listener.close()
    assert time.monotonic() - start < 10
    msg = str(err.value)
    assert "\n" not in msg and url in msg and "within 1 s" in msg and "VIDLIT_DOWNLOAD_TIMEOUT" in msg


def test_cli_offline_error_is_one_line(tiny_root, tmp_path):
    proc = run_vidlit(
        "fit", "--data.root", tiny_root, *TINY_FLAGS, "--backbone", "r3d_18", "--model.pretrained", "default",
        "--trainer.default_root_dir", str(tmp_path / "run"), env={"VIDLIT_OFFLINE": "1", "TORCH_HOME": str(tmp_path / "th")},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("vidlit: error:") and "r3d_18-b3b3357e.pth" in last and str(tmp_path / "th") in last
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- ImageNet weights
def _random_resnet18(seed: int = 0) -> nn.Module:
    from torchvision.models import resnet18

    torch.manual_seed(seed)
    net = resnet18(weights=None)
    for m in net.modules():  # non-trivial BatchNorm statistics and affine parameters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return net.eval()


def _put_in_cache(arch: str, state: dict) -> str:
    from torchvision.models import get_model_weights

    path = hub_checkpoint_path(get_model_weights(arch).DEFAULT.url)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(state, path)
    return path


@pytest.mark.parametrize("name", ["tsn_resnet18", "tsm_resnet18"])
def test_image_backbones_load_imagenet_weights(hub, name):
    ref = _random_resnet18()
    _put_in_cache("resnet18", ref.state_dict())
    bb = build_backbone(name, "default")
    assert torch.equal(bb.net.conv1[0].weight, ref.conv1.weight)
    assert torch.equal(bb.net.layer4[1].bn2.running_var, ref.layer4[1].bn2.running_var)
    if name == "tsn_resnet18":  # per-frame features are the 2D network's
        x = torch.randn(2, 3, 3, 32, 32)
        ref.fc = nn.Identity()
        with torch.no_grad():
            want = ref(x.transpose(1, 2).reshape(6, 3, 32, 32)).view(2, 3, -1).mean(1)
            assert torch.allclose(bb.eval()(x), want, atol=1e-5)


def _replicate_padding(net: nn.Module) -> None:
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            m.padding_mode = "replicate"


@pytest.mark.parametrize("name", ["r3d_18", "mc3_18"])
def test_inflated_network_on_a_boring_video_gives_the_2d_features(name):
    """I3D: a clip of T identical frames through the inflated 3D ResNet gives the 2D ResNet's
    features. Both use replicate padding so the first/last frames see copies, not zeros (with zero
    padding only the boundary frames differ); the 2D net loses its max pool, which the video ResNets
    do not have."""
    from torchvision.models import get_model

    from vidlit.models.inflate import inflate_state_dict

    net2d = _random_resnet18(1)
    net3d = get_model(name, weights=None)
    kernels_t = {m.kernel_size[0] for m in net3d.modules() if isinstance(m, nn.Conv3d)}
    if name == "mc3_18":
        assert kernels_t == {1, 3}  # 3D stem and layer1, 2D (t = 1) later
    net3d.load_state_dict(inflate_state_dict(net3d, net2d.state_dict()), strict=False)
    net2d.maxpool, net2d.fc, net3d.fc = nn.Identity(), nn.Identity(), nn.Identity()
    _replicate_padding(net2d)
    _replicate_padding(net3d)
    net3d.eval()
    frame = torch.randn(2, 3, 48, 48)
    clip = frame.unsqueeze(2).repeat(1, 1, 8, 1, 1)
    with torch.no_grad():
        f2, f3 = net2d(frame), net3d(clip)
    assert f3.shape == f2.shape == (2, 512)
    assert torch.allclose(f3, f2, atol=1e-4, rtol=1e-4), (f3 - f2).abs().max()
    # zero padding (the real network): the middle frames of the stem are still exactly the 2D conv's
    stem3d = get_model(name, weights=None).stem[0]
    stem3d.load_state_dict({"weight": inflate_state_dict(net3d, net2d.state_dict())["stem.0.weight"]})
    with torch.no_grad():
        mid = stem3d(clip)[:, :, 1:-1]
        want = nn.functional.conv2d(frame, net2d.conv1.weight, stride=2, padding=3)
    assert torch.allclose(mid, want.unsqueeze(2).expand_as(mid), atol=1e-5)


def test_imagenet_inflated_from_the_cache_with_imagenet_normalisation(hub):
    from vidlit.models.inflate import inflate_kernel

    ref = _random_resnet18()
    _put_in_cache("resnet18", ref.state_dict())
    bb = build_backbone("mc3_18", "imagenet_inflated").eval()
    assert torch.allclose(bb.net.stem[0].weight, inflate_kernel(ref.conv1.weight, 3))
    assert torch.allclose(bb.net.layer3[0].conv1[0].weight, ref.layer3[0].conv1.weight.unsqueeze(2))
    # the strategy normalises with the registry preset (Kinetics); the backbone converts to ImageNet's
    (mk, sk), (mi, si) = NORM_PRESETS[BACKBONES.get("mc3_18").norm], NORM_PRESETS["imagenet"]
    raw = torch.rand(1, 3, 4, 32, 32)
    kin = (raw - torch.tensor(mk).view(1, 3, 1, 1, 1)) / torch.tensor(sk).view(1, 3, 1, 1, 1)
    img = (raw - torch.tensor(mi).view(1, 3, 1, 1, 1)) / torch.tensor(si).view(1, 3, 1, 1, 1)
    with torch.no_grad():
        assert torch.allclose(bb(kin), bb._forward_fn(bb.net, img) if bb._forward_fn else bb.net(img).flatten(1), atol=1e-5)
    with pytest.raises(PretrainedWeightsError, match="only r3d_18 and mc3_18"):
        build_backbone("r2plus1d_18", "imagenet_inflated")


def test_imagenet_inflated_offline_names_the_resnet18_file(hub, monkeypatch):
    monkeypatch.setenv("VIDLIT_OFFLINE", "1")
    with pytest.raises(WeightsNotCachedError, match="resnet18-f37072fd.pth"):
        build_backbone("r3d_18", "imagenet_inflated")


# --------------------------------------------------------------------------- fine-tuning from a vidlit run
def _backbone_state(ckpt: str) -> dict:
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("backbone.")}


def test_fit_from_a_vidlit_checkpoint(tiny_root, tmp_path):
    flags = [*TINY_FLAGS, "--trainer.max_epochs", "1", "--data.eval_target_each_epoch", "false"]
    first = run_vidlit("fit", "--data.root", tiny_root, *flags, "--trainer.default_root_dir", str(tmp_path / "a"))
    assert first.returncode == 0, first.stderr[-3000:]
    best = next(str(p) for p in (tmp_path / "a" / "checkpoints").glob("best*.ckpt"))
    # second run: the backbone frozen (and its BatchNorm statistics, across validations), so its
    # parameters and buffers must end exactly as they started; the head starts from the checkpoint's
    second = run_vidlit(
        "fit", "--data.root", tiny_root, *flags, "--model.pretrained", best, "--model.freeze", "backbone",
        "--model.freeze_bn", "true", "--model.pretrained_head", "true", "--trainer.default_root_dir", str(tmp_path / "b"),
    )  # fmt: skip
    assert second.returncode == 0, second.stderr[-3000:]
    want, got = _backbone_state(best), _backbone_state(str(tmp_path / "b" / "checkpoints" / "last.ckpt"))
    assert want.keys() == got.keys() and len(want) > 10
    params = [f"backbone.{k}" for k, _ in build_backbone("tiny3d").named_parameters()]
    assert len(params) >= 8 and all(torch.equal(want[k], got[k]) for k in params), [k for k in params if not torch.equal(want[k], got[k])]
    stats = [k for k in want if "running_" in k]
    assert stats and all(torch.equal(want[k], got[k]) for k in stats), [k for k in stats if not torch.equal(want[k], got[k])]
    fresh = build_backbone("tiny3d").state_dict()  # a random start would not match
    assert not torch.equal(fresh["net.stem.0.weight"], want["backbone.net.stem.0.weight"])

    # the checkpoint's head: same classes -> loaded; other classes -> one error
    from strategies.erm import ERM

    model = ERM(num_classes=5, num_domains=3, pretrained=best, pretrained_head=True)
    ckpt = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    assert torch.equal(model.head[1].weight, ckpt["head.1.weight"])
    assert torch.equal(model.backbone.net.stem[0].weight, ckpt["backbone.net.stem.0.weight"])
    with pytest.raises(PretrainedWeightsError, match="5 classes, this data 7"):
        load_head(nn.Sequential(nn.Dropout(), nn.Linear(192, 7)), best, 7)

    # a mismatch lists the keys that differ; another backbone is named
    with pytest.raises(PretrainedWeightsError, match="holds backbone 'tiny3d'.*--backbone tiny3d"):
        build_backbone("r3d_18", best)
    bad = torch.load(best, map_location="cpu", weights_only=True)
    bad["state_dict"]["backbone.net.stem.0.weight"] = torch.zeros(1)
    bad["state_dict"]["backbone.net.extra.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.ckpt")
    with pytest.raises(PretrainedWeightsError) as err:
        build_backbone("tiny3d", str(tmp_path / "bad.ckpt"))
    msg = str(err.value)
    assert "\n" not in msg and "keys differ" in msg and "net.stem.0.weight (1,) vs (24, 3, 3, 5, 5)" in msg
    assert "net.extra.weight (not in the backbone)" in msg


def test_an_inflated_run_hands_its_normalisation_to_the_next(hub, tmp_path):
    """A checkpoint of an imagenet_inflated run carries ``backbone.renorm``: fine-tuning from it keeps
    the ImageNet input statistics its kernels were trained with."""
    from strategies.erm import ERM

    _put_in_cache("resnet18", _random_resnet18().state_dict())
    model = ERM(num_classes=3, num_domains=2, backbone="mc3_18", pretrained="imagenet_inflated")
    assert "backbone.renorm" in model.state_dict()
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, tmp_path / "run.ckpt")
    bb = build_backbone("mc3_18", str(tmp_path / "run.ckpt"))
    assert torch.equal(bb.renorm, model.backbone.renorm)
    assert torch.equal(bb.net.layer2[0].conv1[0].weight, model.backbone.net.layer2[0].conv1[0].weight)
    assert "renorm" not in build_backbone("mc3_18").state_dict()  # plain Kinetics/random: no conversion
