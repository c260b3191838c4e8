"""Per-class results on disk (tracker issue 25): confusion matrices, per-class accuracy and
class-mean (balanced) accuracy for fit's final test and for ``test``/``validate --ckpt_path``, and
``--checkpoint.monitor val/class_mean_acc`` selecting the checkpoint by it."""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
from typing import Optional

import pytest

from tests.helpers import TINY_FLAGS, run_vidlit

TARGETS = ["clean", "shaky"]
# videos kept per class (sorted class order) in the held-out domains: unbalanced, and no class
# holds exactly a fifth of a domain, so a model predicting one class has class-mean != plain accuracy
KEEP = [6, 4, 3, 2, 1]
EPOCHS = 3


@pytest.fixture(scope="module")
def unbalanced_root(tiny_root, tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("unbalanced") / "data")
    shutil.copytree(tiny_root, root)
    for d in TARGETS:
        for cls, keep in zip(sorted(os.listdir(os.path.join(root, d))), KEEP):
            folder = os.path.join(root, d, cls)
            videos = sorted(n for n in os.listdir(folder) if n.endswith(".mp4"))
            for name in videos[keep:]:
                os.remove(os.path.join(folder, name))
                mask = os.path.join(folder, name[: -len(".mp4")] + ".mask.npz")
                if os.path.exists(mask):
                    os.remove(mask)
    return root


def _data_flags(root: str) -> list[str]:
    return ["--data.root", root, "--data.target_domains", f"[{', '.join(TARGETS)}]"]


@pytest.fixture(scope="module")
def fitted(unbalanced_root, tmp_path_factory):
    """One tiny fit selecting by class-mean accuracy: (run folder, results, stdout)."""
    run_dir = tmp_path_factory.mktemp("per-class") / "run"
    proc = run_vidlit("fit", "--strategy", "erm", *_data_flags(unbalanced_root), "--trainer.default_root_dir", str(run_dir),
                      *TINY_FLAGS, "--trainer.max_epochs", str(EPOCHS), "--checkpoint.monitor", "val/class_mean_acc")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return str(run_dir), json.loads((run_dir / "results.json").read_text()), proc.stdout


def _confusion(path: str) -> tuple[list[str], dict[str, list[list[int]]]]:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0][:2] == ["domain", "true"]
    classes, blocks = rows[0][2:], {}
    for row in rows[1:]:
        blocks.setdefault(row[0], []).append([int(x) for x in row[2:]])
        assert row[1] == classes[len(blocks[row[0]]) - 1]  # rows: true classes, in the columns' order
    return classes, blocks


def _per_class(path: str) -> dict[str, dict[str, dict]]:
    with open(path, newline="") as fh:
        out: dict[str, dict[str, dict]] = {}
        for row in csv.DictReader(fh):
            out.setdefault(row["domain"], {})[row["class"]] = row
    return out


