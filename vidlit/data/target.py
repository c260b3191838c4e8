"""Training batches with unlabeled target clips (``--data.unlabeled_target true``) for domain
adaptation methods such as ``dann``, which read ``batch["target_video"]``."""
from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import Dataset
from torch.utils.data._utils.collate import default_collate

from vidlit.data.clips import ClipDataset


class SourceTargetDataset(Dataset):
    """Items by key ``("s" | "t", index, epoch)`` from the source or the target clip dataset."""

    def __init__(self, source: ClipDataset, target: ClipDataset) -> None:
        self.source, self.target = source, target

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[str, int, int]) -> dict:
        part, i, epoch = key
        item = (self.source if part == "s" else self.target)[(i, epoch)]
        item["part"] = part
        return item


def collate_source_target(items: Sequence[dict]) -> dict:
    """Source items -> the usual batch (``video`` (B, C, T, H, W) uint8, ``label``, ``domain``,
    ``index``); target items -> ``target_video`` (B_t, C, T, H, W) uint8 and ``target_domain``
    (B_t,) (index into the target domains), without their labels. ``bad`` (B + B_t,) flags the
    replaced bad clips of both, source first."""
    src = [{k: v for k, v in it.items() if k != "part"} for it in items if it["part"] == "s"]
    tgt = [it for it in items if it["part"] == "t"]
    batch = default_collate(src)
    batch["target_video"] = torch.stack([it["video"] for it in tgt])
    batch["target_domain"] = torch.tensor([it["domain"] for it in tgt], dtype=torch.long)
    batch["bad"] = torch.cat([batch["bad"], torch.tensor([it["bad"] for it in tgt], dtype=batch["bad"].dtype)])
    return batch
