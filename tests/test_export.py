"""``python -m vidlit export``: the exported model (TorchScript, ONNX through onnxruntime) computes
what the checkpoint computes, on uint8 clips taken from real video files as ``test`` takes them;
``model.json`` says how to feed it; bad checkpoints and formats are one-line errors; ``bench
infer`` runs in its quick mode."""
from __future__ import annotations

import json
import os

import pytest
import torch

from tests.helpers import TINY_FLAGS
from vidlit.models.backbones import BACKBONES, NORM_PRESETS
from vidlit.commands.export import load_exported, onnx_unavailable
from vidlit.inference.trained import video_clip
from vidlit.models.strategy import STRATEGIES

CLASSES = ["circle", "move_down", "move_left", "move_right", "move_up"]
ATOL = 1e-4

# In CI (CI=true; `.[test]` installs the onnx extra) the ONNX tests run, and fail, rather than skip
needs_onnx = pytest.mark.skipif(
    onnx_unavailable() is not None and os.environ.get("CI", "").lower() not in ("true", "1"),
    reason=f"ONNX cannot run here: {onnx_unavailable()}",
)
FORMATS = ["torchscript", pytest.param("onnx", marks=needs_onnx)]


@pytest.fixture(scope="module")
def tiny3d_run(tiny_root, tmp_path_factory) -> str:
    """A real ``fit`` run (erm, tiny3d, 4x32x32 clips, 1 epoch): its last checkpoint."""
    from vidlit.commands.cli import run_cli

    run_dir = str(tmp_path_factory.mktemp("export-run"))
    with pytest.MonkeyPatch.context() as mp:
        for key, value in (("WANDB_MODE", "disabled"), ("VIDLIT_OFFLINE", "1")):
            mp.setenv(key, value)
        mp.delenv("VIDLIT_RUN_DIR", raising=False)
        run_cli(["fit", "--data.root", tiny_root, "--trainer.default_root_dir", run_dir, *TINY_FLAGS, "--trainer.max_epochs", "1"])
    return os.path.join(run_dir, "checkpoints", "last.ckpt")


@pytest.fixture(scope="module")
def test_clips(tiny_root) -> tuple[torch.Tensor, list[str]]:
    """uint8 clips (B, C, T, H, W) of the held-out domain, as the DataModule gives them to ``test``."""
    from datamodules.folder import FolderDataModule

    dm = FolderDataModule(root=tiny_root, num_frames=4, frame_stride=2, size=32, num_workers=0)
    dm.setup("test")
    items = [dm.test_set[i] for i in range(0, len(dm.test_set), 5)]
    return torch.stack([it["video"] for it in items]), [dm.test_set.records[it["index"]].path for it in items]


def lightning_logits(ckpt: str, clips: torch.Tensor) -> torch.Tensor:
    """The checkpoint's logits with Lightning's own loader (not vidlit.export's)."""
    model = STRATEGIES.get("erm").load_from_checkpoint(ckpt, map_location="cpu", weights_only=True).eval()
    with torch.no_grad():
        return model(model.normalize(clips)).float()


