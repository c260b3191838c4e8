"""From a :class:`VideoRecord` to a ``uint8`` clip tensor: frame sampling, decoding, augmentation.

Clips stay ``uint8`` ``(C, T, H, W)`` through the DataLoader; conversion to float and
normalisation happen on the training device (see ``Strategy.on_after_batch_transfer``).
Randomness comes from a per-sample generator seeded by ``(seed, epoch, index)``, so augmentation
is identical whatever the number of workers and across a resume.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from vidlit.data.records import VideoRecord
from vidlit.data.video_io import VideoDecodeError, decode_frames

log = logging.getLogger("vidlit.data")


def clip_indices(
    n_frames: int,
    num_frames: int,
    stride: int,
    rng: Optional[np.random.Generator],
    start: int = 0,
    short: str = "loop",
) -> np.ndarray:
    """Frame indices of one clip of ``num_frames`` frames, ``stride`` apart, from a video (or
    segment starting at ``start``) of ``n_frames`` frames. Random offset when ``rng`` is given,
    centred otherwise. Videos shorter than the clip loop (``short='loop'``) or repeat their last
    frame (``'pad'``)."""
    span = (num_frames - 1) * stride + 1
    if n_frames >= span:
        offset = int(rng.integers(0, n_frames - span + 1)) if rng is not None else (n_frames - span) // 2
        idx = offset + np.arange(num_frames) * stride
    else:
        idx = np.arange(num_frames) * stride
        idx = idx % n_frames if short == "loop" else np.minimum(idx, n_frames - 1)
    return start + idx


@dataclass
class ClipTransform:
    """Resize/crop/flip/jitter applied identically to every frame of a clip.

    Training: random resized crop (area ``scale``, aspect 3/4..4/3) to ``size``; flip with
    probability 0.5 when ``flip``; brightness/contrast jitter of strength ``jitter``.
    Evaluation: resize the short side to ``size`` and centre-crop.
    """

    size: int
    train: bool
    scale: tuple[float, float] = (0.5, 1.0)
    flip: bool = False
    jitter: float = 0.0

    def __call__(self, frames: torch.Tensor, rng: Optional[np.random.Generator]) -> tuple[torch.Tensor, bool]:
        """frames (T, C, H, W) uint8 -> ((T, C, size, size) uint8, flipped)."""
        h, w = frames.shape[-2:]
        flipped = False
        if self.train and rng is not None:
            area = h * w * rng.uniform(*self.scale)
            ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            ch = int(round(min(h, np.sqrt(area / ratio))))
            cw = int(round(min(w, np.sqrt(area * ratio))))
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            frames = TF.resized_crop(frames, top, left, ch, cw, [self.size, self.size], antialias=True)
            if self.flip and rng.random() < 0.5:
                frames, flipped = frames.flip(-1), True
            if self.jitter > 0:
                b = 1 + rng.uniform(-self.jitter, self.jitter)
                c = 1 + rng.uniform(-self.jitter, self.jitter)
                f = frames.float() * b
                mean = f.mean()
                frames = ((f - mean) * c + mean).clamp(0, 255).to(torch.uint8)
        else:
            if min(h, w) != self.size:
                frames = TF.resize(frames, self.size, antialias=True)
            frames = TF.center_crop(frames, [self.size, self.size])
        return frames, flipped


class ClipDataset(Dataset):
    """Clips from ``records``. Items are dicts: ``video`` (C, T, H, W) uint8, ``label``, ``domain``
    (index into ``domains``), ``index`` (record index) and ``bad`` (1 if a bad file was replaced).

    Training samplers pass ``(index, epoch)`` pairs so each sample's randomness is reproducible.
    """

    def __init__(
        self,
        records: Sequence[VideoRecord],
        classes: Sequence[str],
        domains: Sequence[str],
        num_frames: int,
        stride: int,
        transform: ClipTransform,
        seed: int = 0,
        train: bool = False,
        short: str = "loop",
        on_bad_video: str = "error",
        flip_label_map: Optional[dict[str, str]] = None,
        decode: Callable[[VideoRecord, np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.records = list(records)
        self.classes, self.domains = list(classes), list(domains)
        self.class_index = {c: i for i, c in enumerate(self.classes)}
        self.domain_index = {d: i for i, d in enumerate(self.domains)}
        self.num_frames, self.stride = num_frames, stride
        self.transform, self.seed, self.train, self.short = transform, seed, train, short
        self.on_bad_video = on_bad_video
        self.flip_label_map = {self.class_index[a]: self.class_index[b] for a, b in (flip_label_map or {}).items()}
        self.decode = decode or decode_record
        self.labels = np.array([self.class_index[r.label] for r in self.records])
        self.domain_ids = np.array([self.domain_index[r.domain] for r in self.records])

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, i: int, rng: Optional[np.random.Generator]) -> torch.Tensor:
        rec = self.records[i]
        start = rec.start_frame or 0
        n = (rec.end_frame - start) if rec.end_frame is not None else rec.num_frames - start
        idx = clip_indices(max(n, 1), self.num_frames, self.stride, rng if self.train else None, start, self.short)
        frames = torch.from_numpy(self.decode(rec, idx)).permute(0, 3, 1, 2)  # (T, C, H, W)
        return frames

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        i, epoch = key if isinstance(key, tuple) else (key, 0)
        rng = np.random.default_rng([self.seed, epoch, i]) if self.train else None
        bad = 0
        try:
            frames = self._load(i, rng)
        except VideoDecodeError as err:
            if self.on_bad_video != "skip":
                raise VideoDecodeError(f"{err} (use --data.on_bad_video skip to replace bad clips and count them)") from None
            frames, i, bad = self._replacement(i, epoch, err)
            rng = np.random.default_rng([self.seed, epoch, i, 1]) if self.train else None
        frames, flipped = self.transform(frames, rng)
        label = int(self.labels[i])
        if flipped:
            label = self.flip_label_map.get(label, label)
        return {
            "video": frames.permute(1, 0, 2, 3).contiguous(),  # (C, T, H, W)
            "label": label,
            "domain": int(self.domain_ids[i]),
            "index": i,
            "bad": bad,
        }

    def _replacement(self, i: int, epoch: int, err: Exception) -> tuple[torch.Tensor, int, int]:
        """Another clip of the same domain and class (deterministic), for on_bad_video=skip."""
        log.warning("skipping bad video: %s", err)
        same = np.flatnonzero((self.labels == self.labels[i]) & (self.domain_ids == self.domain_ids[i]))
        rng = np.random.default_rng([self.seed, epoch, i, 2])
        for j in rng.permutation(same):
            if j == i:
                continue
            try:
                return self._load(int(j), None), int(j), 1
            except VideoDecodeError as err2:
                log.warning("skipping bad video: %s", err2)
        raise VideoDecodeError(f"{err}; and no other readable video of the same domain and class to replace it")


def decode_record(rec: VideoRecord, indices: np.ndarray) -> np.ndarray:
    """Default decoder: PyAV for video files, JPEG reading for frame folders (``rec.kind ==
    'frames'``). Returns (T, H, W, 3) uint8."""
    if rec.kind == "frames":
        from vidlit.data.frames import decode_frame_folder

        return decode_frame_folder(rec, indices)
    return decode_frames(rec.path, indices.tolist())
