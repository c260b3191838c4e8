"""The CLI end to end, as a user runs it (subprocesses)."""
from __future__ import annotations

import json
import os

import pytest

from tests.helpers import TINY_FLAGS, run_vidlit

RESULT_KEYS = {"strategy", "backbone", "seed", "source_domains", "target_domains", "val_acc", "val_acc_per_domain",
               "test_acc", "test_acc_per_domain", "best_epoch", "best_checkpoint", "wall_time_s"}


def test_fit_erm_writes_results_and_prints_table(tiny_root, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_vidlit("fit", "--strategy", "erm", "--data.root", tiny_root, "--trainer.default_root_dir", str(run_dir), *TINY_FLAGS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = run_dir / "results.json"
    assert str(path) in proc.stdout.replace("\n", "")
    assert "target (held out)" in proc.stdout and "source (val split)" in proc.stdout
    res = json.loads(path.read_text())
    assert RESULT_KEYS <= set(res)
    assert res["strategy"] == "erm" and res["backbone"] == "tiny3d" and res["seed"] == 0
    assert res["source_domains"] == ["clean", "colour", "shaky"] and res["target_domains"] == ["texture"]
    for key in ("val_acc", "test_acc"):
        assert 0.0 <= res[key] <= 1.0
    assert set(res["val_acc_per_domain"]) == {"clean", "colour", "shaky"}
    assert abs(res["val_acc"] - sum(res["val_acc_per_domain"].values()) / 3) < 1e-5
    assert os.path.isfile(res["best_checkpoint"]) and res["best_epoch"] in (0, 1)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "metrics.csv").is_file()
    assert (run_dir / "config.yaml").is_file()


def test_target_domain_flag_and_backbone_flag(tiny_root, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_vidlit("fit", "--backbone", "tsn_resnet18", "--data.root", tiny_root, "--data.target_domains", "[clean, shaky]",
                      "--trainer.default_root_dir", str(run_dir), *TINY_FLAGS, "--trainer.max_epochs", "1",
                      "--trainer.limit_train_batches", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((run_dir / "results.json").read_text())
    assert res["backbone"] == "tsn_resnet18"
    assert res["target_domains"] == ["clean", "shaky"] and res["source_domains"] == ["colour", "texture"]


def test_config_file_carries_strategy_and_print_config(tiny_root, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"strategy: erm\ndata:\n  root: {tiny_root}\nmodel:\n  backbone: tiny3d\n  lr: 0.01\n")
    proc = run_vidlit("fit", "--config", str(cfg), "--print_config")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "strategy: erm" in proc.stdout and "lr: 0.01" in proc.stdout and tiny_root in proc.stdout


def test_list_prints_registries():
    proc = run_vidlit("list")
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert any(line.startswith("strategy") and " erm " in line for line in lines)
    assert any(line.startswith("backbone") and " r3d_18 " in line for line in lines)
    assert any(line.startswith("dataset") and " folder " in line for line in lines)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--strategy", "nope"], "unknown strategy 'nope'"),
        (["--backbone", "nope"], "unknown backbone 'nope'"),
        (["--dataset", "nope"], "unknown dataset 'nope'"),
        (["--data.root", "/does/not/exist"], "/does/not/exist"),
        (["--data.target_domains", "[mars]"], "unknown domain 'mars'"),
    ],
)
def test_bad_input_is_one_line_error(tiny_root, args, needle):
    base = [] if "--data.root" in args else ["--data.root", tiny_root]
    proc = run_vidlit("fit", *base, *args, *TINY_FLAGS)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert needle in err[-1] and err[-1].startswith("vidlit: error:")
    assert "Traceback" not in proc.stderr


def test_root_without_domain_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = run_vidlit("fit", "--data.root", str(tmp_path / "empty"), *TINY_FLAGS)
    assert proc.returncode == 2 and "no videos found" in proc.stderr and "Traceback" not in proc.stderr
