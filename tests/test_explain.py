"""Grad-CAM (vidlit.saliency), object masks beside the embedded videos, the foreground share in
results.json and the report, the W&B overlays and ``python -m vidlit explain``."""
from __future__ import annotations

import glob
import json
import os
import shutil

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from vidlit.models.backbones import BACKBONES, Backbone, _frames_forward
from vidlit.data import synthetic
from vidlit.data.clips import ClipDataset, ClipTransform
from vidlit.data.masks import has_mask, mask_path, read_mask
from vidlit.data.records import VideoRecord
from vidlit.inference.gradcam import foreground_share, grad_cam

from tests.helpers import run_vidlit


# ----------------------------------------------------------------------------- Grad-CAM, known answers
class ColourModel(nn.Module):
    """Channel 0 of the stage responds to red, channel 1 to green; logit c = mean of channel c.
    ``frames``: the same as a per-frame 2D network (TSN: time folded into the batch)."""

    def __init__(self, frames: bool) -> None:
        super().__init__()
        conv = nn.Conv2d(3, 2, 1, bias=False) if frames else nn.Conv3d(3, 2, 1, bias=False)
        with torch.no_grad():
            conv.weight.zero_()
            conv.weight[0, 0], conv.weight[1, 1] = 1.0, 1.0
        net = nn.Sequential()
        net.add_module("stem", nn.Sequential(conv, nn.ReLU()))
        net.add_module("pool", nn.AdaptiveAvgPool2d(1) if frames else nn.AdaptiveAvgPool3d(1))
        self.backbone = Backbone(net, 2, ["stem"], _frames_forward if frames else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)


