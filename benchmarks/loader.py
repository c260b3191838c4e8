"""Loader benchmark: ``python -m benchmarks.loader [--reps 7] [--json out.json]``.

1. Throughput: clips/s delivered by :class:`MultiDomainDataModule` (``folder`` dataset, 2 workers,
   16 frames at 112x112 from 320x240 H.264 videos, default training augmentation, uint8 batches)
   against a bare PyAV loop decoding the *same* clips (same frame indices) in the same number of
   worker processes, measured side by side, rep after rep; the median of the per-rep ratios is
   reported (goal >= 0.85). The bare loop is an efficient one (seek, decode, one reusable
   swscale context); a naive loop (``frame.to_ndarray`` per frame) is timed too, for reference.
2. Seeking: a random 16-frame clip from the middle of a 10-second video against decoding a whole
   16-frame video (goal <= 2x), per available decoder.

The videos are generated (``write_video``) into ``--work`` (a temporary folder by default).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Optional, Sequence

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter
from torch.utils.data import DataLoader, Dataset

from vidlit.data import synthetic
from vidlit.data.video_io import write_video

GOAL_RATIO, GOAL_SEEK = 0.85, 2.0


def make_video(path: str, frames: int, seed: int, fps: int = 25, gop: int = 16, height: int = 240, width: int = 320) -> None:
    """A moving textured object with sensor noise (so the bitrate is camera-like), H.264."""
    rng = np.random.default_rng(seed)
    small = synthetic.render_video("texture", "circle", rng, frames, 80)  # circles never leave the frame
    big = np.repeat(np.repeat(small, 4, axis=1), 4, axis=2)[:, :height, :width].astype(np.int16)
    big += rng.normal(0, 1.5, big.shape).astype(np.int16)
    # keyframes exactly every `gop` frames: no extra ones at x264's scene cuts
    write_video(path, np.clip(big, 0, 255).astype(np.uint8), fps=fps, gop=gop, options={"x264-params": f"scenecut=0:keyint={gop}:min-keyint={gop}"})


def make_dataset(root: str, per_class: int, frames: int, gop: int) -> str:
    """root/<domain>/<class>/<video>.mp4: source domains d0, d1 (2 classes each) and target d2."""
    done = os.path.join(root, ".done")
    if os.path.isfile(done):
        return root
    n = 0
    for d, count in (("d0", per_class), ("d1", per_class), ("d2", 1)):
        for c in ("c0", "c1"):
            for v in range(count):
                make_video(os.path.join(root, d, c, f"{d}_{c}_{v:02d}.mp4"), frames, seed=n, gop=gop)
                n += 1
    open(done, "w").close()
    return root


# ----------------------------------------------------------------------------- bare PyAV loop
def bare_decode(path: str, indices: Sequence[int], naive: bool = False) -> np.ndarray:
    """The clip's frames (T, H, W, 3) uint8: seek to the keyframe before the first, decode to the last."""
    wanted = sorted(set(indices))
    got = {}
    with av.open(path) as container:
        stream = container.streams.video[0]
        if not naive:  # one FFmpeg thread per worker, as the DataModule's workers use
            stream.codec_context.thread_count = 1
        rate, tb = stream.average_rate, stream.time_base
        container.seek(int(wanted[0] / rate / tb), stream=stream, backward=True)
        rgb = VideoReformatter()
        for frame in container.decode(stream):
            idx = int(round(float(frame.pts * tb * rate)))
            if idx > wanted[-1]:
                break
            if idx in wanted:
                got[idx] = frame.to_ndarray(format="rgb24") if naive else rgb.reformat(frame, format="rgb24").to_ndarray()
    return np.stack([got[i] for i in indices])


class BareClips(Dataset):
    """Item ``i``: the clip ``items[i]`` as a (T, H, W, 3) uint8 tensor."""

    def __init__(self, items: list[tuple[str, list[int]]], naive: bool) -> None:
        self.items, self.naive = items, naive

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> torch.Tensor:
        path, idx = self.items[i]
        return torch.from_numpy(bare_decode(path, idx, self.naive))


class EpochBatches:
    """Batches of epoch ``epoch`` (set from the main process, as a persistent loader allows)."""

    def __init__(self, batches: dict[int, list[list[int]]]) -> None:
        self.batches, self.epoch = batches, 0

    def __len__(self) -> int:
        return len(self.batches[self.epoch])

    def __iter__(self):
        return iter(self.batches[self.epoch])


