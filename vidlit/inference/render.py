"""Heat maps over frames: colours, overlays, PNG strips and per-frame importance curves."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def heat_colours(m: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> RGB float in [0, 1] (matplotlib's 'jet')."""
    from matplotlib import colormaps

    return colormaps["jet"](m)[..., :3]


def overlay(frames: np.ndarray, maps: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """frames (T, H, W, 3) uint8, maps (T, H, W) in [0, 1] -> (T, H, W, 3) uint8: the heat
    colour blended in where the map is high, the frame left visible where it is low."""
    w = (alpha * maps)[..., None]
    out = frames.astype(np.float32) * (1 - w) + 255 * heat_colours(maps) * w
    return np.clip(out, 0, 255).astype(np.uint8)


def _enlarge(x: np.ndarray, factor: int) -> np.ndarray:
    return x.repeat(factor, axis=1).repeat(factor, axis=2)


def _captioned(frames: np.ndarray, lines: list[str]) -> np.ndarray:
    """(T, H, W, 3) -> frames with a black band below holding ``lines`` (PIL's default font), even sides."""
    from PIL import Image, ImageDraw

    t, h, w, _ = frames.shape
    band = 12 * len(lines) + 4
    out = np.zeros((t, h + band + (h + band) % 2, w + w % 2, 3), np.uint8)
    out[:, :h, :w] = frames
    img = Image.new("RGB", (out.shape[2], out.shape[1] - h), (0, 0, 0))
    draw = ImageDraw.Draw(img)
    for k, line in enumerate(lines):
        draw.text((3, 2 + 12 * k), line, fill=(255, 255, 255))
    out[:, h:] = np.asarray(img)[None]
    return out


def write_strip(path: str, frames: np.ndarray, maps: np.ndarray, title: str, max_frames: int = 16,
                frame_index: Optional[Sequence[int]] = None) -> None:
    """A PNG of three rows (frames, heat map, overlay), at most ``max_frames`` evenly spaced frames,
    and a colour bar of the heat map's scale (0..1) on the right. Columns are labelled by
    ``frame_index`` (the frames' numbers in the source video, one per clip frame) when given, else
    by their place in the clip (``t=0..T-1``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = frames.shape[0]
    if frame_index is not None and len(frame_index) != t:
        raise ValueError(f"write_strip: {len(frame_index)} frame indices for {t} frames")
    cols = np.unique(np.linspace(0, t - 1, min(t, max_frames)).round().astype(int))
    fig, axes = plt.subplots(3, len(cols), figsize=(1.3 * len(cols) + 1.4, 4.6), squeeze=False, layout="constrained")
    over = overlay(frames, maps)
    heat = None
    for j, f in enumerate(cols):
        for row, (img, kw) in enumerate(((frames[f], {}), (maps[f], {"cmap": "jet", "vmin": 0, "vmax": 1}), (over[f], {}))):
            ax = axes[row, j]
            shown = ax.imshow(img, **kw)
            if row == 1:
                heat = shown
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"frame {int(frame_index[f])}" if frame_index is not None else f"t={f}", fontsize=7)
    for row, name in enumerate(("frame", "Grad-CAM", "overlay")):
        axes[row, 0].set_ylabel(name, fontsize=8)
    bar = fig.colorbar(heat, ax=axes, location="right", fraction=0.04, pad=0.02, ticks=[0, 0.25, 0.5, 0.75, 1])
    bar.set_label("Grad-CAM (0 = none, 1 = the clip's maximum)", fontsize=7)
    bar.ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_curve(path: str, importance: np.ndarray, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 2.6))
    ax.plot(np.arange(len(importance)), 100 * importance, marker="o")
    ax.axhline(100 / max(1, len(importance)), color="0.5", linestyle="--", linewidth=1, label="uniform")
    ax.set_xlabel("frame of the clip")
    ax.set_ylabel("share of saliency (%)")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
