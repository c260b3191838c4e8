"""Frame folders (one JPEG per frame, e.g. ``img_00001.jpg``): probing and clip reading.

A record with ``kind == "frames"`` points at a folder of numbered images. Frame index ``i`` of the
record (0-based, as for videos) is the file ``template.format(i + first)``, where ``first`` is the
number of the first frame file (1 for mmaction2 rawframes and EPIC-Kitchens, which number from 1).

The template comes from ``rec.extra["frame_template"]`` (e.g. ``"img_{:05d}.jpg"`` or
``"frame_{:010d}.jpg"``) and the first number from ``rec.extra["frame_start"]`` (default 1); without
a template it is derived from the folder's file names (preferring ``img_``, ``frame_``, ``image_``
names, so mmaction2's ``img_``/``x_``/``y_`` rgb+flow folders read the rgb frames).
``rec.extra["total_frames"]`` (rawframes list files) is the number of frames the folder must hold.
Only the JPEGs a clip needs are read.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image

from vidlit.data.records import VideoRecord
from vidlit.data.video_io import VideoDecodeError, VideoInfo

_NUMBERED = re.compile(r"^(?P<prefix>.*?)(?P<num>\d+)(?P<ext>\.(?:jpe?g|png))$", re.IGNORECASE)
_PREFERRED_PREFIXES = ("img_", "frame_", "image_", "img", "frame", "image")
DEFAULT_FPS = 30.0


@dataclass(frozen=True)
class FrameLayout:
    """How a folder's frames are named: ``template.format(i + first)`` is frame ``i``."""

    template: str
    first: int


@dataclass(frozen=True)
class _Scan:
    numbers: np.ndarray  # sorted file numbers present for the template
    height: int
    width: int


def infer_layout(folder: str) -> FrameLayout:
    """The naming template of the numbered images in ``folder`` (see the module docstring)."""
    folder = os.path.abspath(folder)
    return _infer_layout(folder, _mtime(folder))


def _mtime(folder: str) -> int:
    """Part of the cache keys: adding or removing a frame changes the folder's mtime."""
    try:
        return os.stat(folder).st_mtime_ns
    except OSError:
        return -1


@lru_cache(maxsize=4096)
def _infer_layout(folder: str, mtime: int) -> FrameLayout:
    digits: dict[tuple[str, str], list[str]] = {}
    for name in _listdir(folder):
        m = _NUMBERED.match(name)
        if m:
            digits.setdefault((m["prefix"], m["ext"]), []).append(m["num"])
    if not digits:
        raise VideoDecodeError(f"{folder}: no numbered image files (e.g. img_00001.jpg); extract the frames or fix the path")
    prefix, ext = min(digits, key=lambda k: (_prefix_rank(k[0]), -len(digits[k]), k))
    nums = digits[(prefix, ext)]
    padded = [len(d) for d in nums if d.startswith("0") and len(d) > 1]
    lengths = {len(d) for d in nums}
    width = min(padded) if padded else (lengths.pop() if len(lengths) == 1 else 0)
    field = f"{{:0{width}d}}" if width > 1 else "{:d}"
    first = 0 if min(int(d) for d in nums) == 0 else 1
    return FrameLayout(prefix.replace("{", "{{").replace("}", "}}") + field + ext, first)


def _prefix_rank(prefix: str) -> int:
    return _PREFERRED_PREFIXES.index(prefix) if prefix in _PREFERRED_PREFIXES else len(_PREFERRED_PREFIXES)


