"""Bad input through the real CLI: every case a one-line error naming the file (all of them at
once), or with ``--data.on_bad_video skip`` a counted skip in every split; never a hang or a
DataLoader worker traceback."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import av
import numpy as np
import pytest
from torchvision.io import write_jpeg

from tests.helpers import REPO, TINY_FLAGS, run_vidlit
from vidlit.data.video_io import write_video

NON_UTF8 = b"caf\xe9.mp4"  # a Latin-1 file name: not valid UTF-8
WORKERS = ["--data.num_workers", "2"]


def _audio_only(path: str) -> None:
    with av.open(path, mode="w", format="mp4") as c:
        s = c.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for packet in s.encode(frame):
            c.mux(packet)
        for packet in s.encode():
            c.mux(packet)


def _frames(n: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _corpus(tiny_root: str, root) -> dict[str, tuple[str, str]]:
    """A copy of the tiny set plus bad files: {name: (split kind 'source'/'target', what the error says)}."""
    shutil.copytree(tiny_root, root)
    good = (root / "clean" / "circle" / "clean_circle_000.mp4").read_bytes()
    src, tgt = root / "colour" / "circle", root / "texture" / "move_up"  # texture is the target domain
    bad = {}
    (src / "empty.mp4").write_bytes(b"")
    bad["empty.mp4"] = ("source", "file is empty (0 bytes)")
    (tgt / "truncated.mp4").write_bytes(good[: len(good) // 2])
    bad["truncated.mp4"] = ("target", "cannot open as video")
    (src / "notes.mp4").write_text("these are my notes, not a video\n" * 20)
    bad["notes.mp4"] = ("source", "cannot open as video")
    _audio_only(str(tgt / "audio_only.mp4"))
    bad["audio_only.mp4"] = ("target", "no video stream")
    write_video(str(src / "one_frame.mp4"), _frames(1))
    bad["one_frame.mp4"] = ("source", "shorter than one frame stride")
    os.symlink(str(root / "gone.mp4"), str(root / "shaky" / "circle" / "dangling.mp4"))  # a path that does not exist
    bad["dangling.mp4"] = ("source", "dangling.mp4")
    # fine: shorter than a clip (4 frames x stride 2 = 7 > 3 frames) loops, and a non-UTF-8 name is a name
    write_video(str(src / "short3.mp4"), _frames(3))
    with open(os.path.join(os.fsencode(str(src)), NON_UTF8), "wb") as fh:
        fh.write(good)
    return bad


def _one_line_error(proc: subprocess.CompletedProcess) -> list[str]:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    err = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    start = next(i for i, ln in enumerate(err) if ln.startswith("vidlit: error:"))
    return err[start:]


def test_every_bad_file_is_named_at_once_before_training(tiny_root, tmp_path):
    root = tmp_path / "data"
    bad = _corpus(tiny_root, root)
    proc = run_vidlit("fit", "--data.root", str(root), *TINY_FLAGS, *WORKERS, "--trainer.default_root_dir", str(tmp_path / "run"), timeout=180)
    lines = _one_line_error(proc)
    assert f"{len(bad)} unreadable video(s)" in lines[0] and "--data.on_bad_video skip" in lines[0]
    assert len(lines) == 1 + len(bad), lines  # one line per bad file, nothing about the good odd ones
    for name, (_, why) in bad.items():
        line = next((ln for ln in lines[1:] if name in ln), None)
        assert line is not None and why in line, (name, lines)
    assert "Epoch" not in proc.stdout and not (tmp_path / "run" / "checkpoints").exists()  # before training


@pytest.mark.slow
def test_skip_leaves_bad_files_out_of_every_split_and_counts_them(tiny_root, tmp_path):
    root = tmp_path / "data"
    bad = _corpus(tiny_root, root)
    run_dir = tmp_path / "run"
    proc = run_vidlit("fit", "--data.root", str(root), *TINY_FLAGS, *WORKERS, "--data.on_bad_video", "skip",
                      "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(run_dir), timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr
    res = json.loads((run_dir / "results.json").read_text())
    skipped = res["skipped_videos"]
    n_target = sum(1 for kind, _ in bad.values() if kind == "target")
    assert skipped["test"] == n_target  # the test split too, not only training
    assert skipped["train"] + skipped["val"] == len(bad) - n_target
    for name in bad:  # each named in the log, once
        assert sum(name in ln for ln in proc.stderr.splitlines() if "left out of" in ln) == 1, name
    assert "left out so far" in proc.stderr and "unreadable videos left out" in proc.stdout


def test_val_and_test_clips_that_fail_to_decode_are_skipped_too(tiny_root, tmp_path, monkeypatch):
    """A file that probes fine but fails when decoded (e.g. corrupt frames): with skip, every split
    leaves it out before training; with error, the run stops naming it."""
    from vidlit.data import DATAMODULES
    from vidlit.data.video_io import VideoDecodeError

    dm_cls = DATAMODULES.get("folder")
    broken = {os.path.join(tiny_root, "texture", "circle", "texture_circle_001.mp4")}
    broken |= {os.path.join(tiny_root, d, "move_up", f"{d}_move_up_00{i}.mp4") for d in ("clean", "colour", "shaky") for i in range(6)}

    def decode(rec, idx):
        if rec.path in broken:
            raise VideoDecodeError(f"{rec.path}: cannot decode frame {int(idx[0])}")
        return real(rec, idx)

    dm = dm_cls(root=tiny_root, size=32, num_frames=4, batch_size=6, num_workers=0, on_bad_video="skip")
    real = dm.decoder()
    monkeypatch.setattr(dm, "decoder", lambda: decode)
    dm.setup("fit")
    counts = dm.skipped_counts()
    assert counts["test"] == 1 and counts["val"] >= 1 and counts["train"] == 0  # runtime failures: val/test checked up front
    assert not any(r.path in broken for r in dm.val_records + dm.test_records)
    assert any(r.path in broken for r in dm.train_records)  # training replaces them clip by clip (bad_videos)


def test_manifest_problems_each_one_line_naming_the_row(tmp_path):
    root = tmp_path / "m"
    rows = ["path,label,domain,start_frame,end_frame"]
    for d in ("a", "b", "c"):
        for c in ("run", "walk"):
            for i in range(3):
                p = root / d / f"{c}{i}.mp4"
                p.parent.mkdir(parents=True, exist_ok=True)
                write_video(str(p), _frames(8 + i))
                rows.append(f"{d}/{c}{i}.mp4,{c},{d},,")
    folder = root / "a" / "frames_gap"
    folder.mkdir()
    import torch

    for k in (1, 2, 4, 5, 6, 7, 8, 9):  # img_00003.jpg is missing
        write_jpeg(torch.zeros(3, 32, 32, dtype=torch.uint8), str(folder / f"img_{k:05d}.jpg"))
    rows += ["a/missing.mp4,run,a,,", "b/run0.mp4,run,b,-3,5", "b/run1.mp4,run,b,6,2", "a/frames_gap,run,a,,"]
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    proc = run_vidlit("fit", "--dataset", "manifest", "--data.manifest", str(root / "m.csv"), *TINY_FLAGS, *WORKERS,
                      "--trainer.default_root_dir", str(tmp_path / "run"), timeout=180)
    lines = _one_line_error(proc)
    assert len(lines) == 4, lines  # the summary and one line per bad row, all at once
    for needle in ("missing.mp4", "negative segment bound", "end must be after the start"):
        assert sum(needle in ln for ln in lines[1:]) == 1, (needle, lines)
    # rows fixed: the frame folder's gap is found when the videos are probed, still before training
    (root / "m.csv").write_text("\n".join(r for r in rows if "missing" not in r and ",-3," not in r and ",6,2" not in r) + "\n")
    proc = run_vidlit("fit", "--dataset", "manifest", "--data.manifest", str(root / "m.csv"), *TINY_FLAGS, *WORKERS,
                      "--trainer.default_root_dir", str(tmp_path / "run"), timeout=180)
    lines = _one_line_error(proc)
    assert len(lines) == 2 and "frames_gap" in lines[1] and "img_00003.jpg is missing" in lines[1], lines


def test_a_label_typo_is_a_class_of_one_domain_named_with_its_file(tmp_path):
    root = tmp_path / "m"
    rows = ["path,label,domain"]
    for d in ("a", "b", "c"):
        for c in ("run", "walk"):
            for i in range(2):
                p = root / d / f"{c}{i}.mp4"
                p.parent.mkdir(parents=True, exist_ok=True)
                write_video(str(p), _frames(8))
                label = "wlak" if (d, c, i) == ("b", "walk", 1) else c
                rows.append(f"{d}/{c}{i}.mp4,{label},{d}")
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    proc = run_vidlit("fit", "--dataset", "manifest", "--data.manifest", str(root / "m.csv"), *TINY_FLAGS,
                      "--trainer.default_root_dir", str(tmp_path / "run"), timeout=180)
    lines = _one_line_error(proc)
    assert len(lines) == 1 and "'wlak' only in b" in lines[0] and str(root / "b" / "walk1.mp4") in lines[0], lines


def _without_root_file_access() -> None:
    """``preexec_fn``: for root, drop the capabilities that bypass file permissions
    (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH) from this process and every program it runs, so that
    a file of mode 000 is unreadable as for any other user (a real EACCES). Nothing for others."""
    if os.geteuid() != 0:
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    caps = (1, 2)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH (linux/capability.h)
    for cap in caps:  # the bounding set: root's capabilities after execve come from it
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    keep = ~sum(1 << c for c in caps) & 0xFFFFFFFF
    data[0].effective &= keep
    data[0].permitted &= keep
    data[0].inheritable &= keep
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def test_unreadable_file_is_named(tiny_root, tmp_path):
    """A video the user may not read (mode 000; as root too: the run has no permission override)."""
    root = tmp_path / "data"
    shutil.copytree(tiny_root, root)
    locked = root / "colour" / "circle" / "colour_circle_000.mp4"
    locked.chmod(0)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    args = [sys.executable, "-m", "vidlit", "fit", "--data.root", str(root), *TINY_FLAGS, "--trainer.default_root_dir", str(tmp_path / "run")]
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=180, preexec_fn=_without_root_file_access,
                          check=False)
    lines = _one_line_error(proc)
    assert "1 unreadable video(s)" in lines[0] and len(lines) == 2, lines
    assert str(locked) in lines[1] and "Permission denied" in lines[1], lines
    assert not (tmp_path / "run" / "checkpoints").exists()  # stopped before training


@pytest.mark.slow
def test_two_runs_generating_the_embedded_data_into_one_empty_cache_both_succeed(tmp_path):
    cache = tmp_path / "empty-cache"
    args = [sys.executable, "-m", "vidlit", "fit", "--data.cache_dir", str(cache), "--data.synthetic_videos_per_class", "2",
            *TINY_FLAGS, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
            "--trainer.num_sanity_val_steps", "0"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    procs = [subprocess.Popen([*args, "--trainer.default_root_dir", str(tmp_path / f"run{i}")], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    roots = [d for d in os.listdir(cache) if not d.endswith(".lock")]
    assert len(roots) == 1 and not any(d.endswith(".partial") for d in roots)  # one set, written once, complete
    a, b = (json.loads((tmp_path / f"run{i}" / "results.json").read_text()) for i in range(2))
    assert a["source_domains"] == b["source_domains"] and a["class_names"] == b["class_names"]
