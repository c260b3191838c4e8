"""W&B logging, checked offline by reading the run's ``.wandb`` transaction log (wandb's own
protobuf records), and the choice of online/offline/disabled without ever prompting."""
from __future__ import annotations

import csv
import glob
import json
import os
import re

import pytest
from jsonargparse import Namespace

from tests.test_reproducible import load_results, reference_run
from vidlit.data.video_io import probe_video
from vidlit.callbacks.loggers import WANDB_ID_FILE, RunCSVLogger, VidlitWandbLogger, build_loggers, read_wandb_file, wandb_mode


def _decode(value_json: str):
    return json.loads(value_json)


def _set(target: dict, item, append: bool = False) -> None:
    """Store a summary/history item; ``nested_key`` [name, field, ...] means target[name][field]."""
    keys = [item.key] if item.key else list(item.nested_key)
    for k in keys[:-1]:
        target = target.setdefault(k, {})
    value = _decode(item.value_json)
    if append:
        target.setdefault(keys[-1], []).append(value)
    else:
        target[keys[-1]] = value


def _logged(run_dir: str) -> dict:
    """What the run's offline W&B file holds: run record, history keys, summary, config."""
    (path,) = glob.glob(os.path.join(run_dir, "wandb", "offline-run-*", "run-*.wandb"))
    out: dict = {"dir": os.path.dirname(path), "history": {}, "summary": {}, "config": {}, "runs": []}
    for rec in read_wandb_file(path):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out["runs"].append(rec.run)
            out["config"].update({u.key: _decode(u.value_json) for u in rec.run.config.update if u.key})
        elif kind == "config":
            out["config"].update({u.key: _decode(u.value_json) for u in rec.config.update if u.key})
        elif kind == "history":
            for item in rec.history.item:
                _set(out["history"], item, append=True)
        elif kind == "summary":
            for u in rec.summary.update:
                _set(out["summary"], u)
    return out


@pytest.fixture(scope="module")
def logged(tiny_root, tmp_path_factory):
    run_dir = reference_run(tiny_root, str(tmp_path_factory.getbasetemp()))
    return run_dir, load_results(run_dir), _logged(run_dir)


def test_offline_run_says_once_how_to_sync(logged):
    run_dir, _, _ = logged
    with open(run_dir + ".log") as fh:
        lines = [ln for ln in fh.read().splitlines() if "wandb sync" in ln]
    assert lines == [f"W&B: WANDB_MODE=offline; logging offline, upload later with: wandb sync {run_dir}/wandb/offline-run-*"]


def test_run_id_is_kept_in_the_run_dir_and_config_is_the_resolved_one(logged, tiny_root):
    run_dir, results, w = logged
    with open(os.path.join(run_dir, WANDB_ID_FILE)) as fh:
        run_id = fh.read().strip()
    assert [r.run_id for r in w["runs"]] == [run_id]
    assert w["runs"][0].project == "vidlit"
    cfg = w["config"]
    assert cfg["strategy"] == "erm" and cfg["dataset"] == "folder" and cfg["seed_everything"] == 3
    assert cfg["data"]["root"] == tiny_root and cfg["data"]["num_frames"] == 4
    assert cfg["trainer"]["max_epochs"] == 2 and cfg["trainer"]["default_root_dir"] == run_dir
    assert cfg["model"]["backbone"] == "tiny3d" and "lr" in cfg["model"]


def test_every_csv_metric_is_charted(logged):
    run_dir, results, w = logged
    with open(os.path.join(run_dir, "metrics.csv")) as fh:
        csv_keys = set(next(csv.reader(fh))) - {"step"}
    assert csv_keys <= set(w["history"])
    for d in results["source_domains"]:
        assert len(w["history"][f"val/acc/{d}"]) == 2  # one point per epoch
    for d in results["target_domains"]:
        assert w["history"][f"test/acc/{d}"] == [pytest.approx(results["test_acc_per_domain"][d], abs=1e-6)]
    assert "train/loss" in w["history"] and any(k.startswith("lr-") for k in w["history"])


