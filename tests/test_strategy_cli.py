"""Every strategy end to end through the CLI on the tiny generated set: under
``--trainer.strategy ddp --trainer.devices 2 --trainer.accelerator cpu`` (weights identical on both
ranks afterwards) and with ``--trainer.precision bf16-mixed``."""
from __future__ import annotations

import csv
import json
import math
import os

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from tests.helpers import REPO, TINY_FLAGS, run_vidlit

# short runs: 2 training steps, 1 validation and 1 test batch
FAST = [
    "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
    "--trainer.limit_test_batches", "1", "--data.eval_target_each_epoch", "false",
]
DDP = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]

CLI_CONFIGS = {
    "erm": ["--strategy", "erm"],
    "dann": ["--strategy", "dann", "--model.lambda_schedule", "ganin", "--model.conditional", "true", "--data.unlabeled_target", "true"],
    "mixup": ["--strategy", "mixup"],
    "mixstyle": ["--strategy", "mixup", "--model.mode", "mixstyle", "--model.mix", "crossdomain"],
    "mldg-first": ["--strategy", "mldg", "--model.order", "first"],
    "mldg-second": ["--strategy", "mldg", "--model.order", "second"],
    "coral": ["--strategy", "coral"],
    "groupdro": ["--strategy", "groupdro"],
    "fish": ["--strategy", "fish"],
}


class DumpWeights(Callback):
    """Each rank saves its state dict at the end of training (``rank{N}.pt``); rank 0 also saves the
    initial one (``initial.pt``)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def _save(self, trainer, pl_module, name: str) -> None:
        os.makedirs(self.out_dir, exist_ok=True)
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        params = [n for n, p in pl_module.named_parameters() if p.requires_grad]
        torch.save({"world_size": trainer.world_size, "state": state, "params": params}, os.path.join(self.out_dir, name))

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.global_rank == 0:
            self._save(trainer, pl_module, "initial.pt")

    def on_train_end(self, trainer, pl_module) -> None:
        self._save(trainer, pl_module, f"rank{trainer.global_rank}.pt")


def _fit(tiny_root: str, run_dir: str, *extra: str) -> None:
    proc = run_vidlit(
        "fit", "--data.root", tiny_root, *TINY_FLAGS, *FAST, "--trainer.default_root_dir", run_dir, *extra,
        env={"PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert os.path.isfile(os.path.join(run_dir, "results.json"))


@pytest.mark.slow
@pytest.mark.parametrize("config", list(CLI_CONFIGS))
def test_strategy_under_ddp_keeps_identical_weights_on_both_ranks(tiny_root, tmp_path, config):
    out = str(tmp_path / "weights")
    callback = json.dumps({"class_path": "tests.test_strategy_cli.DumpWeights", "init_args": {"out_dir": out}})
    # no weight decay: a parameter that moved was moved by a gradient step, not by the decay alone
    _fit(tiny_root, str(tmp_path / "run"), *CLI_CONFIGS[config], *DDP, "--model.weight_decay", "0", f"--trainer.callbacks+={callback}")
    r0, r1 = (torch.load(os.path.join(out, f"rank{r}.pt")) for r in (0, 1))
    first = torch.load(os.path.join(out, "initial.pt"))
    initial, params = first["state"], first["params"]
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["state"].keys() == r1["state"].keys()
    for key in r0["state"]:
        if "running_" in key or key.endswith("num_batches_tracked"):
            continue  # BN statistics are per rank between DDP's buffer broadcasts
        assert torch.equal(r0["state"][key], r1["state"][key]), key
    # trained: backbone *parameters* moved (BatchNorm running statistics alone would also differ)
    backbone = [k for k in params if k.startswith("backbone.")]
    assert backbone and all(not torch.equal(initial[k], r0["state"][k]) for k in backbone), \
        [k for k in backbone if torch.equal(initial[k], r0["state"][k])]


# what each strategy logs besides train/loss (every strategy also trains with bf16-mixed in-process
# in tests/test_strategies.py; these two CLI runs add target clips and double backward)
LOGGED = {"dann": ["train/lambda", "train/disc_acc"], "mldg-second": ["train/meta_test_loss"]}


@pytest.mark.slow
@pytest.mark.parametrize("config", list(LOGGED))
def test_strategy_runs_with_bf16_mixed_through_the_cli(tiny_root, tmp_path, config):
    run_dir = str(tmp_path / "run")
    _fit(tiny_root, run_dir, *CLI_CONFIGS[config], "--trainer.precision", "bf16-mixed", "--trainer.log_every_n_steps", "1")
    rows = list(csv.DictReader(open(os.path.join(run_dir, "metrics.csv"))))
    for key in ["train/loss", *LOGGED[config]]:
        values = [float(r[key]) for r in rows if r.get(key)]
        assert len(values) == 2 and all(math.isfinite(v) for v in values), (key, values)
