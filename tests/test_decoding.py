"""Decoding: exact frames by index, seeking instead of decoding whole videos, the torchcodec and
PyAV decoders agreeing, ``auto`` falling back silently, and bad files caught while indexing."""
from __future__ import annotations

import logging
import os
import pickle
import shutil
import warnings

import av
import numpy as np
import pytest

from datamodules.folder import FolderDataModule
from vidlit.data import DataError, VideoDecodeError, VideoRecord
from vidlit.data import decoders
from vidlit.data.decoders import RecordDecoder, decode_torchcodec, resolve_decoder, torchcodec_unavailable
from vidlit.data.synthetic import render_video
from vidlit.data.video_io import decode_frames, probe_video, write_video


def _frames(n: int, h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """(n, h, w, 3) uint8 with motion and texture, so neighbouring frames differ."""
    clip = render_video("texture", "circle", np.random.default_rng(seed), frames=n, size=max(h, w))
    return np.ascontiguousarray(clip[:, :h, :w])


def _sequential(path: str) -> np.ndarray:
    """Every frame, decoded from the start without seeking: the reference."""
    with av.open(path) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])])


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("videos")
    out = {}
    for name, n, codec, gop, (h, w) in [
        ("h264.mp4", 60, "libx264", 8, (48, 64)),
        ("odd.mp4", 40, "libx264", 16, (36, 50)),
        ("mpeg4.avi", 40, "mpeg4", 8, (48, 64)),
        ("h264.mkv", 40, "libx264", 8, (48, 64)),
    ]:
        out[name] = str(d / name)
        write_video(out[name], _frames(n, h, w, seed=len(out)), codec=codec, gop=gop)
    out["long.mp4"] = str(d / "long.mp4")
    write_video(out["long.mp4"], _frames(240, 32, 32, seed=9), gop=16)
    return out


INDEX_SETS = [[0, 1, 2, 3], [10, 12, 14, 16], [37, 38, 39], [39, 0, 20, 20, 5], [7]]


@pytest.mark.parametrize("name", ["h264.mp4", "odd.mp4", "mpeg4.avi", "h264.mkv"])
def test_pyav_returns_exactly_the_requested_frames(videos, name):
    ref = _sequential(videos[name])
    assert probe_video(videos[name]).num_frames == len(ref)
    for idx in INDEX_SETS:
        got = decode_frames(videos[name], idx)
        assert got.dtype == np.uint8 and got.shape == (len(idx), *ref.shape[1:])
        np.testing.assert_array_equal(got, ref[idx])


def test_a_clip_from_a_long_video_decodes_only_its_group_of_pictures(videos):
    stats: dict = {}
    clip = decode_frames(videos["long.mp4"], list(range(120, 136)), stats=stats)
    assert clip.shape[0] == 16
    # from the keyframe at or before frame 120 (keyframes every 16) to frame 135, not 240 frames
    assert stats["decoded"] <= 16 + 16 + 1


def test_frame_counts_off_by_a_frame_repeat_the_last_frame_but_truncation_is_an_error(videos, tmp_path):
    n = probe_video(videos["h264.mkv"]).num_frames
    ref = _sequential(videos["h264.mkv"])
    np.testing.assert_array_equal(decode_frames(videos["h264.mkv"], [n - 1, n]), ref[[n - 1, n - 1]])
    data = open(videos["h264.mkv"], "rb").read()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])  # the header still promises every frame
    with pytest.raises(VideoDecodeError, match="cut.mkv: truncated: the header promises 40 frames"):
        probe_video(str(cut))
    with pytest.raises(VideoDecodeError, match=r"cut.mkv: frames \[.*could not be decoded"):
        decode_frames(str(cut), [n - 3, n - 1])


# In CI (CI=true; .ci/run installs FFmpeg's libraries) the torchcodec tests run, and fail, rather than skip
needs_torchcodec = pytest.mark.skipif(
    torchcodec_unavailable() is not None and os.environ.get("CI", "").lower() not in ("true", "1"),
    reason=f"torchcodec cannot run here: {torchcodec_unavailable()}",
)


@needs_torchcodec
@pytest.mark.parametrize("name", ["h264.mp4", "odd.mp4", "mpeg4.avi", "h264.mkv"])
def test_torchcodec_returns_the_same_frames_as_pyav(videos, name):
    for idx in INDEX_SETS:
        np.testing.assert_array_equal(decode_torchcodec(videos[name], idx), decode_frames(videos[name], idx))