def test_results_are_the_summary(logged):
    run_dir, results, w = logged
    for key in ("test_acc", "val_acc", "oracle_test_acc", "best_epoch", "strategy", "test_acc_per_domain", "val_acc_per_domain"):
        assert w["summary"][key] == results[key]
    with open(os.path.join(w["dir"], "files", "results.json")) as fh:
        assert json.load(fh)["test_acc"] == results["test_acc"]


def test_target_confusion_matrix_matches_test_accuracy(logged):
    run_dir, results, w = logged
    table = w["summary"]["test/confusion_matrix_table"]
    with open(os.path.join(w["dir"], "files", table["path"])) as fh:
        data = json.load(fh)
    assert data["columns"] == ["Actual", "Predicted", "nPredictions"]
    classes = results["class_names"]
    assert len(data["data"]) == len(classes) ** 2
    total = sum(n for _, _, n in data["data"])
    correct = sum(n for a, p, n in data["data"] if a == p)
    assert total == 30  # every clip of the held-out domain: 5 classes x 6 videos
    assert correct / total == pytest.approx(results["test_acc"], abs=1e-5)


def test_sample_clips_per_domain_are_mp4_with_labels(logged):
    run_dir, results, w = logged
    classes = "|".join(map(re.escape, results["class_names"]))
    for domain in results["source_domains"] + results["target_domains"]:
        media = w["summary"][f"samples/{domain}"]
        assert media["_type"] == "videos" and media["count"] == 2
        for video, caption in zip(media["videos"], media["captions"]):
            assert re.fullmatch(f"true: ({classes}) \\| pred: ({classes})", caption)
            info = probe_video(os.path.join(w["dir"], "files", video["path"]))
            assert info.num_frames == 4 and info.height >= 128  # the clip as the model saw it, enlarged


def _options_config(**wandb: object) -> Namespace:
    return Namespace(fit=Namespace(ckpt_path=None, seed_everything=0, wandb=Namespace(**wandb)))


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    """No W&B credentials, and a fresh W&B session in this process (wandb reads the environment
    once per session), torn down afterwards so later subprocesses do not join its service."""
    import wandb

    wandb.finish()
    wandb.teardown()
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "NETRC", "WANDB_DISABLED", "WANDB_BASE_URL", "WANDB_SERVICE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    yield tmp_path / "home"
    wandb.finish()
    wandb.teardown()


def test_mode_follows_credentials_and_env(no_credentials, monkeypatch):
    assert wandb_mode() == "offline"
    (no_credentials / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    assert wandb_mode() == "online"  # what `wandb login` leaves behind
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"
    monkeypatch.delenv("WANDB_MODE")
    (no_credentials / ".netrc").unlink()
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert wandb_mode() == "online"


def test_disabled_leaves_only_csv(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    loggers = build_loggers(str(tmp_path), _options_config(), "fit")
    assert [type(lg) for lg in loggers] == [RunCSVLogger]


def test_eval_commands_without_a_request_leave_only_csv(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    loggers = build_loggers(str(tmp_path), _options_config(), "test", wandb=False)
    assert [type(lg) for lg in loggers] == [RunCSVLogger] and not (tmp_path / "wandb").exists()


def test_no_credentials_goes_offline_without_prompt(no_credentials, tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    loggers = build_loggers(run_dir, _options_config(project="p", tags=["x"]), "fit")
    (wb,) = [lg for lg in loggers if isinstance(lg, VidlitWandbLogger)]
    assert wb.experiment.settings.mode in ("offline", "dryrun") and list(wb.experiment.tags) == ["x"]
    err = capsys.readouterr().err
    assert err.count("wandb sync") == 1 and "no credentials" in err and "wandb login" in err


def test_unreachable_server_falls_back_to_offline(no_credentials, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    run_dir = str(tmp_path / "run")
    loggers = build_loggers(run_dir, _options_config(init_timeout=3), "fit")
    (wb,) = [lg for lg in loggers if isinstance(lg, VidlitWandbLogger)]
    assert wb.experiment.settings.mode in ("offline", "dryrun")
    with open(os.path.join(run_dir, WANDB_ID_FILE)) as fh:
        assert wb.experiment.id == fh.read().strip()
    err = capsys.readouterr().err
    assert "could not start the online run" in err and err.count("wandb sync") == 1
