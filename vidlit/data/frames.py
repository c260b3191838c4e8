"""Frame folders (one JPEG per frame, e.g. ``img_00001.jpg``): probing and clip reading.

Placeholder until the real-data issue lands: frame folders are recognised but not yet read.
"""
from __future__ import annotations

import numpy as np

from vidlit.data.records import VideoRecord
from vidlit.data.video_io import VideoDecodeError, VideoInfo


def probe_frame_folder(rec: VideoRecord) -> VideoInfo:
    raise VideoDecodeError(f"{rec.path}: frame folders are not supported yet")


def decode_frame_folder(rec: VideoRecord, indices: np.ndarray) -> np.ndarray:
    raise VideoDecodeError(f"{rec.path}: frame folders are not supported yet")
