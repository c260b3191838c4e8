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


# ----------------------------------------------------------------------------------------------
# later arguments override --config files; the saved config.yaml reruns the run it belongs to
# ----------------------------------------------------------------------------------------------
import yaml  # noqa: E402


def _printed_config(*args: str) -> dict:
    proc = run_vidlit("fit", *args, "--print_config")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return yaml.safe_load(proc.stdout)


def test_later_flags_override_config_files_and_earlier_ones_lose(tiny_root, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"strategy: dann\ndataset: videolist\ndata:\n  root: {tiny_root}\nmodel:\n  backbone: tiny3d\n  lr: 0.01\n")
    later = _printed_config("--config", str(cfg), "--strategy", "coral", "--dataset", "folder", "--backbone", "r3d_18", "--model.lr", "0.02")
    assert (later["strategy"], later["dataset"], later["model"]["backbone"], later["model"]["lr"]) == ("coral", "folder", "r3d_18", 0.02)
    assert "coral_weight" in later["model"] and "lambda_value" not in later["model"]  # coral's own arguments
    earlier = _printed_config("--strategy", "coral", "--dataset", "folder", "--backbone", "r3d_18", "--model.lr", "0.02", "--config", str(cfg))
    assert (earlier["strategy"], earlier["dataset"], earlier["model"]["backbone"], earlier["model"]["lr"]) == ("dann", "videolist", "tiny3d", 0.01)
    # the short forms and --model.* of the chosen strategy still work together
    dann = _printed_config("--data.root", tiny_root, "--strategy", "dann", "--model.lambda_schedule", "warmstart")
    assert dann["strategy"] == "dann" and dann["model"]["lambda_schedule"] == "warmstart"


def test_run_trains_and_records_the_strategy_given_after_the_config(tiny_root, tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(f"strategy: dann\ndata:\n  root: {tiny_root}\n")
    run_dir = tmp_path / "run"
    proc = run_vidlit("fit", "--config", str(cfg), "--strategy", "coral", *TINY_FLAGS, "--trainer.max_epochs", "1",
                      "--trainer.limit_train_batches", "2", "--trainer.default_root_dir", str(run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run_dir / "results.json").read_text())["strategy"] == "coral"
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["strategy"] == "coral" and "coral_weight" in saved["model"]
    import torch

    hparams = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["hyper_parameters"]
    assert "coral_weight" in hparams and "lambda_value" not in hparams  # coral was trained, not dann


@pytest.mark.slow
def test_saved_config_reproduces_the_run(tiny_root, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    proc = run_vidlit("fit", "--strategy", "mixup", "--data.root", tiny_root, *TINY_FLAGS, "--model.alpha", "0.4",
                      "--model.lr", "0.005", "--seed_everything", "5", "--trainer.default_root_dir", str(first))
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = (first / "config.yaml").read_text()
    assert yaml.safe_load(saved)["trainer"]["default_root_dir"] is None  # a rerun gets a run folder of its own
    proc = run_vidlit("fit", "--config", str(first / "config.yaml"), "--trainer.default_root_dir", str(second))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (second / "config.yaml").read_text() == saved  # every setting, strategy, dataset and backbone alike
    a, b = (json.loads((d / "results.json").read_text()) for d in (first, second))
    ignored = {"wall_time_s", "run_dir", "best_checkpoint"}
    assert {k: v for k, v in a.items() if k not in ignored} == {k: v for k, v in b.items() if k not in ignored}
    assert a["strategy"] == "mixup" and a["seed"] == 5


# ----------------------------------------------------------------------------------------------
# untrusted files and unwritable folders: one line, before training, no code run
# ----------------------------------------------------------------------------------------------
class _Payload:
    """Unpickling this runs code: it would create the file ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _evil_pickle(path, marker) -> str:
    import torch

    torch.save({"state_dict": {"w": _Payload(str(marker))}}, str(path))
    assert not marker.exists()
    return str(path)


@pytest.mark.parametrize("flag", ["--model.pretrained", "--ckpt_path"])
def test_a_pickle_that_would_run_code_is_refused(flag, tiny_root, tmp_path):
    marker = tmp_path / "pwned"
    evil = _evil_pickle(tmp_path / "evil.ckpt", marker)
    proc = run_vidlit("fit", "--data.root", tiny_root, *TINY_FLAGS, flag, evil, "--trainer.default_root_dir", str(tmp_path / "run"))
    assert proc.returncode == 2, proc.stderr[-3000:]
    err = proc.stderr.strip().splitlines()
    assert err[-1].startswith("vidlit: error:") and evil in err[-1] and "weights_only" in err[-1], err[-1]
    assert "Traceback" not in proc.stderr
    assert not marker.exists()  # the payload never ran


def test_unwritable_run_folder_is_one_line_before_training(tiny_root, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    proc = run_vidlit("fit", "--data.root", tiny_root, *TINY_FLAGS, "--trainer.default_root_dir", str(blocker / "run"))
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert err[-1].startswith("vidlit: error:") and str(blocker / "run") in err[-1] and "--trainer.default_root_dir" in err[-1]
    assert "Traceback" not in proc.stderr and "Epoch" not in proc.stdout
