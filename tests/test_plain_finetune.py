"""Plain fine-tuning: ``--data.target_domains '[]'`` splits each domain into train / val / test."""
from __future__ import annotations

import json
import os

import pytest

from datamodules.folder import FolderDataModule
from tests.helpers import TINY_FLAGS, run_vidlit
from vidlit.data import DataError
from vidlit.data.records import VideoRecord, finetune_split
from vidlit.data.synthetic import DOMAINS


@pytest.fixture()
def one_domain(tiny_root, tmp_path) -> str:
    """A one-domain folder ROOT/<domain>/<class>/<video>.mp4 made from the tiny set."""
    root = tmp_path / "one"
    root.mkdir()
    os.symlink(os.path.join(tiny_root, DOMAINS[0]), root / DOMAINS[0])
    return str(root)


def _keys(records) -> set:
    return {r.split_key for r in records}


def test_one_domain_splits_into_disjoint_train_val_test(one_domain):
    dm = FolderDataModule(root=one_domain, target_domains=[], num_frames=4, size=32, batch_size=12, num_workers=0)
    dm.prepare_index()
    assert dm.plain_finetune and dm.source_domains == [DOMAINS[0]] and dm.target_domains == [DOMAINS[0]]
    train, val, test = _keys(dm.train_records), _keys(dm.val_records), _keys(dm.test_records)
    assert train and val and test and not (train & val) and not (train & test) and not (val & test)
    assert len(train | val | test) == 30 and len(test) == 6  # 5 classes x 6 videos; test_fraction 0.2
    again = FolderDataModule(root=one_domain, target_domains=[], num_frames=4, size=32, batch_size=12, num_workers=0)
    again.prepare_index()  # seeded and deterministic
    assert [r.path for r in again.test_records] == [r.path for r in dm.test_records]


def test_groups_never_on_two_sides():
    recs = [VideoRecord(path=f"v{i}.mp4", label="a", domain=d, group=f"{d}-g{i // 3}") for d in ("x", "y") for i in range(60)]
    for seed in range(5):
        train, val, test = finetune_split(recs, 0.2, 0.25, seed)
        assert not (_keys(train) & _keys(val)) and not (_keys(train) & _keys(test)) and not (_keys(val) & _keys(test))
        assert {r.domain for r in test} == {"x", "y"} and len(train) + len(val) + len(test) == len(recs)
    with pytest.raises(DataError, match="test_fraction"):
        finetune_split(recs, 0.2, 0.0, 0)


def test_fit_without_target_tests_in_domain(one_domain, tmp_path):
    run_dir = tmp_path / "run"
    r = run_vidlit("fit", "--data.root", one_domain, "--data.target_domains", "[]", *TINY_FLAGS,
                   "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(run_dir), cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((run_dir / "results.json").read_text())
    assert res["source_domains"] == [DOMAINS[0]] and res["target_domains"] == [DOMAINS[0]]
    assert list(res["test_acc_per_domain"]) == [DOMAINS[0]] and res["test_acc"] is not None
    assert res["plain_finetune"]["videos"] == {"train": 19, "val": 5, "test": 6}
    assert "in-domain test split" in r.stdout and DOMAINS[0] in r.stdout
    # the table names the test rows for what they are: no row claims a held-out target domain
    flat = " ".join(r.stdout.split())
    assert "test split (in domain)" in flat and "held out" not in flat and "source - target" not in flat
    # the eval commands take the run's settings: the same in-domain test split
    r = run_vidlit("test", "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt"), "--data.num_workers", "0",
                   "--trainer.enable_progress_bar", "false", cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    (out,) = (run_dir / "eval").glob("test-*/test_results.json")
    res = json.loads(out.read_text())
    assert list(res["test_acc_per_domain"]) == [DOMAINS[0]] and res["plain_finetune"]["videos"]["test"] == 6
