"""Video reading and writing with PyAV.

Clips are decoded by seeking to the keyframe before the first frame needed and decoding forward
only until the last frame needed, so a 16-frame clip from a long video costs about as much as a
short video, not the whole file. Frames stay ``uint8``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

import av
import numpy as np


class VideoDecodeError(RuntimeError):
    """A video could not be opened or decoded; the message names the file."""


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float
    height: int
    width: int


def probe_video(path: str) -> VideoInfo:
    """Frame count, frame rate and size of ``path`` (decodes nothing when the container knows)."""
    if not os.path.exists(path):
        raise VideoDecodeError(f"{path}: file does not exist")
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(f"{path}: file is empty (0 bytes)")
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoDecodeError(f"{path}: no video stream (is it a video file?)")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 25)
            n = int(stream.frames or 0)
            if n <= 0 and stream.duration and stream.time_base:
                n = int(round(float(stream.duration * stream.time_base) * fps))
            if n <= 0 and container.duration:
                n = int(round(container.duration / av.time_base * fps))
            if n <= 0:  # last resort: count
                n = sum(1 for _ in container.decode(stream))
            return VideoInfo(n, fps, stream.codec_context.height, stream.codec_context.width)
    except VideoDecodeError:
        raise
    except Exception as err:  # noqa: BLE001 - PyAV raises many types for corrupt input
        raise VideoDecodeError(f"{path}: cannot open as video ({type(err).__name__}: {err})") from err


def decode_frames(path: str, indices: Sequence[int]) -> np.ndarray:
    """Decode the frames at ``indices`` (0-based, any order, repeats allowed) from ``path``.

    Returns ``(len(indices), H, W, 3)`` uint8 RGB. Seeks to the keyframe at or before
    ``min(indices)`` and stops after ``max(indices)``.
    """
    if len(indices) == 0:
        raise ValueError("no frame indices")
    wanted = sorted(set(int(i) for i in indices))
    first, last = wanted[0], wanted[-1]
    got: dict[int, np.ndarray] = {}
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or Fraction(25)
            tb = stream.time_base
            start_pts = stream.start_time or 0
            if first > 0:
                target = start_pts + int(Fraction(first) / Fraction(rate) / tb)
                container.seek(target, stream=stream, backward=True, any_frame=False)
            last_frame = None
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                idx = int(round(float((frame.pts - start_pts) * tb * rate)))
                if idx > last:
                    break
                if idx >= first and idx in wanted:
                    got[idx] = frame.to_ndarray(format="rgb24")
                last_frame = (idx, frame)
            if len(got) < len(wanted) and last_frame is not None:
                # frame counts from the container can be a frame or two too high: reuse the last one
                fill = got.get(last_frame[0]) if last_frame[0] in got else last_frame[1].to_ndarray(format="rgb24")
                for i in wanted:
                    if i not in got and i > last_frame[0]:
                        got[i] = fill
    except Exception as err:  # noqa: BLE001
        raise VideoDecodeError(f"{path}: decoding failed ({type(err).__name__}: {err})") from err
    missing = [i for i in wanted if i not in got]
    if missing:
        raise VideoDecodeError(f"{path}: frames {missing[:5]} could not be decoded (file truncated or corrupt?)")
    return np.stack([got[int(i)] for i in indices])


def write_video(path: str, frames: np.ndarray, fps: int = 8, codec: str = "libx264", gop: int = 16) -> None:
    """Write ``frames`` (T, H, W, 3) uint8 RGB to ``path`` (H and W even for yuv420p)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    t, h, w, _ = frames.shape
    with av.open(path, mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.gop_size = gop
        if codec == "libx264":
            stream.options = {"crf": "18", "preset": "veryfast", "tune": "zerolatency"}
        for img in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