@needs_torchcodec
def test_torchcodec_decoder_in_the_datamodule(tiny_root):
    a = FolderDataModule(root=tiny_root, num_frames=4, size=32, batch_size=6, num_workers=0, decoder="torchcodec")
    b = FolderDataModule(root=tiny_root, num_frames=4, size=32, batch_size=6, num_workers=0, decoder="pyav")
    for dm in (a, b):
        dm.setup("fit")
    assert a.decoder().backend == "torchcodec" and b.decoder().backend == "pyav"
    for i in (0, 5, 17):
        np.testing.assert_array_equal(a.val_set[i]["video"].numpy(), b.val_set[i]["video"].numpy())


def test_auto_falls_back_to_pyav_silently(monkeypatch, caplog, capsys):
    monkeypatch.setattr(decoders, "torchcodec_unavailable", lambda: "torchcodec cannot be imported (test)")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with caplog.at_level(logging.DEBUG):
            assert resolve_decoder("auto") == "pyav"
    assert not caplog.records and capsys.readouterr() == ("", "")
    with pytest.raises(DataError, match="--data.decoder torchcodec: torchcodec cannot be imported.*pip install torchcodec"):
        resolve_decoder("torchcodec")
    with pytest.raises(DataError, match="must be one of auto, pyav, torchcodec, frames"):
        resolve_decoder("opencv")


def test_auto_prefers_torchcodec_when_it_runs(monkeypatch):
    monkeypatch.setattr(decoders, "torchcodec_unavailable", lambda: None)
    assert resolve_decoder("auto") == "torchcodec" and resolve_decoder("pyav") == "pyav"


def test_decoders_survive_pickling_for_worker_processes(videos):
    rec = VideoRecord(path=videos["h264.mp4"], label="a", domain="d", num_frames=60)
    dec = pickle.loads(pickle.dumps(RecordDecoder("pyav")))
    np.testing.assert_array_equal(dec(rec, np.array([3, 4])), decode_frames(videos["h264.mp4"], [3, 4]))
    with pytest.raises(VideoDecodeError, match="--data.decoder frames reads frame folders only"):
        RecordDecoder("frames")(rec, np.array([0]))


def _audio_only(path: str) -> None:
    with av.open(path, mode="w", format="matroska") as c:
        s = c.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in s.encode(frame):
            c.mux(packet)
        for packet in s.encode():
            c.mux(packet)


def test_every_kind_of_bad_file_is_reported_together_one_line_each(tiny_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_root, root)
    good = root / "clean" / "circle" / "clean_circle_000.mp4"
    data = good.read_bytes()
    bad = {
        "empty.mp4": "file is empty (0 bytes)",
        "truncated.mp4": "cannot open as video",  # the index (moov) is at the end: gone
        "truncated.mkv": "truncated: the header promises 16 frames",
        "corrupt.mp4": "cannot open as video",
        "notes.mp4": "cannot open as video",
        "audio.mkv": "no video stream",
        "one_frame.mp4": "only 1 frame(s), shorter than one frame stride (2)",
    }
    d = root / "colour" / "circle"
    (d / "empty.mp4").write_bytes(b"")
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])
    mkv = tmp_path / "full.mkv"
    write_video(str(mkv), _frames(16, 32, 32))
    (d / "truncated.mkv").write_bytes(mkv.read_bytes()[: mkv.stat().st_size // 2])
    (d / "corrupt.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    (d / "notes.mp4").write_text("these are my notes, not a video\n" * 20)
    _audio_only(str(d / "audio.mkv"))
    write_video(str(d / "one_frame.mp4"), _frames(1, 32, 32))
    dm = FolderDataModule(root=str(root), num_frames=4, size=32, batch_size=6, num_workers=0, frame_stride=2)
    with pytest.raises(DataError) as err:
        dm.prepare_index()
    lines = str(err.value).splitlines()
    assert lines[0].startswith(f"{len(bad)} unreadable video(s)")
    assert len(lines) == 1 + len(bad)
    for name, why in bad.items():
        line = next(ln for ln in lines[1:] if os.path.basename(ln.split(":")[0]) == name)
        assert why in line, line


def test_frames_decoder_rejects_video_files_while_indexing(tiny_root):
    dm = FolderDataModule(root=tiny_root, num_frames=4, size=32, batch_size=6, num_workers=0, decoder="frames")
    with pytest.raises(DataError, match="a video file, but --data.decoder frames reads frame folders only"):
        dm.prepare_index()
