"""``python -m vidlit predict`` writes predictions.csv: a folder dataset (labels known, multi-view)
and ``--dataset files`` (a plain list of videos, labels unknown)."""
from __future__ import annotations

import csv
import os
import shutil

import pytest

from tests.helpers import TINY_FLAGS, run_vidlit

CLIP = ["--data.size", "32", "--data.num_frames", "4", "--data.frame_stride", "2", "--data.num_workers", "0",
        "--trainer.enable_progress_bar", "false"]


@pytest.fixture(scope="module")
def dann_run(tiny_root, tmp_path_factory) -> str:
    """A dann run (its domain head depends on the number of source domains) trained for one epoch."""
    run_dir = str(tmp_path_factory.mktemp("pred") / "dann")
    flags = list(TINY_FLAGS)
    flags[flags.index("--trainer.max_epochs") + 1] = "1"
    proc = run_vidlit("fit", "--strategy", "dann", "--data.root", tiny_root, "--trainer.default_root_dir", run_dir, *flags,
                      "--trainer.limit_train_batches", "2", env={"WANDB_MODE": "disabled"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def _read(path: str) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _predict(*args: str):
    return run_vidlit("predict", "--strategy", "dann", *CLIP, *args, env={"WANDB_MODE": "disabled"})


def test_predict_a_folder_writes_one_row_per_video_with_top5(tiny_root, dann_run, tmp_path):
    ckpt = os.path.join(dann_run, "checkpoints", "last.ckpt")
    out = {}
    for views in ("1x1", "2x3"):
        out_dir = str(tmp_path / views)
        proc = _predict("--data.root", tiny_root, "--ckpt_path", ckpt, "--trainer.default_root_dir", out_dir, "--data.test_views", views)
        assert proc.returncode == 0, proc.stderr[-3000:]
        path = os.path.join(out_dir, "predictions.csv")
        assert f"predictions: {path} (30 videos; accuracy " in proc.stdout
        out[views] = rows = _read(path)
        # every video of the held-out domain (texture), each once, mapped to its own file
        expected = sorted(os.path.join(tiny_root, "texture", c, f) for c in os.listdir(os.path.join(tiny_root, "texture"))
                          for f in os.listdir(os.path.join(tiny_root, "texture", c)) if f.endswith(".mp4"))  # not the .mask.npz sidecars
        assert sorted(r["video"] for r in rows) == expected
        for r in rows:
            assert r["domain"] == "texture"
            assert r["label"] == os.path.basename(os.path.dirname(r["video"]))  # the true label of that very file
            probs = [float(r[f"prob_{j}"]) for j in range(1, 6)]
            classes = [r[f"class_{j}"] for j in range(1, 6)]
            assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-4)  # 5 classes: all of them
            assert sorted(classes) == ["circle", "move_down", "move_left", "move_right", "move_up"]
            assert r["predicted"] == classes[0] and float(r["probability"]) == probs[0]
            assert r["correct"] == str(int(r["predicted"] == r["label"]))
    # the 6 views are averaged: probabilities differ from the single centre view
    one = {r["video"]: r["prob_1"] for r in out["1x1"]}
    assert any(one[r["video"]] != r["prob_1"] for r in out["2x3"])


def test_predict_a_plain_list_of_videos(tiny_root, dann_run, tmp_path):
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copy(os.path.join(tiny_root, "clean", "circle", "clean_circle_000.mp4"), loose / "a.mp4")
    shutil.copy(os.path.join(tiny_root, "shaky", "move_up", "shaky_move_up_001.mp4"), loose / "b.mp4")
    (loose / "list.txt").write_text("b.mp4\na.mp4\n")
    # a checkpoint moved away from its run: the class names come from the checkpoint itself
    moved = str(tmp_path / "moved.ckpt")
    shutil.copy(os.path.join(dann_run, "checkpoints", "last.ckpt"), moved)
    for source, run in ((str(loose / "list.txt"), dann_run), (str(loose), moved)):
        out_dir = str(tmp_path / ("list" if source.endswith(".txt") else "dir"))
        proc = _predict("--dataset", "files", "--data.root", source, "--data.run", run, "--ckpt_path", moved,
                        "--trainer.default_root_dir", out_dir)
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows = _read(os.path.join(out_dir, "predictions.csv"))
        order = ["b.mp4", "a.mp4"] if source.endswith(".txt") else ["a.mp4", "b.mp4"]
        assert [r["video"] for r in rows] == [str(loose / n) for n in order]
        assert all(r["label"] == "" and r["correct"] == "" and r["predicted"] == r["class_1"] for r in rows)
        assert f"({len(rows)} videos)" in proc.stdout


def test_files_without_classes_is_one_line_error(tmp_path):
    (tmp_path / "x.txt").write_text("missing.mp4\n")
    proc = _predict("--dataset", "files", "--data.root", str(tmp_path / "x.txt"))
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith("vidlit: error:") and "--data.run" in err and "Traceback" not in proc.stderr


class _Payload:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_run_checkpoint_that_would_run_code_is_refused(tmp_path):
    import torch

    marker = tmp_path / "pwned"
    evil = str(tmp_path / "evil.ckpt")
    torch.save({"vidlit": {"class_names": _Payload(str(marker))}}, evil)
    (tmp_path / "a.txt").write_text("a.mp4\n")
    proc = _predict("--dataset", "files", "--data.root", str(tmp_path / "a.txt"), "--data.run", evil)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith("vidlit: error: --data.run") and "weights_only" in err and "Traceback" not in proc.stderr
    assert not marker.exists()
