"""Object masks stored beside videos: ``<video without extension>.mask.npz`` (key ``mask``, uint8
``(T, H, W)``, 1 where the moving object is, one entry per frame of the video).

The embedded generator (:mod:`vidlit.data.synthetic`) writes one per video. A dataset whose videos
have them passes the mask of each evaluation clip through to its batches (``mask``: ``(T, H, W)``
uint8, the same frames and the same resize/crop as ``video``); datasets without them have no
``mask`` and no foreground-share score (:mod:`vidlit.saliency`).
"""
from __future__ import annotations

import os

import numpy as np

from vidlit.utils.io import atomic_path

MASK_SUFFIX = ".mask.npz"


def mask_path(video_path: str) -> str:
    """The sidecar mask file of a video: ``a/b.mp4`` -> ``a/b.mask.npz``."""
    return os.path.splitext(video_path)[0] + MASK_SUFFIX


def is_mask_file(name: str) -> bool:
    return name.endswith(MASK_SUFFIX)


def write_mask(video_path: str, mask: np.ndarray) -> str:
    """Write ``mask`` ((T, H, W), nonzero = object) as the video's sidecar; returns its path."""
    path = mask_path(video_path)
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, mask=(np.asarray(mask) > 0).astype(np.uint8))
    return path


def read_mask(video_path: str) -> np.ndarray:
    """The video's mask, (T, H, W) uint8 in {0, 1}."""
    with np.load(mask_path(video_path)) as data:
        return np.asarray(data["mask"], dtype=np.uint8)


def has_mask(video_path: str) -> bool:
    return os.path.isfile(mask_path(video_path))
