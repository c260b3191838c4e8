"""Clip decoders behind ``--data.decoder auto|pyav|torchcodec|frames``.

* ``pyav``: PyAV (always installed): seek to the keyframe before the clip, decode to its end.
* ``torchcodec``: TorchCodec's CPU decoder (``pip install torchcodec`` plus FFmpeg's shared
  libraries, e.g. Debian's ``libavcodec59 libavformat59 libavutil57 libswscale6 libswresample4
  libavdevice59 libavfilter8``); same frames as PyAV for the same indices.
* ``auto`` (default): ``torchcodec`` when it imports *and* decodes a tiny probe video in this
  process, otherwise ``pyav``, silently.
* ``frames``: every record must be a folder of JPEG frames (``rec.kind == "frames"``).

Frame-folder records are always read by the frame reader, whatever the video decoder. A decoder is
a picklable callable ``(record, frame indices) -> (T, H, W, 3) uint8`` so DataLoader workers can
use it.
"""
from __future__ import annotations

import functools
import io
import warnings
from typing import Optional, Sequence

import numpy as np

from vidlit.data.records import DataError, VideoRecord
from vidlit.data.video_io import FRAME_COUNT_SLACK, VideoDecodeError, decode_frames

DECODERS = ("auto", "pyav", "torchcodec", "frames")
TORCHCODEC_INSTALL = (
    "pip install torchcodec, with FFmpeg's shared libraries installed (Debian/Ubuntu: apt-get install "
    "libavcodec59 libavformat59 libavutil57 libswscale6 libswresample4 libavdevice59 libavfilter8)"
)


@functools.lru_cache(maxsize=1)
def torchcodec_unavailable() -> Optional[str]:
    """None when TorchCodec can decode video in this process, else the reason it cannot (cached)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torchcodec._core.ops as ops
            from torchcodec.decoders import VideoDecoder
    except Exception as err:  # noqa: BLE001 - a missing package, or a build for another torch
        return f"torchcodec cannot be imported ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
    if not getattr(ops, "_FFMPEG_AVAILABLE", True):
        return "torchcodec is installed but cannot load FFmpeg's shared libraries (libavcodec etc.)"
    try:
        frames = VideoDecoder(_probe_video_bytes(), seek_mode="approximate", dimension_order="NHWC").get_frames_at([1]).data
        if tuple(frames.shape) != (1, 16, 16, 3):
            return f"torchcodec decoded a probe video to an unexpected shape {tuple(frames.shape)}"
    except Exception as err:  # noqa: BLE001
        return f"torchcodec cannot decode H.264 ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
    return None


def _probe_video_bytes() -> bytes:
    """A 2-frame 16x16 H.264 mp4, made in memory with PyAV."""
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width = stream.height = 16
        stream.pix_fmt = "yuv420p"
        for _ in range(2):
            frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def resolve_decoder(name: str) -> str:
    """``auto`` -> ``torchcodec`` or ``pyav``; checks an explicit ``torchcodec`` can run."""
    name = str(name).lower()
    if name not in DECODERS:
        raise DataError(f"--data.decoder must be one of {', '.join(DECODERS)}, got '{name}'")
    if name == "auto":
        return "torchcodec" if torchcodec_unavailable() is None else "pyav"
    if name == "torchcodec" and (reason := torchcodec_unavailable()) is not None:
        raise DataError(f"--data.decoder torchcodec: {reason}; {TORCHCODEC_INSTALL}, or use --data.decoder pyav")
    return name


def decode_torchcodec(path: str, indices: Sequence[int]) -> np.ndarray:
    """TorchCodec's equivalent of :func:`vidlit.data.video_io.decode_frames`: (T, H, W, 3) uint8.

    ``approximate`` seek mode maps indices to timestamps by the frame rate (as the PyAV decoder
    does) instead of scanning the whole file first, so a clip from a long video stays cheap.
    """
    if len(indices) == 0:
        raise ValueError("no frame indices")
    from torchcodec.decoders import VideoDecoder

    try:
        decoder = VideoDecoder(path, seek_mode="approximate", dimension_order="NHWC", num_ffmpeg_threads=1)
        n = decoder.metadata.num_frames
        idx = np.asarray(indices, dtype=np.int64)
        if n is not None and idx.max() >= n:
            if idx.max() - (n - 1) > FRAME_COUNT_SLACK:
                raise VideoDecodeError(f"{path}: frames up to {idx.max()} requested but the video has {n}")
            idx = np.minimum(idx, n - 1)  # the header counted a frame or two more, as in decode_frames
        return decoder.get_frames_at(idx.tolist()).data.numpy()
    except VideoDecodeError:
        raise
    except Exception as err:  # noqa: BLE001
        msg = str(err).splitlines()[0] if str(err) else ""
        raise VideoDecodeError(f"{path}: decoding failed (torchcodec {type(err).__name__}: {msg})") from err


class RecordDecoder:
    """Picklable ``(record, indices (T,)) -> (T, H, W, 3) uint8`` for a resolved backend
    (``pyav``, ``torchcodec`` or ``frames``)."""

    def __init__(self, backend: str) -> None:
        if backend not in ("pyav", "torchcodec", "frames"):
            raise ValueError(f"unresolved decoder backend '{backend}'")
        self.backend = backend

    def __call__(self, rec: VideoRecord, indices: np.ndarray) -> np.ndarray:
        if rec.kind == "frames":
            from vidlit.data.frames import decode_frame_folder

            return decode_frame_folder(rec, indices)
        if self.backend == "frames":
            raise VideoDecodeError(f"{rec.path}: a video file, but --data.decoder frames reads frame folders only")
        if self.backend == "torchcodec":
            return decode_torchcodec(rec.path, np.asarray(indices).tolist())
        return decode_frames(rec.path, np.asarray(indices).tolist())

    def __repr__(self) -> str:
        return f"RecordDecoder({self.backend!r})"