# ----------------------------------------------------------------------------- part 1
def _cpu_seconds(loader: DataLoader) -> float:
    """CPU time (user + system) used so far by this process and the loader's persistent workers."""
    t = os.times()
    total = t.user + t.system
    it = getattr(loader, "_iterator", None)
    for w in getattr(it, "_workers", []) if it is not None else []:
        try:
            with open(f"/proc/{w.pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            pass
    return total


def _drain(loader: DataLoader) -> tuple[int, float, float]:
    """(clips, wall seconds, CPU seconds of this process and the workers) for one pass."""
    c0, t0, n = _cpu_seconds(loader), time.perf_counter(), 0
    for batch in loader:
        n += len(batch["video"] if isinstance(batch, dict) else batch)
    return n, time.perf_counter() - t0, _cpu_seconds(loader) - c0


def throughput(root: str, reps: int, workers: int, batch_size: int, decoder: str, epochs_per_rep: int = 1) -> dict:
    from datamodules.folder import FolderDataModule

    dm = FolderDataModule(
        root=root, target_domains=["d2"], num_frames=16, size=112, batch_size=batch_size,
        num_workers=workers, holdout_fraction=0.0, decoder=decoder, eval_target_each_epoch=False,
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    sampler, ds = loader.batch_sampler, dm.train_set

    # the (path, frame indices) the DataModule decodes, batch by batch, in each sampler epoch
    items, batches = [], {}
    for epoch in range((reps + 1) * epochs_per_rep):
        sampler.set_epoch(epoch)
        batches[epoch] = []
        for batch in sampler:
            batches[epoch].append(list(range(len(items), len(items) + len(batch))))
            items += [(ds.records[i].path, ds._indices(i, ds._rng(e, i), [0.5])[0].tolist()) for i, e in batch]

    def drain(name: str, dl: DataLoader, rep: int) -> tuple[int, float, float]:
        n = t = c = 0
        for epoch in range(rep * epochs_per_rep, (rep + 1) * epochs_per_rep):
            if name == "dm":
                sampler.set_epoch(epoch)
            else:
                orders[name].epoch = epoch
            dn, dt, dc = _drain(dl)
            n, t, c = n + dn, t + dt, c + dc
        return n, t, c

    def bare_loader(naive: bool) -> tuple[DataLoader, EpochBatches]:
        order = EpochBatches(batches)
        dl = DataLoader(BareClips(items, naive), batch_sampler=order, num_workers=workers, persistent_workers=workers > 0,
                        prefetch_factor=4 if workers > 0 else None)
        return dl, order

    (bare, bare_order), (naive, naive_order) = bare_loader(False), bare_loader(True)
    orders = {"bare": bare_order, "naive": naive_order}
    loaders = (("dm", loader), ("bare", bare), ("naive", naive))
    for name, dl in loaders:  # warm-up (rep 0): start the persistent workers, fill the page cache
        drain(name, dl, 0)
    rows = []
    for rep in range(1, reps + 1):
        # alternate the order, so that a drift in the machine's load favours no loader
        timed = {name: drain(name, dl, rep) for name, dl in loaders[:: 1 if rep % 2 else -1]}
        row = {name: n / t for name, (n, t, _) in timed.items()}
        row.update({f"{name}_cpu_ms_per_clip": 1000 * c / n for name, (n, _, c) in timed.items()})
        row["ratio"] = row["dm"] / row["bare"]
        row["cpu_ratio"] = row["bare_cpu_ms_per_clip"] / row["dm_cpu_ms_per_clip"]
        rows.append(row)
        print(f"  rep {rep}: datamodule {row['dm']:.1f} clips/s, bare PyAV {row['bare']:.1f}, naive PyAV {row['naive']:.1f}, "
              f"ratio {row['ratio']:.3f}; CPU ms/clip {row['dm_cpu_ms_per_clip']:.1f} vs bare {row['bare_cpu_ms_per_clip']:.1f}", flush=True)
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    return {"decoder": dm.decoder().backend, "clips_per_rep": timed["dm"][0], "reps": rows, "median": med}


# ----------------------------------------------------------------------------- part 2
def _median_ms(fn, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def seeking(work: str, n: int, gop: int) -> dict:
    from vidlit.data.decoders import decode_torchcodec, torchcodec_unavailable
    from vidlit.data.video_io import decode_frames

    long_path, short_path = os.path.join(work, f"long10s_gop{gop}.mp4"), os.path.join(work, f"short16_gop{gop}.mp4")
    if not os.path.isfile(long_path):
        make_video(long_path, 250, seed=100, gop=gop)
        make_video(short_path, 16, seed=101, gop=gop)
    decoders = {"pyav": decode_frames}
    if torchcodec_unavailable() is None:
        decoders["torchcodec"] = decode_torchcodec
    rng = np.random.default_rng(0)
    starts = rng.integers(75, 175 - 16, size=n)  # the middle of the 250 frames
    out = {}
    for name, fn in decoders.items():
        fn(short_path, list(range(16)))  # warm-up
        it = iter(starts.tolist())
        clip = _median_ms(lambda: fn(long_path, list(range((s := next(it)), s + 16))), n)
        whole = _median_ms(lambda: fn(short_path, list(range(16))), n)
        full = _median_ms(lambda: fn(long_path, list(range(250))), max(3, n // 10))
        out[name] = {"clip_from_10s_ms": clip, "whole_16_frame_video_ms": whole, "ratio": clip / whole, "whole_10s_video_ms": full}
        print(f"  {name}: 16-frame clip from the middle of a 10 s video {clip:.1f} ms, whole 16-frame video "
              f"{whole:.1f} ms, ratio {clip / whole:.2f} (whole 10 s video: {full:.0f} ms)", flush=True)
    return out


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.loader", description=__doc__.split("\n\n")[0])
    p.add_argument("--work", help="folder for the generated videos (default: a temporary folder)")
    p.add_argument("--reps", type=int, default=7, help="side-by-side repetitions of part 1")
    p.add_argument("--epochs_per_rep", type=int, default=3, help="sampler epochs each loader runs per rep")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--videos_per_class", type=int, default=8, help="per source domain and class (2 x 2 of them)")
    p.add_argument("--seconds", type=float, default=4.0, help="length of the part 1 videos (25 fps)")
    p.add_argument("--gop", type=int, default=16, help="keyframe interval of the generated videos")
    p.add_argument("--decoder", default="pyav", help="DataModule decoder for part 1 (auto|pyav|torchcodec)")
    p.add_argument("--seek_reps", type=int, default=30)
    p.add_argument("--parts", default="1,2", help="which parts to run")
    p.add_argument("--json", help="write the numbers here")
    args = p.parse_args(argv)
    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="vidlit-bench-")
    work = args.work or tmp.name
    parts = {int(x) for x in args.parts.split(",")}
    part1, part2, kbps = None, None, None
    try:
        if 1 in parts:
            part1, kbps = _part1(args, work)
        if 2 in parts:
            print("2. random 16-frame clip from the middle of a 10 s video vs a whole 16-frame video", flush=True)
            part2 = seeking(work, args.seek_reps, args.gop)
            for name, r in part2.items():
                print(f"   {name}: ratio {r['ratio']:.2f} (goal <= {GOAL_SEEK}: {'met' if r['ratio'] <= GOAL_SEEK else 'MISSED'})")
        result = {
            "args": vars(args), "cpu_count": os.cpu_count(), "video_kbit_per_s": kbps, "torch": torch.__version__,
            "av": av.__version__, "throughput": part1, "seeking": part2,
        }
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(result, fh, indent=1)
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


def _part1(args: argparse.Namespace, work: str) -> tuple[dict, float]:
    frames = int(args.seconds * 25)
    root = make_dataset(os.path.join(work, f"root_{frames}f_gop{args.gop}"), args.videos_per_class, frames, args.gop)
    sizes = [os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs if f.endswith(".mp4")]
    kbps = float(8 * np.mean(sizes) / args.seconds / 1000)
    print(f"1. loader throughput ({args.workers} workers, 16x112x112 clips (stride 2) from 320x240 H.264 at "
          f"{kbps:.0f} kbit/s, keyframe every {args.gop} frames, {args.reps} reps)", flush=True)
    part1 = throughput(root, args.reps, args.workers, args.batch_size, args.decoder, args.epochs_per_rep)
    ratio = part1["median"]["ratio"]
    med = part1["median"]
    print(f"   median ({part1['decoder']} decoder): datamodule {med['dm']:.1f} clips/s, bare PyAV {med['bare']:.1f}, "
          f"ratio {ratio:.3f} (goal >= {GOAL_RATIO}: {'met' if ratio >= GOAL_RATIO else 'MISSED'}); CPU ms/clip "
          f"{med['dm_cpu_ms_per_clip']:.1f} vs {med['bare_cpu_ms_per_clip']:.1f}, bare/datamodule {med['cpu_ratio']:.3f}")
    return part1, kbps


if __name__ == "__main__":
    sys.exit(main())
