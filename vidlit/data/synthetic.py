"""The embedded default data: a generated multi-domain video set written as real mp4 files.

Classes are defined by motion only (one frame cannot tell them apart: every class starts at a
random place with a random shape, size and colour); domains change appearance only:

=========  ==============================================================
domain     appearance
=========  ==============================================================
clean      dark flat background, bright object
colour     random saturated background and object hues
shaky      grey background, sensor noise, blur and camera shake
texture    random stripes / checkerboard background, random object colour
=========  ==============================================================

The set is deterministic from ``seed`` and is written once to
``<cache>/synthetic-v2-s<seed>-n<videos_per_class>-<size>px`` in the folder layout
``<domain>/<class>/<video>.mp4``, then reused. Beside each video, ``<video>.mask.npz`` holds the
object's mask in every frame (:mod:`vidlit.data.masks`; a set written before masks existed gets
them added on its next use, without rewriting its videos).
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Callable, Optional

import numpy as np

from vidlit.data.masks import write_mask
from vidlit.data.video_io import write_video
from vidlit.utils.io import write_json

DOMAINS = ("clean", "colour", "shaky", "texture")
CLASSES = ("circle", "move_down", "move_left", "move_right", "move_up")
#: other motion classes for a downstream task that the embedded set does not contain (the transfer
#: experiment, benchmarks/transfer_curve.py): anticlockwise circles and the four diagonals
OTHER_CLASSES = ("circle_ccw", "move_down_left", "move_down_right", "move_up_left", "move_up_right")
VERSION = "v2"


def default_cache_dir() -> str:
    return os.environ.get("VIDLIT_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "vidlit"))


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]) * 255


def _trajectory(cls: str, rng: np.random.Generator, t: int, size: int, r: float) -> np.ndarray:
    """(T, 2) centre positions (y, x) in pixels."""
    speed = rng.uniform(1.6, 2.6) * size / 64
    steps = np.arange(t)
    if cls in ("circle", "circle_ccw"):
        rad = rng.uniform(0.18, 0.28) * size
        cy, cx = rng.uniform(rad + r, size - rad - r, 2)
        phase = rng.uniform(0, 2 * np.pi)
        turn = 1 if cls == "circle" else -1
        ang = phase + turn * steps * speed / rad  # "circle": clockwise on screen (y grows downwards)
        return np.stack([cy + rad * np.sin(ang), cx + rad * np.cos(ang)], 1)
    diagonal = 1 / np.sqrt(2)
    dy, dx = {"move_down": (1, 0), "move_up": (-1, 0), "move_left": (0, -1), "move_right": (0, 1),
              "move_down_left": (diagonal, -diagonal), "move_down_right": (diagonal, diagonal),
              "move_up_left": (-diagonal, -diagonal), "move_up_right": (-diagonal, diagonal)}[cls]
    span = speed * (t - 1)
    lo, hi = r + 1, size - r - 1
    y0 = rng.uniform(lo, hi) if dy == 0 else (rng.uniform(lo, hi - span) if dy > 0 else rng.uniform(lo + span, hi))
    x0 = rng.uniform(lo, hi) if dx == 0 else (rng.uniform(lo, hi - span) if dx > 0 else rng.uniform(lo + span, hi))
    return np.stack([y0 + dy * speed * steps, x0 + dx * speed * steps], 1)


def _background(domain: str, rng: np.random.Generator, size: int) -> np.ndarray:
    if domain == "clean":
        return np.full((size, size, 3), rng.uniform(10, 50), np.float32)
    if domain == "colour":
        return np.broadcast_to(_hsv(rng.uniform(), rng.uniform(0.6, 1), rng.uniform(0.4, 0.9)), (size, size, 3)).astype(np.float32)
    if domain == "shaky":
        return np.full((size, size, 3), rng.uniform(90, 140), np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    period = rng.uniform(5, 12) * size / 64
    kind = rng.integers(3)
    pattern = ((yy // period + xx // period) % 2) if kind == 0 else ((xx // period) % 2) if kind == 1 else ((yy // period) % 2)
    c1, c2 = _hsv(rng.uniform(), rng.uniform(0.2, 0.8), rng.uniform(0.3, 0.9)), _hsv(rng.uniform(), rng.uniform(0.2, 0.8), rng.uniform(0.3, 0.9))
    return np.where(pattern[..., None] > 0, c1, c2).astype(np.float32)


def _object_colour(domain: str, rng: np.random.Generator, bg: np.ndarray) -> np.ndarray:
    if domain == "clean":
        return np.full(3, rng.uniform(200, 255))
    if domain == "shaky":
        return np.full(3, rng.choice([rng.uniform(0, 40), rng.uniform(215, 255)]))
    colour = _hsv(rng.uniform(), rng.uniform(0.5, 1), rng.uniform(0.7, 1))
    if np.abs(colour - bg.reshape(-1, 3).mean(0)).sum() < 150:  # keep the object visible
        colour = 255 - colour
    return colour


def _box_blur(img: np.ndarray) -> np.ndarray:
    pad = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
    return sum(pad[i : i + img.shape[0], j : j + img.shape[1]] for i in range(3) for j in range(3)) / 9.0


def render_video(
    domain: str, cls: str, rng: np.random.Generator, frames: int = 16, size: int = 64, with_mask: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """One clip, (T, H, W, 3) uint8; ``with_mask``: also the object's mask (T, H, W) uint8 in
    {0, 1} (moved with the camera shake; the same random draws, so the same clip)."""
    r = rng.uniform(4.5, 7.5) * size / 64
    traj = _trajectory(cls, rng, frames, size, r)
    bg = _background(domain, rng, size)
    colour = _object_colour(domain, rng, bg)
    square = rng.random() < 0.5
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    out = np.empty((frames, size, size, 3), np.uint8)
    masks = np.zeros((frames, size, size), np.uint8)
    shake = np.zeros(2)
    for t, (cy, cx) in enumerate(traj):
        mask = (np.maximum(abs(yy - cy), abs(xx - cx)) <= r) if square else ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r)
        img = np.where(mask[..., None], colour, bg)
        if domain == "shaky":
            shake = np.clip(shake + rng.normal(0, 0.8, 2), -2, 2)
            img = np.roll(img, tuple(np.round(shake).astype(int)), axis=(0, 1))
            mask = np.roll(mask, tuple(np.round(shake).astype(int)), axis=(0, 1))
            img = _box_blur(img) + rng.normal(0, 15, img.shape)
        out[t] = np.clip(img, 0, 255).astype(np.uint8)
        masks[t] = mask
    return (out, masks) if with_mask else out


def synthetic_root(seed: int = 0, videos_per_class: int = 32, size: int = 64, cache_dir: Optional[str] = None) -> str:
    return os.path.join(cache_dir or default_cache_dir(), f"synthetic-{VERSION}-s{seed}-n{videos_per_class}-{size}px")


def generate(
    seed: int = 0,
    videos_per_class: int = 32,
    size: int = 64,
    frames: int = 16,
    cache_dir: Optional[str] = None,
    domains: tuple[str, ...] = DOMAINS,
    classes: tuple[str, ...] = CLASSES,
    progress: Optional[Callable[[int, int], None]] = None,
) -> str:
    """Write the set once (atomically, safe with several processes) and return its root folder."""
    from filelock import FileLock

    root = synthetic_root(seed, videos_per_class, size, cache_dir)
    marker = os.path.join(root, "vidlit_synthetic.json")
    if os.path.isfile(marker) and _has_masks(marker):
        return root
    os.makedirs(os.path.dirname(root), exist_ok=True)
    with FileLock(root + ".lock"):
        if os.path.isfile(marker):  # another process finished it while we waited
            if not _has_masks(marker):  # written before masks existed: add them, the videos stay
                _add_masks(root, marker, seed, frames, size)
            return root
        tmp = root + ".partial"
        shutil.rmtree(tmp, ignore_errors=True)
        total, done = len(domains) * len(classes) * videos_per_class, 0
        for di, domain in enumerate(domains):
            for ci, cls in enumerate(classes):
                for vi in range(videos_per_class):
                    rng = np.random.default_rng([seed, di, ci, vi])
                    clip, mask = render_video(domain, cls, rng, frames, size, with_mask=True)
                    write_video(os.path.join(tmp, domain, cls, f"{domain}_{cls}_{vi:03d}.mp4"), clip)
                    write_mask(os.path.join(tmp, domain, cls, f"{domain}_{cls}_{vi:03d}.mp4"), mask)
                    done += 1
                    if progress:
                        progress(done, total)
        with open(os.path.join(tmp, "vidlit_synthetic.json"), "w") as fh:
            json.dump({"version": VERSION, "seed": seed, "videos_per_class": videos_per_class, "size": size,
                       "frames": frames, "domains": list(domains), "classes": list(classes), "masks": True}, fh, indent=1)
        shutil.rmtree(root, ignore_errors=True)
        os.replace(tmp, root)
    return root


def _has_masks(marker: str) -> bool:
    try:
        with open(marker) as fh:
            return bool(json.load(fh).get("masks"))
    except (OSError, ValueError):
        return False


def _add_masks(root: str, marker: str, seed: int, frames: int, size: int) -> None:
    """Write the mask of every video of a set generated before masks existed (rendered again from
    the same seeds: the same clips), then mark the set as having them. Caller holds the lock."""
    with open(marker) as fh:
        meta = json.load(fh)
    frames, size = int(meta.get("frames", frames)), int(meta.get("size", size))
    for di, domain in enumerate(meta.get("domains", DOMAINS)):
        for ci, cls in enumerate(meta.get("classes", CLASSES)):
            for vi in range(int(meta.get("videos_per_class", 0))):
                _, mask = render_video(domain, cls, np.random.default_rng([int(meta.get("seed", seed)), di, ci, vi]), frames, size, with_mask=True)
                write_mask(os.path.join(root, domain, cls, f"{domain}_{cls}_{vi:03d}.mp4"), mask)
    meta["masks"] = True
    write_json(marker, meta, indent=1)
