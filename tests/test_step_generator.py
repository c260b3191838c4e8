"""``Strategy.step_generator`` under gradient accumulation: one stream per micro-batch."""
from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from vidlit.models.strategy import Strategy


class _Clips(Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        return {"video": torch.randint(0, 256, (3, 4, 16, 16), dtype=torch.uint8, generator=g), "label": i % 2, "domain": i % 2}


class _Recorder(Strategy):
    """Records, per training batch, its optimizer step and the generator's first draws."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.draws: list[tuple[int, list[float]]] = []

    def compute_loss(self, batch):
        first = torch.rand(3, generator=self.step_generator()).tolist()
        again = torch.rand(3, generator=self.step_generator()).tolist()
        assert first == again  # the same numbers on every call within one batch
        self.draws.append((self.global_step, first))
        return F.cross_entropy(self(batch["video"]), batch["label"]), {}


def _train(accumulate: int) -> list[tuple[int, list[float]]]:
    model = _Recorder(num_classes=2, num_domains=2, backbone="tiny3d", seed=7)
    trainer = pl.Trainer(max_epochs=1, accumulate_grad_batches=accumulate, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(model, DataLoader(_Clips(), batch_size=2))
    return model.draws


def test_micro_batches_of_one_optimizer_step_draw_different_numbers():
    draws = _train(accumulate=2)
    steps = [s for s, _ in draws]
    assert steps == [0, 0, 1, 1]  # two micro-batches per optimizer step
    values = [tuple(d) for _, d in draws]
    assert len(set(values)) == 4, values  # not one mixup lambda / split / order per optimizer step
    assert _train(accumulate=2) == draws  # and reproducible
