"""Video reading and writing with PyAV.

Clips are decoded by seeking to the keyframe before the first frame needed and decoding forward
only until the last frame needed, so a 16-frame clip from a long video costs about as much as a
short video, not the whole file. Frames stay ``uint8``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Optional, Sequence

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from vidlit.utils.errors import VidlitError

# Frames a container's frame count may overstate (headers are sometimes one or two frames long).
# A clip reaching past the decodable end by at most this many frames repeats the last frame;
# any more is an error, never a silent fill.
FRAME_COUNT_SLACK = 2


class VideoDecodeError(VidlitError, RuntimeError):
    """A video could not be opened or decoded; the message names the file."""


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float
    height: int
    width: int


def _rate(stream) -> Fraction:
    return Fraction(stream.average_rate or stream.guessed_rate or 25)


def _frame_index(pts: int, start_pts: int, tb: Fraction, rate: Fraction) -> int:
    return int(round(float((pts - start_pts) * tb * rate)))


def _last_packet_index(container, stream, n_header: int) -> int:
    """Index of the last frame whose packet is in the file (-1 if none), demuxing only the tail:
    no decoding, so it is cheap; a truncated file shows up as a last index far below the header's
    frame count."""
    rate, tb, start = _rate(stream), stream.time_base, stream.start_time or 0
    last = -1
    if n_header > 1:
        container.seek(start + int(Fraction(n_header - 1) / rate / tb), stream=stream, backward=True, any_frame=False)
        last = max((_frame_index(p.pts, start, tb, rate) for p in container.demux(stream) if p.pts is not None and p.size), default=-1)
    if last < 0:  # no index to seek with, or nothing after the seek point: scan from the start
        container.seek(start, stream=stream, backward=True, any_frame=False)
        last = max((_frame_index(p.pts, start, tb, rate) for p in container.demux(stream) if p.pts is not None and p.size), default=-1)
    return last


def probe_video(path: str, verify: bool = True) -> VideoInfo:
    """Frame count, frame rate and size of ``path``.

    With ``verify`` (the default, used while indexing) the first frame is decoded (catching
    undecodable streams) and the packets of the last group of pictures are read to get the exact
    frame count (catching truncated files, whose header promises frames that are not there).
    Raises :class:`VideoDecodeError` with a one-line message naming the file.
    """
    if not os.path.exists(path):
        raise VideoDecodeError(f"{path}: file does not exist")
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(f"{path}: file is empty (0 bytes)")
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoDecodeError(f"{path}: no video stream (is it a video file?)")
            stream = container.streams.video[0]
            rate = _rate(stream)
            n = int(stream.frames or 0)
            if n <= 0 and stream.duration and stream.time_base:
                n = int(round(float(stream.duration * stream.time_base * rate)))
            if n <= 0 and container.duration:
                n = int(round(container.duration / av.time_base * float(rate)))
            height, width = stream.codec_context.height, stream.codec_context.width
            if verify:
                if next(container.decode(stream), None) is None:
                    raise VideoDecodeError(f"{path}: no decodable video frame (corrupt file?)")
                last = _last_packet_index(container, stream, n)
                if n > 0 and last + 1 < n - max(FRAME_COUNT_SLACK, n // 50):
                    raise VideoDecodeError(
                        f"{path}: truncated: the header promises {n} frames but the file holds only {last + 1}"
                    )
                n = last + 1
            elif n <= 0:
                n = _last_packet_index(container, stream, 0) + 1
            if n <= 0:
                raise VideoDecodeError(f"{path}: no video frames")
            return VideoInfo(n, float(rate), height, width)
    except VideoDecodeError:
        raise
    except Exception as err:  # noqa: BLE001 - PyAV raises many types for corrupt input
        raise VideoDecodeError(f"{path}: cannot open as video ({type(err).__name__}: {err})") from err


def _decode_range(container, stream, first: int, last: int, wanted: set[int], seek: bool, stats: Optional[dict]):
    """Decode frames up to ``last`` (seeking to the keyframe before ``first`` when ``seek``).

    Returns ({index: (H, W, 3) uint8} for the wanted indices, last index seen, last frame seen).
    """
    rate, tb, start = _rate(stream), stream.time_base, stream.start_time or 0
    container.seek(start + int(Fraction(first) / rate / tb) if seek else start, stream=stream, backward=True, any_frame=False)
    # one reformatter for the clip: a frame's own to_ndarray builds a new swscale context per frame
    rgb = VideoReformatter()
    got: dict[int, np.ndarray] = {}
    seen, last_frame = -1, None
    for frame in container.decode(stream):
        if frame.pts is None:
            continue
        if stats is not None:
            stats["decoded"] = stats.get("decoded", 0) + 1
        idx = _frame_index(frame.pts, start, tb, rate)
        if idx > last:
            break
        if idx >= seen:
            seen, last_frame = idx, frame
        if idx in wanted:
            got[idx] = rgb.reformat(frame, format="rgb24").to_ndarray()
    return got, seen, last_frame


def _in_dataloader_worker() -> bool:
    from torch.utils.data import get_worker_info

    return get_worker_info() is not None


def decode_frames(path: str, indices: Sequence[int], stats: Optional[dict] = None, threads: Optional[int] = None) -> np.ndarray:
    """Decode the frames at ``indices`` (0-based, any order, repeats allowed) from ``path``.

    Returns ``(len(indices), H, W, 3)`` uint8 RGB. Seeks to the keyframe at or before
    ``min(indices)`` and stops after ``max(indices)``. ``stats``, when given, receives
    ``decoded``: the number of frames decoded. ``threads``: FFmpeg decoding threads; by default
    1 inside a DataLoader worker (the workers already use every core; more threads per worker
    only add contention) and FFmpeg's automatic choice elsewhere.
    """
    if len(indices) == 0:
        raise ValueError("no frame indices")
    wanted = set(int(i) for i in indices)
    first, last = min(wanted), max(wanted)
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            if threads is None and _in_dataloader_worker():
                threads = 1
            if threads is not None:
                stream.codec_context.thread_count = threads
            got, seen, last_frame = _decode_range(container, stream, first, last, wanted, first > 0, stats)
            if first > 0 and first not in got and (seen < 0 or min(got, default=seen) > first):
                # the seek overshot (imprecise index): decode from the start instead
                got, seen, last_frame = _decode_range(container, stream, first, last, wanted, False, stats)
            missing = sorted(i for i in wanted if i not in got)
            if missing and last_frame is not None and missing[0] > seen and last - seen <= FRAME_COUNT_SLACK:
                fill = got.get(seen)
                fill = fill if fill is not None else last_frame.to_ndarray(format="rgb24")
                for i in missing:  # the header counted a frame or two more than the stream holds
                    got[i] = fill
                missing = []
    except Exception as err:  # noqa: BLE001 - PyAV raises many types for corrupt input
        raise VideoDecodeError(f"{path}: decoding failed ({type(err).__name__}: {err})") from err
    if missing:
        more = "..." if len(missing) > 5 else ""
        raise VideoDecodeError(
            f"{path}: frames {missing[:5]}{more} could not be decoded (last decodable frame {seen}; file truncated or corrupt?)"
        )
    return np.stack([got[int(i)] for i in indices])


def write_video(
    path: str, frames: np.ndarray, fps: int = 8, codec: str = "libx264", gop: int = 16, options: Optional[dict] = None
) -> None:
    """Write ``frames`` (T, H, W, 3) uint8 RGB to ``path`` (H and W even for yuv420p); a keyframe
    every ``gop`` frames (x264 may add more at scene cuts unless ``options`` holds
    ``{"x264-params": "scenecut=0"}``); ``options`` are extra encoder options."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    t, h, w, _ = frames.shape
    with av.open(path, mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.gop_size = gop
        if codec == "libx264":
            stream.options = {"crf": "18", "preset": "veryfast", "tune": "zerolatency", **(options or {})}
        elif options:
            stream.options = dict(options)
        for img in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