def _two_blobs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A red square in frame 1 (top left), a green one in frame 3 (bottom right); their masks."""
    x = torch.zeros(1, 3, 4, 16, 16)
    x[0, 0, 1, 2:6, 2:6] = 1.0
    x[0, 1, 3, 10:14, 10:14] = 1.0
    red, green = torch.zeros(1, 4, 16, 16), torch.zeros(1, 4, 16, 16)
    red[0, 1, 2:6, 2:6], green[0, 3, 10:14, 10:14] = 1, 1
    return x, red, green


@pytest.mark.parametrize("frames", [False, True], ids=["3d", "per_frame"])
def test_grad_cam_puts_the_mass_where_the_logit_looks(frames):
    model = ColourModel(frames)
    x, red, green = _two_blobs()
    with torch.inference_mode():  # as in Lightning's evaluation loops: gradients are off there
        sal0 = grad_cam(model, x.clone(), torch.tensor([0]))
        sal1 = grad_cam(model, x.clone(), torch.tensor([1]))
    assert sal0.stage == "stem" and sal0.maps.shape == (1, 4, 16, 16)
    assert float(sal0.foreground_share(red)) > 0.95 and float(sal0.foreground_share(green)) < 0.05
    assert float(sal1.foreground_share(green)) > 0.95
    assert sal0.frame_importance()[0].argmax() == 1 and sal1.frame_importance()[0].argmax() == 3
    assert float(sal0.frame_importance().sum()) == pytest.approx(1.0)
    assert sal0.maps.max() == pytest.approx(1.0) and model.training  # its mode is restored


def test_foreground_share_is_mass_inside_over_total():
    maps = torch.zeros(2, 1, 2, 2)
    maps[0, 0] = torch.tensor([[3.0, 1.0], [0.0, 0.0]])
    mask = torch.zeros(2, 1, 2, 2)
    mask[:, 0, 0, 0] = 1
    share = foreground_share(maps, mask)
    assert share[0] == pytest.approx(0.75) and torch.isnan(share[1])  # an empty map has no share


# ----------------------------------------------------------------------------- masks
def test_generator_writes_a_mask_that_follows_the_object(tiny_root):
    video = os.path.join(tiny_root, "clean", "move_right", "clean_move_right_000.mp4")
    assert has_mask(video) and mask_path(video).endswith("clean_move_right_000.mask.npz")
    mask = read_mask(video)
    clip, again = synthetic.render_video("clean", "move_right", np.random.default_rng([0, 0, 3, 0]), 16, 32, with_mask=True)
    assert np.array_equal(mask, again) and mask.shape == (16, 32, 32)
    grey = clip.mean(-1)
    for t in range(16):  # clean: bright object on a dark background
        assert grey[t][mask[t] > 0].mean() > grey[t][mask[t] == 0].mean() + 100
    xs = [np.nonzero(mask[t])[1].mean() for t in range(16)]
    assert xs[-1] > xs[0] + 10  # it moves right
    assert np.array_equal(clip, synthetic.render_video("clean", "move_right", np.random.default_rng([0, 0, 3, 0]), 16, 32))


def test_mask_follows_the_random_crop_resize_and_flip():
    clip, mask = synthetic.render_video("clean", "move_up", np.random.default_rng(3), 8, 64, with_mask=True)
    frames, m = torch.from_numpy(clip).permute(0, 3, 1, 2), torch.from_numpy(mask)
    for transform in (ClipTransform(40, True, (0.4, 0.6), flip=True, jitter=0.3), ClipTransform(32, False)):
        for seed in range(4):
            rng = lambda: np.random.default_rng(seed) if transform.train else None  # noqa: E731
            alone, _ = transform(frames, rng())
            out, mout, _ = transform.apply(frames, rng(), m)
            assert torch.equal(out, alone)  # the frames are those of the transform without a mask
            # the mask is the object's in the transformed frames: crop the clip's own object pixels
            obj, _ = ClipTransform(transform.size, transform.train, transform.scale, transform.flip)(
                (m[:, None] * 255).expand(-1, 3, -1, -1).contiguous(), rng())
            assert torch.equal(mout, (obj[:, 0] >= 128).to(torch.uint8))
            grey = out.float().mean(1)
            assert mout.sum() > 0 and grey[mout > 0].mean() > grey[mout == 0].mean() + 60


def test_eval_dataset_passes_masks_of_the_clip_frames(tiny_root, tmp_path):
    classes, video = list(synthetic.CLASSES), os.path.join(tiny_root, "shaky", "circle", "shaky_circle_001.mp4")
    rec = VideoRecord(path=video, label="circle", domain="shaky").with_frames(16)
    ds = ClipDataset([rec], classes, ["shaky"], num_frames=4, stride=3, transform=ClipTransform(16, False))
    item = ds[0]
    idx = ds._indices(0, None, [0.5])[0]
    _, want, _ = ClipTransform(16, False).apply(torch.zeros(4, 3, 32, 32, dtype=torch.uint8), None, torch.from_numpy(read_mask(video)[idx]))
    assert item["mask"].shape == (4, 16, 16) and torch.equal(item["mask"], want)
    train = ClipDataset([rec], classes, ["shaky"], 4, 3, ClipTransform(16, True), train=True)
    assert "mask" not in train[0]  # training clips do not carry masks
    bare = tmp_path / "x.mp4"
    shutil.copy(video, bare)  # a video without a sidecar: no mask, no error
    ds2 = ClipDataset([VideoRecord(path=str(bare), label="circle", domain="shaky").with_frames(16)], classes, ["shaky"], 4, 3,
                      ClipTransform(16, False))
    assert not ds2.masks and "mask" not in ds2[0]


def test_old_generated_set_gets_masks_added(tmp_path):
    root = synthetic.generate(seed=1, videos_per_class=1, size=32, cache_dir=str(tmp_path), domains=("clean",), classes=("circle",))
    video = os.path.join(root, "clean", "circle", "clean_circle_000.mp4")
    want, stamp = read_mask(video), os.path.getmtime(video)
    os.remove(mask_path(video))
    marker = os.path.join(root, "vidlit_synthetic.json")
    meta = json.load(open(marker))
    del meta["masks"]  # as written before masks existed
    json.dump(meta, open(marker, "w"))
    assert synthetic.generate(seed=1, videos_per_class=1, size=32, cache_dir=str(tmp_path)) == root
    assert np.array_equal(read_mask(video), want) and os.path.getmtime(video) == stamp  # the video was not rewritten


# ----------------------------------------------------------------------------- explain on every backbone
#: run by default (a 3D network and a per-frame one); every other backbone (one test each, the
#: torchvision and pytorchvideo families among them) is marked slow: CI runs them all
FAMILY_REPRESENTATIVES = ("tiny3d", "tsm_resnet18")
#: clip length and size that every backbone can take (MViT's position embeddings fix 16 x 224)
CLIP = {"mvit_v2_s": (16, 224), "slowfast_r50": (8, 64), "s3d": (8, 64)}


def _fake_run(tmp_path, tiny_root: str, backbone: str) -> tuple[str, list[str]]:
    """A run folder with a checkpoint of an untrained ``backbone`` (no training: explain only
    needs weights and settings), its config.yaml and class names."""
    from vidlit.models.strategy import STRATEGIES

    frames, size = CLIP.get(backbone, (4, 32))
    torch.manual_seed(0)
    model = STRATEGIES.get("erm")(num_classes=5, num_domains=3, backbone=backbone)
    run = tmp_path / backbone
    (run / "checkpoints").mkdir(parents=True)
    state = {"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict(),
             "vidlit": {"class_names": list(synthetic.CLASSES)}, "vidlit_run": {"strategy": "erm", "dataset": "folder"}}
    torch.save(state, run / "checkpoints" / "last.ckpt")
    config = {"strategy": "erm", "dataset": "folder", "model": {"backbone": backbone},
              "data": {"root": tiny_root, "num_frames": frames, "size": size, "frame_stride": 1}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    return str(run / "checkpoints" / "last.ckpt"), list(model.backbone.stage_names)


@pytest.mark.parametrize("backbone", [
    b if b in FAMILY_REPRESENTATIVES else pytest.param(b, marks=pytest.mark.slow) for b in BACKBONES.names()
])
def test_explain_writes_overlays_for_every_backbone(backbone, tiny_root, tmp_path, capsys, monkeypatch):
    import av

    from vidlit.commands import explain

    # what the heat map overlay is made of: the clip's frames and its Grad-CAM map (recorded on
    # the way in; the overlay itself is the one explain writes, read back from its mp4 below)
    shown: list[tuple[np.ndarray, np.ndarray]] = []
    real_overlay = explain.overlay

    def recording_overlay(frames, maps, *args, **kwargs):
        shown.append((np.array(frames, copy=True), np.array(maps, copy=True)))
        return real_overlay(frames, maps, *args, **kwargs)

    monkeypatch.setattr(explain, "overlay", recording_overlay)
    ckpt, stages = _fake_run(tmp_path, tiny_root, backbone)
    out = tmp_path / "out"
    assert explain.main(["--ckpt_path", ckpt, "--clips", "1", "--out", str(out), "--min_size", "32"]) == 0
    summary = json.loads((out / "explain.json").read_text())
    (clip,) = summary["clips"]
    frames, size = CLIP.get(backbone, (4, 32))
    assert clip["domain"] == "texture" and clip["true"] == "circle" and clip["predicted"] in synthetic.CLASSES
    assert clip["stage"] in stages
    # the heat map: one per frame, in [0, 1], not empty; the per-frame importance is its mass per frame
    assert shown, "no overlay drawn"
    clip_frames, maps = shown[0]
    assert clip_frames.shape == (frames, size, size, 3) and clip_frames.dtype == np.uint8 and maps.shape == (frames, size, size)
    assert maps.min() >= 0 and maps.max() == pytest.approx(1.0, abs=1e-4), (maps.min(), maps.max())
    importance = np.array(clip["frame_importance"])
    assert len(importance) == frames and (importance >= 0).all() and importance.sum() == pytest.approx(1.0, abs=1e-3)
    per_frame = maps.sum(axis=(1, 2), dtype=np.float64)
    np.testing.assert_allclose(importance, per_frame / per_frame.sum(), atol=1e-4)
    # the overlay mp4 read back: the frames recoloured where the heat map is high, the more the hotter
    with av.open(str(out / clip["files"][0])) as container:
        video = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]).astype(np.float64)
    factor = video.shape[2] // size
    assert video.shape[0] == frames and factor >= 1

    def enlarge(x: np.ndarray) -> np.ndarray:  # as explain enlarges the frames (--min_size)
        return x.repeat(factor, axis=1).repeat(factor, axis=2)

    diff = np.abs(video[:, : size * factor, : size * factor] - enlarge(clip_frames).astype(np.float64)).mean(-1)
    heat = enlarge(maps)
    # x264's error alone (the frames written unchanged) is about 5 levels; the heat colour at
    # half weight and more (0.6 x map) moves them by tens
    assert diff[heat >= 0.5].mean() > 20, diff[heat >= 0.5].mean()
    hottest, coolest = heat >= 0.8, heat < 0.3
    if hottest.mean() > 0.01 and coolest.mean() > 0.01:  # the higher the heat, the more recoloured
        assert diff[hottest].mean() > diff[coolest].mean() + 10, (diff[hottest].mean(), diff[coolest].mean())
    assert clip["foreground_share"] is None or 0 <= clip["foreground_share"] <= 1
    for name in clip["files"]:
        assert (out / name).stat().st_size > 0
    from vidlit.data.video_io import probe_video

    info = probe_video(str(out / clip["files"][0]))
    assert info.num_frames == frames and info.width >= size
    rows = (out / "importance.csv").read_text().splitlines()
    assert rows[0] == "clip,frame,importance" and len(rows) == 1 + frames
    assert "true circle" in capsys.readouterr().out


def test_explain_video_files_and_errors(tiny_root, tmp_path, capsys, monkeypatch):
    ckpt, _ = _fake_run(tmp_path, tiny_root, "tiny3d")
    video = os.path.join(tiny_root, "colour", "move_up", "colour_move_up_002.mp4")
    from vidlit.commands import explain
    from vidlit.commands.explain import main

    strips: list = []
    real_strip = explain.write_strip

    def recording_strip(path, frames, maps, title, *args, **kwargs):
        strips.append(kwargs.get("frame_index"))
        return real_strip(path, frames, maps, title, *args, **kwargs)

    monkeypatch.setattr(explain, "write_strip", recording_strip)
    # fit's names for the output folder and the seed (--trainer.default_root_dir is --out)
    assert main(["--ckpt_path", ckpt, video, "--trainer.default_root_dir", str(tmp_path / "v"), "--seed_everything", "3"]) == 0
    (clip,) = json.loads((tmp_path / "v" / "explain.json").read_text())["clips"]
    assert clip["video"] == video and clip["true"] is None and clip["foreground_share"] is not None  # its sidecar mask
    # the strip's frames are labelled by their number in the video: 4 frames 1 apart, centred in its 16
    assert strips == [[6, 7, 8, 9]] and clip["video_frames"] == [6, 7, 8, 9]
    from vidlit.commands.main import main as cli_main

    capsys.readouterr()
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli_main(["explain", "--ckpt_path", ckpt, video, "--out", str(a), "--trainer.default_root_dir", str(b)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"vidlit: error: explain: --out {a} and --trainer.default_root_dir {b} are the same setting with different values; give one"]
    assert not a.exists() and not b.exists()
    assert cli_main(["explain", "--ckpt_path", ckpt, "--data.nonsense", "1"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "vidlit: error: explain: --data.nonsense is not an option of --dataset folder; its options: python -m vidlit fit --dataset folder --help"]
    assert cli_main(["explain", "--ckpt_path", str(tmp_path / "none.ckpt")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "none.ckpt" in err


# ----------------------------------------------------------------------------- fit: results.json, report, W&B
def test_fit_reports_foreground_share_in_results_report_and_wandb(tiny_root, tmp_path_factory, tmp_path):
    """On the tiny reference run shared with the W&B and reproducibility tests (W&B offline)."""
    from tests.test_reproducible import reference_run
    from tests.test_wandb import _logged

    run = reference_run(tiny_root, str(tmp_path_factory.getbasetemp()))
    res = json.loads(open(os.path.join(run, "results.json")).read())
    share = res["foreground_share"]["texture"]
    assert 0 <= share <= 1 and 0 < res["foreground_share_info"]["clips"]["texture"] <= 16  # --saliency.clips_per_domain 16
    assert 0 < res["foreground_share_info"]["mask_area"]["texture"] < 0.2
    area = res["foreground_share_info"]["mask_area"]["texture"]
    # printed with its reference, what a uniform map scores (the object's area): the share / mask_area
    line = f"texture {100 * share:.1f}% ({share / area:.1f}x uniform)"
    with open(run + ".log") as fh:  # (rich wraps long lines)
        assert (f"foreground share (Grad-CAM mass inside the object mask; uniform: the object's area, {100 * area:.1f}%): {line}"
                in " ".join(fh.read().split()))
    # explain on the best checkpoint, the same clips: the same number
    from vidlit.commands.explain import main

    assert main(["--ckpt_path", res["best_checkpoint"], "--clips", "16", "--out", str(tmp_path / "ex")]) == 0
    assert json.loads((tmp_path / "ex" / "explain.json").read_text())["foreground_share"]["texture"] == pytest.approx(share, abs=1e-4)
    # test --ckpt_path on the same checkpoint: the same score in test_results.json and on stdout
    proc = run_vidlit("test", "--ckpt_path", res["best_checkpoint"], "--trainer.default_root_dir", str(tmp_path / "t"),
                      "--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--data.num_workers", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    tested = json.loads((tmp_path / "t" / "test_results.json").read_text())
    assert tested["foreground_share"]["texture"] == pytest.approx(share, abs=1e-4)
    assert f"object's area, {100 * area:.1f}%): {line}" in " ".join(proc.stdout.split())
    from vidlit.commands.report import main as report

    shutil.copytree(run, tmp_path / "runs" / "r", ignore=shutil.ignore_patterns("wandb", "checkpoints"))
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert report([str(tmp_path / "runs"), "--out", str(tmp_path / "rep")]) == 0
    table = buf.getvalue().split("### Foreground share")[1].splitlines()
    assert any(line.startswith(f"| erm | {100 * share:.1f} | {100 * share:.1f} | 1 |") for line in table)
    w = _logged(run)
    for domain in res["source_domains"] + res["target_domains"]:
        media = w["summary"][f"saliency/{domain}"]
        assert media["_type"] == "videos" and media["count"] == 2
        assert any("foreground share:" in c for c in media["captions"])
    assert len(glob.glob(os.path.join(run, "samples", "*", "*-cam.mp4"))) == 8


def test_data_without_masks_has_no_score(tiny_root, tmp_path):
    from vidlit.callbacks.saliency import ForegroundShare

    root = tmp_path / "nomask"
    shutil.copytree(tiny_root, root, ignore=shutil.ignore_patterns("*.mask.npz"))

    class Trainer:
        is_global_zero = True
        datamodule = type("DM", (), {})()

    from datamodules.folder import FolderDataModule

    dm = FolderDataModule(root=str(root), size=32, num_frames=4, num_workers=0)
    dm.setup("test")
    Trainer.datamodule = dm
    cb = ForegroundShare()
    cb.on_test_end(Trainer(), None)  # nothing to score: no model call, no error
    assert cb.result is None and not dm.test_set.masks