def _listdir(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        raise VideoDecodeError(f"{folder}: frame folder does not exist; extract the frames there or fix the path")
    try:
        return os.listdir(folder)
    except OSError as err:
        raise VideoDecodeError(f"{folder}: cannot list the frame folder ({err})") from err


def layout_of(rec: VideoRecord) -> FrameLayout:
    """The record's frame naming: from ``rec.extra`` or derived from the folder."""
    template = rec.extra.get("frame_template")
    if template:
        return FrameLayout(str(template), int(rec.extra.get("frame_start", 1)))
    return infer_layout(rec.path)


def frame_file(rec: VideoRecord, index: int, layout: Optional[FrameLayout] = None) -> str:
    """Path of frame ``index`` (0-based) of ``rec``."""
    layout = layout or layout_of(rec)
    return os.path.join(rec.path, layout.template.format(index + layout.first))


@lru_cache(maxsize=1024)
def _scan(folder: str, template: str, mtime: int) -> _Scan:
    """File numbers present in ``folder`` for ``template``; cached per folder because many segments
    (EPIC-Kitchens) share one folder of tens of thousands of frames."""
    regex = _template_regex(template)
    nums = sorted(int(m.group(1)) for m in map(regex.match, _listdir(folder)) if m)
    if not nums:
        raise VideoDecodeError(f"{folder}: no frames named like {template.format(1)}; extract the frames or set --data.frame_template")
    h, w = _read(os.path.join(folder, template.format(nums[0]))).shape[:2]
    return _Scan(np.asarray(nums, dtype=np.int64), h, w)


def _template_regex(template: str) -> re.Pattern:
    """``img_{:05d}.jpg`` -> ``^img_(\\d+)\\.jpg$`` (one integer field)."""
    parts = re.split(r"\{[^{}]*\}", template.replace("{{", "\0").replace("}}", "\1"))
    if len(parts) != 2:
        raise VideoDecodeError(f"frame template '{template}' must hold exactly one number field, e.g. img_{{:05d}}.jpg")
    unescape = [re.escape(p.replace("\0", "{").replace("\1", "}")) for p in parts]
    return re.compile(f"^{unescape[0]}(\\d+){unescape[1]}$")


def probe_frame_folder(rec: VideoRecord) -> VideoInfo:
    """Frame count, size and frame rate of a frame folder; every frame the record uses must exist.

    The count is ``rec.extra["total_frames"]`` when given (rawframes lists), else the highest frame
    number present. Raises :class:`VideoDecodeError` naming the folder and the first missing frame.
    """
    layout = layout_of(rec)
    folder = os.path.abspath(rec.path)
    scan = _scan(folder, layout.template, _mtime(folder))
    total = int(rec.extra.get("total_frames") or 0) or int(scan.numbers[-1]) - layout.first + 1
    lo = rec.start_frame or 0
    hi = rec.end_frame if rec.end_frame is not None else total
    need_first, need_last = lo + layout.first, hi - 1 + layout.first
    present = scan.numbers[np.searchsorted(scan.numbers, need_first):np.searchsorted(scan.numbers, need_last, side="right")]
    if len(present) < need_last - need_first + 1:
        expected = np.arange(need_first, need_last + 1)
        missing = np.setdiff1d(expected, present)
        what = "the segment" if rec.end_frame is not None else "the folder"
        raise VideoDecodeError(
            f"{rec.path}: frame {layout.template.format(int(missing[0]))} is missing ({len(missing)} of "
            f"{layout.template.format(need_first)}..{layout.template.format(need_last)} needed by {what}); "
            "re-extract the frames or fix the frame count"
        )
    return VideoInfo(total, float(rec.extra.get("fps", DEFAULT_FPS)), scan.height, scan.width)


def decode_frame_folder(rec: VideoRecord, indices: np.ndarray) -> np.ndarray:
    """Read frames ``indices`` (0-based, repeats allowed) of a frame folder as (T, H, W, 3) uint8,
    reading each needed image once."""
    layout = layout_of(rec)
    cache: dict[int, np.ndarray] = {}
    out = []
    for i in np.asarray(indices).tolist():
        if i not in cache:
            cache[i] = _read(frame_file(rec, int(i), layout))
        out.append(cache[i])
    shapes = {f.shape for f in out}
    if len(shapes) > 1:
        raise VideoDecodeError(f"{rec.path}: frames differ in size {sorted(shapes)}; re-extract the frames at one size")
    return np.stack(out)


def _read(path: str) -> np.ndarray:
    """One image file as (H, W, 3) uint8 RGB."""
    try:
        with open(path, "rb") as fh:
            data = torch.frombuffer(bytearray(fh.read()), dtype=torch.uint8)
    except FileNotFoundError:
        raise VideoDecodeError(f"{path}: frame file is missing; re-extract the frames") from None
    except OSError as err:
        raise VideoDecodeError(f"{path}: cannot read frame ({err})") from err
    if data.numel() == 0:
        raise VideoDecodeError(f"{path}: frame file is empty (0 bytes); re-extract the frames")
    try:
        img = decode_image(data, mode=ImageReadMode.RGB)
    except Exception as err:  # noqa: BLE001 - torchvision raises RuntimeError for corrupt images
        raise VideoDecodeError(f"{path}: cannot decode frame ({type(err).__name__}: {err})") from err
    return img.permute(1, 2, 0).numpy()
