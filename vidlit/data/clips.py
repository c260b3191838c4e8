"""From a :class:`VideoRecord` to a ``uint8`` clip tensor: frame sampling, decoding, augmentation.

Clips stay ``uint8`` ``(C, T, H, W)`` through the DataLoader; conversion to float and
normalisation happen on the training device (see ``Strategy.on_after_batch_transfer``).
Randomness comes from a per-sample generator seeded by ``(seed, epoch, index)``, so augmentation
is identical whatever the number of workers and across a resume.

Sampling (mmaction2's ``num_frames x frame_stride x num_clips``): the video (or segment) is split
into ``num_clips`` equal segments (TSN) and one snippet of ``num_frames`` frames, ``frame_stride``
apart, is taken from each; the snippets are concatenated along T, so a clip is
``(C, num_clips * num_frames, H, W)`` and every backbone sees one ordinary clip.
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
from vidlit.data.video_io import VideoDecodeError

log = logging.getLogger("vidlit.data")


def clip_indices(
    n_frames: int,
    num_frames: int,
    stride: int,
    rng: Optional[np.random.Generator],
    start: int = 0,
    short: str = "loop",
    num_clips: int = 1,
    position: float = 0.5,
) -> np.ndarray:
    """Frame indices ``(num_clips * num_frames,)`` of one sample from a video (or the segment
    starting at frame ``start``) of ``n_frames`` frames.

    The frames are split into ``num_clips`` equal segments; from each, a snippet of ``num_frames``
    frames ``stride`` apart starts at a random offset (when ``rng`` is given, training) or at
    ``position`` (0 = earliest, 0.5 = centred, 1 = latest) of the offsets that keep the snippet
    inside its segment (evaluation). A segment shorter than a snippet lets it overlap the next
    ones. Videos shorter than a snippet loop (``short='loop'``) or repeat their last frame (``'pad'``).
    """
    span = (num_frames - 1) * stride + 1
    steps = np.arange(num_frames) * stride
    out = []
    for k in range(num_clips):
        seg_lo, seg_hi = k * n_frames // num_clips, (k + 1) * n_frames // num_clips
        if n_frames >= span:
            lo = min(seg_lo, n_frames - span)
            hi = min(max(lo, seg_hi - span), n_frames - span)
            off = int(rng.integers(lo, hi + 1)) if rng is not None else lo + int((hi - lo) * position)
            idx = off + steps
        else:
            idx = seg_lo + steps
            idx = idx % n_frames if short == "loop" else np.minimum(idx, n_frames - 1)
        out.append(idx)
    return start + np.concatenate(out)


def view_positions(n: int) -> list[float]:
    """``n`` evenly spaced relative positions in [0, 1]: centres of ``n`` equal parts (1 -> 0.5)."""
    return [(j + 0.5) / n for j in range(n)]


def crop_positions(n: int) -> list[float]:
    """Relative crop offsets along the long side: 1 -> centre; 3 -> left/top, centre, right/bottom."""
    return [0.5] if n == 1 else [j / (n - 1) for j in range(n)]


@dataclass
class ClipTransform:
    """Resize/crop/flip/jitter applied identically to every frame of a clip.

    Training: random resized crop (area ``scale``, aspect 3/4..4/3) to ``size``; flip with
    probability 0.5 when ``flip``; brightness/contrast jitter of strength ``jitter``.
    Evaluation: resize the short side to ``size`` and crop ``size x size`` (centred, or at the
    positions of :meth:`crops`).
    """

    size: int
    train: bool
    scale: tuple[float, float] = (0.5, 1.0)
    flip: bool = False
    jitter: float = 0.0

    def __call__(self, frames: torch.Tensor, rng: Optional[np.random.Generator]) -> tuple[torch.Tensor, bool]:
        """frames (T, C, H, W) uint8 -> ((T, C, size, size) uint8, flipped)."""
        out, _, flipped = self.apply(frames, rng)
        return out, flipped

    def apply(
        self, frames: torch.Tensor, rng: Optional[np.random.Generator], mask: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, Optional[torch.Tensor], bool]:
        """As :meth:`__call__`, and ``mask`` ((T, H, W) uint8 in {0, 1}, e.g. the object's) taken
        through the same resize, crop and flip (as a fourth channel, thresholded at one half; the
        frames come out as they would without it): ``(frames, mask or None, flipped)``."""
        nc = frames.shape[1]
        x = frames if mask is None else torch.cat([frames, mask[:, None].to(frames.dtype) * 255], 1)
        flipped = False
        if not (self.train and rng is not None):
            x = self.crops(x, [0.5])[0]
        else:
            h, w = x.shape[-2:]
            area = h * w * rng.uniform(*self.scale)
            ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            ch = int(round(min(h, np.sqrt(area / ratio))))
            cw = int(round(min(w, np.sqrt(area * ratio))))
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            x = TF.resized_crop(x, top, left, ch, cw, [self.size, self.size], antialias=True)
            if self.flip and rng.random() < 0.5:
                x, flipped = x.flip(-1), True
        out, m = (x, None) if mask is None else (x[:, :nc], (x[:, nc] >= 128).to(torch.uint8))
        if self.train and rng is not None and self.jitter > 0:
            b = 1 + rng.uniform(-self.jitter, self.jitter)
            c = 1 + rng.uniform(-self.jitter, self.jitter)
            f = out.float() * b
            mean = f.mean()
            out = ((f - mean) * c + mean).clamp(0, 255).to(torch.uint8)
        return out, m, flipped

    def crops(self, frames: torch.Tensor, positions: Sequence[float]) -> list[torch.Tensor]:
        """Evaluation crops: frames (T, C, H, W) uint8 resized once (short side -> ``size``), then
        one (T, C, size, size) crop per relative position along each axis (0 = left/top, 1 =
        right/bottom; only the long side has room to move)."""
        if min(frames.shape[-2:]) != self.size:
            frames = TF.resize(frames, self.size, antialias=True)
        h, w = frames.shape[-2:]
        out = []
        for p in positions:
            top, left = int(round((h - self.size) * p)), int(round((w - self.size) * p))
            out.append(frames[..., top : top + self.size, left : left + self.size])
        return out


class ClipDataset(Dataset):
    """Clips from ``records``. Items are dicts: ``video`` (C, T, H, W) uint8 -- or, with
    ``views=(clips, crops)`` other than (1, 1), (V, C, T, H, W) with V = clips x crops, clip-major
    -- ``label``, ``domain`` (index into ``domains``), ``index`` (record index) and ``bad`` (1 if a
    bad file was replaced). T = ``num_clips * num_frames``. Evaluation datasets (single view) whose
    every video has a sidecar object mask (:mod:`vidlit.data.masks`) also give ``mask`` (T, H, W)
    uint8: the same frames, resized and cropped as ``video``; ``masks=False`` leaves it out.

    Training samplers pass ``(index, epoch)`` pairs so each sample's randomness is reproducible;
    ``stream`` separates the random streams of datasets sharing a seed (e.g. source and target).
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
        num_clips: int = 1,
        views: tuple[int, int] = (1, 1),
        stream: int = 0,
        masks: Optional[bool] = None,
    ) -> None:
        self.records = list(records)
        self.classes, self.domains = list(classes), list(domains)
        self.class_index = {c: i for i, c in enumerate(self.classes)}
        self.domain_index = {d: i for i, d in enumerate(self.domains)}
        self.num_frames, self.stride, self.num_clips = num_frames, stride, num_clips
        self.transform, self.seed, self.train, self.short = transform, seed, train, short
        self.views, self.stream = (int(views[0]), int(views[1])), stream
        self.on_bad_video = on_bad_video
        self.flip_label_map = {self.class_index[a]: self.class_index[b] for a, b in (flip_label_map or {}).items()}
        if decode is None:
            from vidlit.data.decoders import RecordDecoder

            decode = RecordDecoder("pyav")
        self.decode = decode
        self.labels = np.array([self.class_index[r.label] for r in self.records], dtype=np.int64)
        self.domain_ids = np.array([self.domain_index[r.domain] for r in self.records], dtype=np.int64)
        self.masks = bool(masks is not False and not train and self.views == (1, 1) and self.records and _all_masks(self.records))

    def __len__(self) -> int:
        return len(self.records)

    @property
    def multi_view(self) -> bool:
        return self.views != (1, 1)

    def _rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, *key] + ([self.stream] if self.stream else []))

    def _indices(self, i: int, rng: Optional[np.random.Generator], positions: Sequence[float]) -> list[np.ndarray]:
        rec = self.records[i]
        start = rec.start_frame or 0
        n = max((rec.end_frame - start) if rec.end_frame is not None else rec.num_frames - start, 1)
        return [clip_indices(n, self.num_frames, self.stride, rng, start, self.short, self.num_clips, p) for p in positions]

    def _load(self, i: int, rng: Optional[np.random.Generator]) -> torch.Tensor:
        """(T, C, H, W) uint8 -- or (clips, T, C, H, W) for multi-view evaluation -- decoded frames."""
        positions = view_positions(self.views[0]) if self.multi_view else [0.5]
        per_view = self._indices(i, rng if self.train else None, positions)
        # one decode call for every view: frames are decoded once, from the first needed to the last
        frames = torch.from_numpy(self.decode(self.records[i], np.concatenate(per_view))).permute(0, 3, 1, 2)
        if not self.multi_view:
            return frames
        return frames.unflatten(0, (len(per_view), -1))

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        i, epoch = key if isinstance(key, tuple) else (key, 0)
        rng = self._rng(epoch, i) if self.train else None
        bad = 0
        try:
            frames = self._load(i, rng)
        except VideoDecodeError as err:
            if self.on_bad_video != "skip":
                raise VideoDecodeError(f"{err} (use --data.on_bad_video skip to replace bad clips and count them)") from None
            frames, i, bad = self._replacement(i, epoch, err)
            rng = self._rng(epoch, i, 1) if self.train else None
        label = int(self.labels[i])
        if self.multi_view:
            crops = crop_positions(self.views[1])
            # (clips, T, C, H, W) -> V x (T, C, S, S) -> (V, C, T, S, S)
            video = torch.stack([c for clip in frames for c in self.transform.crops(clip, crops)]).permute(0, 2, 1, 3, 4)
        else:
            mask = self._mask(i, frames.shape[-2:]) if self.masks else None
            out, mask, flipped = self.transform.apply(frames, rng, mask)
            if flipped:
                label = self.flip_label_map.get(label, label)
            video = out.permute(1, 0, 2, 3)  # (C, T, H, W)
        item = {"video": video.contiguous(), "label": label, "domain": int(self.domain_ids[i]), "index": i, "bad": bad}
        if self.masks:
            item["mask"] = mask.contiguous()
        return item

    def _mask(self, i: int, hw: Sequence[int]) -> torch.Tensor:
        """The sidecar mask of record ``i`` at the frames of its evaluation clip, (T, H, W) uint8."""
        from vidlit.data.masks import read_mask

        full = read_mask(self.records[i].path)
        idx = np.minimum(self._indices(i, None, [0.5])[0], len(full) - 1)
        mask = torch.from_numpy(full[idx])
        if tuple(mask.shape[-2:]) != tuple(hw):  # a mask stored at another size than the video
            mask = TF.resize(mask, list(hw), interpolation=TF.InterpolationMode.NEAREST)
        return mask

    def _replacement(self, i: int, epoch: int, err: Exception) -> tuple[torch.Tensor, int, int]:
        """Another clip of the same domain and class (deterministic), for on_bad_video=skip."""
        log.warning("skipping bad video: %s", err)
        same = np.flatnonzero((self.labels == self.labels[i]) & (self.domain_ids == self.domain_ids[i]))
        rng = self._rng(epoch, i, 2)
        for j in rng.permutation(same):
            if j == i:
                continue
            try:
                return self._load(int(j), None), int(j), 1
            except VideoDecodeError as err2:
                log.warning("skipping bad video: %s", err2)
        raise VideoDecodeError(f"{err}; and no other readable video of the same domain and class to replace it")


def _all_masks(records: Sequence[VideoRecord]) -> bool:
    """Whether every video has a sidecar mask (only the first is looked at when it has none)."""
    from vidlit.data.masks import has_mask

    return all(r.kind == "video" and has_mask(r.path) for r in records)


def decode_record(rec: VideoRecord, indices: np.ndarray) -> np.ndarray:
    """PyAV for video files, JPEG reading for frame folders (``rec.kind == 'frames'``).
    Returns (T, H, W, 3) uint8. See :mod:`vidlit.data.decoders` for the other decoders."""
    from vidlit.data.decoders import RecordDecoder

    return RecordDecoder("pyav")(rec, indices)