def _check_files(folder: str, split: str, class_mean: dict, domains: list[str], videos_per_class: Optional[list[int]]) -> None:
    """The per-class files of ``split`` in ``folder`` agree with each other, with the data and with
    ``class_mean`` (``{"all": value, domain: value}`` from the results file)."""
    classes, blocks = _confusion(os.path.join(folder, f"confusion_{split}.csv"))
    table = _per_class(os.path.join(folder, f"per_class_{split}.csv"))
    assert set(blocks) == {"all", *domains} and set(table) == set(blocks)
    if videos_per_class is not None:
        assert sum(map(sum, blocks["all"])) == sum(videos_per_class) * len(domains)  # every test video counted once
        for d in domains:  # rows: the true class of each video
            assert [sum(r) for r in blocks[d]] == videos_per_class
    for i in range(len(classes)):  # all = the domains' matrices summed
        assert blocks["all"][i] == [sum(blocks[d][i][j] for d in domains) for j in range(len(classes))]
    for d, m in blocks.items():
        accs = []
        for i, c in enumerate(classes):
            row = table[d][c]
            assert int(row["videos"]) == sum(m[i]) and int(row["correct"]) == m[i][i]
            if sum(m[i]) == 0:  # a class without videos here (a small validation split): no accuracy, left out of the mean
                assert row["accuracy"] == ""
                continue
            assert float(row["accuracy"]) == pytest.approx(m[i][i] / sum(m[i]), abs=1e-6)
            accs.append(float(row["accuracy"]))
        assert class_mean[d] == pytest.approx(sum(accs) / len(accs), abs=1e-5)
    with open(os.path.join(folder, f"confusion_{split}.png"), "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def _class_means(results: dict, key: str) -> dict:
    return {"all": results[f"{key}_class_mean_acc"], **results[f"{key}_class_mean_acc_per_domain"]}


def test_fit_writes_per_class_files_and_class_mean_accuracy(fitted):
    run_dir, res, stdout = fitted
    _check_files(run_dir, "test", _class_means(res, "test"), TARGETS, KEEP)
    assert set(res["test_class_mean_acc_per_domain"]) == set(TARGETS)
    assert {"confusion_test.csv", "per_class_test.csv", "confusion_test.png"} <= set(res["per_class_files"])
    _, blocks = _confusion(os.path.join(run_dir, "confusion_test.csv"))
    for d in TARGETS:
        m = blocks[d]
        plain = sum(m[i][i] for i in range(len(m))) / sum(map(sum, m))
        assert res["test_acc_per_domain"][d] == pytest.approx(plain, abs=1e-5)  # the same predictions as test/acc
        accs = [m[i][i] / sum(m[i]) for i in range(len(m))]
        if max(accs) - min(accs) > 1e-9:  # unbalanced classes scored unevenly: class-mean is not plain accuracy
            assert not math.isclose(res["test_class_mean_acc_per_domain"][d], plain, abs_tol=1e-4), (d, accs)
    assert any(max(r[i] / sum(r) for i, r in enumerate(m)) != min(r[i] / sum(r) for i, r in enumerate(m))
               for m in (blocks[d] for d in TARGETS))  # the case above was exercised
    flat = stdout.replace("\n", " ")
    assert "class-mean accuracy (balanced): target test" in flat
    assert f"{100 * res['test_class_mean_acc']:.1f}%" in flat


def test_eval_commands_write_the_same_files(fitted, unbalanced_root, tmp_path):
    run_dir, res, _ = fitted
    best = res["best_checkpoint"]
    out = tmp_path / "eval"
    proc = run_vidlit("test", "--ckpt_path", best, *_data_flags(unbalanced_root), "--trainer.default_root_dir", str(out),
                      "--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--data.num_workers", "0")
    assert proc.returncode == 0, proc.stderr[-4000:]
    tested = json.loads((out / "test_results.json").read_text())
    _check_files(str(out), "test", _class_means(tested, "test"), TARGETS, KEEP)
    assert tested["test_class_mean_acc"] == res["test_class_mean_acc"]
    assert tested["test_class_mean_acc_per_domain"] == res["test_class_mean_acc_per_domain"]
    for name in ("confusion_test.csv", "per_class_test.csv"):  # the best checkpoint, as fit tested it
        assert (out / name).read_text() == open(os.path.join(run_dir, name)).read()
    assert "class-mean accuracy (balanced): target test" in proc.stdout.replace("\n", " ")

    out = tmp_path / "val"
    proc = run_vidlit("validate", "--ckpt_path", best, *_data_flags(unbalanced_root), "--trainer.default_root_dir", str(out),
                      "--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--data.num_workers", "0")
    assert proc.returncode == 0, proc.stderr[-4000:]
    validated = json.loads((out / "validate_results.json").read_text())
    _check_files(str(out), "val_target", _class_means(validated, "target"), TARGETS, KEEP)
    _check_files(str(out), "val", _class_means(validated, "val"), validated["source_domains"], None)
    assert validated["val_class_mean_acc"] is not None and "class-mean accuracy (balanced): source val" in proc.stdout


def test_monitor_class_mean_accuracy_selects_the_checkpoint(fitted):
    run_dir, res, _ = fitted
    rows = {}
    with open(os.path.join(run_dir, "metrics.csv"), newline="") as fh:
        for row in csv.DictReader(fh):
            if row.get("val/class_mean_acc"):
                rows[int(row["epoch"])] = (float(row["val/class_mean_acc"]), float(row["val/loss"]))
    assert sorted(rows) == list(range(EPOCHS))
    # the highest class-mean accuracy; ties to the lower val/loss (the checkpoint's tie-break), then the first
    expected = max(rows, key=lambda e: (rows[e][0], -rows[e][1], -e))
    assert res["best_epoch"] == expected, rows
    # results.json has the selection metric of the selected epoch, as metrics.csv logged it
    assert res["val_class_mean_acc"] == pytest.approx(rows[expected][0], abs=1e-6)
    assert [h["val_class_mean_acc"] for h in res["history"]] == pytest.approx([rows[e][0] for e in range(EPOCHS)], abs=1e-6)
    assert os.path.basename(res["best_checkpoint"]) == f"best-epoch={expected:03d}.ckpt"


def test_rank_counts_merge_one_copy_or_the_shards_sum():
    import torch

    from vidlit.models.metrics import merge_rank_counts

    counts = torch.tensor([[[3, 1], [0, 2]]])
    assert torch.equal(merge_rank_counts(torch.stack([counts, counts])), counts)  # every rank saw every video
    other = torch.tensor([[[1, 0], [1, 1]]])
    assert torch.equal(merge_rank_counts(torch.stack([counts, other])), counts + other)  # sharded loaders


def test_ddp_test_counts_every_video_once(fitted, unbalanced_root, tmp_path):
    """Under DDP (2 CPU processes) every rank tests every video: the files are those of one process."""
    run_dir, res, _ = fitted
    out = tmp_path / "ddp"
    proc = run_vidlit("test", "--ckpt_path", res["best_checkpoint"], *_data_flags(unbalanced_root), "--trainer.default_root_dir",
                      str(out), "--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--data.num_workers", "0",
                      "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (out / "confusion_test.csv").read_text() == open(os.path.join(run_dir, "confusion_test.csv")).read()
    tested = json.loads((out / "test_results.json").read_text())
    assert tested["test_class_mean_acc_per_domain"] == res["test_class_mean_acc_per_domain"]
