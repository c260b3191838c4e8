"""DDP sharding through the CLI: 2 CPU processes, every batch on each rank holds every source
domain, the ranks' shards are disjoint, and each epoch is reshuffled."""
from __future__ import annotations

import json
import os

import lightning.pytorch as pl
import pytest

from tests.helpers import REPO, TINY_FLAGS, run_vidlit


class BatchRecorder(pl.Callback):
    """Test-only: writes ``rank<N>.json`` with every training batch's (epoch, indices, domains)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.batches: list[dict] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: dict, batch_idx: int) -> None:
        self.batches.append({
            "epoch": trainer.current_epoch,
            "index": batch["index"].tolist(),
            "domain": batch["domain"].tolist(),
        })

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        os.makedirs(self.out_dir, exist_ok=True)
        info = {"rank": trainer.global_rank, "world_size": trainer.world_size, "batches": self.batches}
        with open(os.path.join(self.out_dir, f"rank{trainer.global_rank}.json"), "w") as fh:
            json.dump(info, fh)


@pytest.mark.slow
def test_ddp_two_processes_get_disjoint_domain_balanced_shards(tiny_root, tmp_path):
    out = tmp_path / "batches"
    proc = run_vidlit(
        "fit", "--data.root", tiny_root, *TINY_FLAGS, "--data.batch_size", "6", "--data.eval_target_each_epoch", "false",
        "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
        "--trainer.callbacks+=tests.test_data_ddp.BatchRecorder", f"--trainer.callbacks.out_dir={out}",
        "--trainer.default_root_dir", str(tmp_path / "run"),
        cwd=REPO, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    n_source = len(results["source_domains"])
    for r in ranks:
        assert r["batches"], "no training batches recorded"
        for b in r["batches"]:  # batch_size 6 per device: 2 clips of each of the 3 source domains
            assert sorted(b["domain"]) == sorted(list(range(n_source)) * 2), f"rank {r['rank']}: unbalanced batch {b}"
    epochs = sorted({b["epoch"] for b in ranks[0]["batches"]})
    assert len(epochs) == 2
    for epoch in epochs:
        shards = [[i for b in r["batches"] if b["epoch"] == epoch for i in b["index"]] for r in ranks]
        # within an epoch the ranks never share a clip (smaller domains may cycle within a rank)
        assert not set(shards[0]) & set(shards[1]), f"epoch {epoch}: ranks share clips"
        assert len(ranks[0]["batches"]) == len(ranks[1]["batches"])
    order = [[i for b in ranks[0]["batches"] if b["epoch"] == e for i in b["index"]] for e in epochs]
    assert order[0] != order[1], "rank 0 saw the same order in both epochs: not reshuffled"