def run_export(capsys, *args: str) -> tuple[int, str, str]:
    from vidlit.commands.main import main

    code = main(["export", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("fmt", FORMATS)
def test_exported_model_matches_the_checkpoint_on_video_clips(tiny3d_run, test_clips, tmp_path, capsys, fmt):
    clips, paths = test_clips
    code, out, err = run_export(capsys, "--ckpt_path", tiny3d_run, "--format", fmt, "--out", str(tmp_path))
    assert code == 0, err
    file = {"torchscript": "model.pt", "onnx": "model.onnx"}[fmt]
    assert f"{tmp_path / file} ({fmt}, erm/tiny3d" in out and "outputs match the checkpoint's" in out
    assert sorted(os.listdir(tmp_path)) == sorted([file, "model.json"])  # self-contained: no weights file beside it
    meta = json.loads((tmp_path / "model.json").read_text())
    # the clips model.json describes are the ones `test` takes from these videos
    for clip, path in zip(clips, paths):
        assert torch.equal(video_clip(path, meta["num_frames"], meta["frame_stride"], meta["size"]), clip)
    want = lightning_logits(tiny3d_run, clips)
    got = load_exported(str(tmp_path / "model.json"), fmt)(clips)
    assert got.shape == (len(clips), len(CLASSES)) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    assert meta["files"][fmt]["check"]["max_abs_diff"] <= 1e-3


def test_model_json_says_how_to_feed_the_model(tiny3d_run, tmp_path, capsys):
    code, _, err = run_export(capsys, "--ckpt_path", tiny3d_run, "--out", str(tmp_path), "--check", "false")
    assert code == 0, err
    meta = json.loads((tmp_path / "model.json").read_text())
    mean, std = NORM_PRESETS["simple"]
    assert meta["class_names"] == CLASSES
    assert (meta["num_frames"], meta["frame_stride"], meta["num_clips"], meta["clip_length"], meta["size"]) == (4, 2, 1, 4, 32)
    assert meta["mean"] == list(mean) and meta["std"] == list(std)
    assert meta["input"]["layout"] == "BCTHW" and meta["input"]["dtype"] == "uint8" and meta["input"]["shape"] == ["batch", 3, 4, 32, 32]
    assert meta["output"]["shape"] == ["batch", 5] and "logits" in meta["output"]["meaning"]
    assert meta["files"] == {"torchscript": {"file": "model.pt"}}  # --check false: nothing compared
    assert (meta["strategy"], meta["backbone"], meta["weights_dtype"]) == ("erm", "tiny3d", "float32")


def test_default_folder_is_the_runs_export_folder(tiny3d_run, capsys):
    code, out, err = run_export(capsys, "--ckpt_path", tiny3d_run, "--check", "false")
    assert code == 0, err
    folder = os.path.join(os.path.dirname(os.path.dirname(tiny3d_run)), "export")
    assert os.path.isfile(os.path.join(folder, "model.pt")) and os.path.isfile(os.path.join(folder, "model.json"))


@pytest.fixture(scope="module")
def mc3_ckpt(tmp_path_factory) -> str:
    """A checkpoint of a torchvision backbone (mc3_18, random weights) at a tiny clip size, in the
    layout Lightning writes (state_dict, hyper_parameters and vidlit's own keys)."""
    torch.manual_seed(0)
    model = STRATEGIES.get("erm")(num_classes=3, num_domains=2, backbone="mc3_18")
    with torch.no_grad():  # BatchNorm statistics that are not the identity, so the frozen graph folds real values
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("mc3") / "checkpoints" / "last.ckpt"
    path.parent.mkdir()
    import lightning

    torch.save({"pytorch-lightning_version": lightning.__version__, "state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "datamodule_hyper_parameters": {"num_frames": 4, "frame_stride": 1, "size": 32},
                "vidlit": {"class_names": ["a", "b", "c"]}, "vidlit_run": {"strategy": "erm", "dataset": "folder"}}, path)
    return str(path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_torchvision_backbone_exports(mc3_ckpt, tmp_path, capsys, fmt):
    code, out, err = run_export(capsys, "--ckpt_path", mc3_ckpt, "--format", fmt, "--out", str(tmp_path), "--check", "false")
    assert code == 0, err
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["backbone"] == "mc3_18" and meta["class_names"] == ["a", "b", "c"] and meta["input"]["shape"] == ["batch", 3, 4, 32, 32]
    assert (tuple(meta["mean"]), tuple(meta["std"])) == NORM_PRESETS[BACKBONES.get("mc3_18").norm]  # Kinetics', not tiny3d's
    clips = torch.randint(0, 256, (3, 3, 4, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    got = load_exported(str(tmp_path / {"torchscript": "model.pt", "onnx": "model.onnx"}[fmt]))(clips)
    torch.testing.assert_close(got, lightning_logits(mc3_ckpt, clips), atol=ATOL, rtol=0)


def test_bad_checkpoint_and_format_are_one_line_errors(tiny3d_run, tmp_path, capsys):
    code, _, err = run_export(capsys, "--ckpt_path", str(tmp_path / "nope.ckpt"))
    assert code == 2 and err.count("\n") == 1 and "vidlit: error: --ckpt_path: no checkpoint file" in err and "nope.ckpt" in err
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    code, _, err = run_export(capsys, "--ckpt_path", str(junk))
    assert code == 2 and err.count("\n") == 1 and "junk.ckpt' refused" in err
    code, _, err = run_export(capsys, "--ckpt_path", tiny3d_run, "--format", "tflite")
    assert code == 2 and err.count("\n") == 1 and "--format must be one of torchscript, onnx, got 'tflite'" in err
    code, _, err = run_export(capsys, "--format", "onnx")
    assert code == 2 and err.count("\n") == 1 and "--ckpt_path" in err
    assert not os.path.exists(os.path.join(os.path.dirname(os.path.dirname(str(junk))), "export"))


def test_onnx_without_its_packages_names_the_readmes_install_command(tmp_path, capsys, monkeypatch):
    """onnxscript missing (hidden from importlib): one line naming ``pip install -e ".[onnx]"``, as the README does."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None if name == "onnxscript" else real(name, *a, **k))
    code, _, err = run_export(capsys, "--ckpt_path", str(tmp_path / "any.ckpt"), "--format", "onnx", "--out", str(tmp_path))
    assert code == 2 and err.count("\n") == 1, err
    assert 'onnxscript not installed (pip install -e ".[onnx]"' in err
    readme = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")).read()
    assert 'pip install -e ".[onnx]"' in readme
    assert not (tmp_path / "model.onnx").exists()


def test_fits_names_for_the_folder_and_the_seed(tiny3d_run, tmp_path, capsys):
    """``--trainer.default_root_dir`` is ``--out``, ``--seed_everything`` seeds the trace and check clips;
    ``--out`` and ``--trainer.default_root_dir`` with different values: one line."""
    code, out, _ = run_export(capsys, "--ckpt_path", tiny3d_run, "--trainer.default_root_dir", str(tmp_path / "a"),
                              "--seed_everything", "7")
    assert code == 0 and (tmp_path / "a" / "model.pt").is_file() and str(tmp_path / "a") in out
    code, _, err = run_export(capsys, "--ckpt_path", tiny3d_run, "--out", str(tmp_path / "b"), "--trainer.default_root_dir",
                              str(tmp_path / "c"), "--check", "false")
    assert code == 2 and err.strip().splitlines() == [
        f"vidlit: error: export: --out {tmp_path / 'b'} and --trainer.default_root_dir {tmp_path / 'c'} are the same "
        "setting with different values; give one"]
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
    # the same folder under both names is one setting given twice
    code, _, _ = run_export(capsys, "--ckpt_path", tiny3d_run, "--out", str(tmp_path / "d"), "--trainer.default_root_dir",
                            str(tmp_path / "d"), "--check", "false")
    assert code == 0 and (tmp_path / "d" / "model.pt").is_file()


def test_bench_infer_quick(capsys):
    from vidlit.commands import bench

    assert bench.main(["infer", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "RATIO infer tiny3d torchscript fp32 / eager fp32 clips/s" in out and "[reps: " in out
    assert "decoding share" in out and "# infer: device" in out and "precision" in out
