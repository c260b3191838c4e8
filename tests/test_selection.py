"""Model selection when source-validation accuracy saturates: ties in ``val/acc`` go to the epoch
with the lower ``val/loss``, in fit's best checkpoint and in results.json alike."""
from __future__ import annotations

import os

import lightning.pytorch as pl
import pytest
import torch

from vidlit.callbacks.checkpoint import AtomicModelCheckpoint
from vidlit.callbacks.history import HistoryCallback
from vidlit.run.results import best_epoch_from_path

# per epoch: source-val accuracy saturates at 1.0 from epoch 1; the loss keeps falling until epoch 3
ACC = [0.6, 1.0, 1.0, 1.0, 1.0]
LOSS = [1.2, 0.40, 0.25, 0.10, 0.30]


class Scripted(pl.LightningModule):
    """Trains a real (tiny) layer; logs the scripted validation metrics above."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 2)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def validation_step(self, batch, batch_idx):
        e = self.current_epoch
        self.log("val/acc", ACC[e])
        self.log("val/loss", LOSS[e])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(tmp_path, epochs: int, ckpt_path=None, **ckpt_kw) -> tuple[AtomicModelCheckpoint, HistoryCallback]:
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 2)), batch_size=2)
    ckpt = AtomicModelCheckpoint(dirpath=str(tmp_path / "ckpt"), monitor="val/acc", mode="max", save_last=True,
                                 filename="best-{epoch:03d}", **ckpt_kw)
    history = HistoryCallback()
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, callbacks=[ckpt, history])
    trainer.fit(Scripted(), data, data, ckpt_path=ckpt_path)
    return ckpt, history


def test_saturated_accuracy_selects_the_lowest_loss_epoch(tmp_path):
    ckpt, history = _fit(tmp_path, 5)
    assert best_epoch_from_path(ckpt.best_model_path) == 3  # not epoch 1, the first 100%
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["best-epoch=003.ckpt", "last.ckpt"]
    assert [h["val_loss"] for h in history.history] == LOSS  # recorded per epoch for results.json and report


def test_without_tie_break_the_first_saturated_epoch_wins(tmp_path):
    ckpt, _ = _fit(tmp_path, 5, tie_break_monitor=None)
    assert best_epoch_from_path(ckpt.best_model_path) == 1  # Lightning's rule, which the default replaces


def test_tie_break_survives_a_resume(tmp_path):
    _fit(tmp_path, 3)  # best so far: epoch 2 (loss 0.25)
    ckpt, _ = _fit(tmp_path, 5, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert best_epoch_from_path(ckpt.best_model_path) == 3
    stored = torch.load(ckpt.best_model_path, weights_only=False)["callbacks"]
    state = next(v for k, v in stored.items() if "AtomicModelCheckpoint" in k)
    assert list(state["tie_scores"].values()) == pytest.approx([0.10])
