"""Inference speed, video files to predictions: ``python -m vidlit bench infer [--reps 3]``.

For each backbone (default: ``tiny3d``, the default backbone, at its preset 8x64x64, and the
torchvision ``r3d_18`` at its preset 16x112x112; ``--r3d_size``/``--r3d_frames`` reduce it),
the same mp4 files (the embedded generator's videos, written into a temporary folder) go through
the whole path a deployment runs: one evaluation clip per video decoded with the project's decoder
(PyAV, seeking: :func:`vidlit.inference.trained.video_clip`, what ``test``/``predict`` take), batched, the
model, the predicted class. Variants, measured alternately rep after rep (the order reversed every
other rep): the eager network (the strategy's normalisation + backbone + head, ``torch.no_grad``),
the TorchScript export (``python -m vidlit export``'s file) and, when onnxruntime is installed, the
ONNX export on onnxruntime's CPU provider, all fp32; and eager and TorchScript under bf16 autocast
where the device supports bf16 natively (:mod:`vidlit.precision`: CUDA, or a CPU with AVX-512 BF16
or AMX; ``--bf16 always`` measures it anyway, ``never`` skips it). Weights are random: speed does
not depend on them. Reported: end-to-end clips/s per variant, the share of the time spent
decoding (and cropping), and the median per-rep ratios (``RATIO`` lines).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from typing import Callable, Optional, Sequence

import torch

from benchmarks._common import alternate, machine_line, median, ratio_line

#: backbone -> (frames, size, frame_stride, clips per batch); the presets of `python -m vidlit list`
CASES = {"tiny3d": (8, 64, 2, 8), "r3d_18": (16, 112, 2, 4)}


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="vidlit bench infer", description=__doc__.split("\n\n")[0])
    p.add_argument("--backbones", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--videos", type=int, default=24, help="video files per backbone (each pass goes over all of them)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--batch", type=int, default=None, help="clips per model call (default: per backbone)")
    p.add_argument("--r3d_size", type=int, default=None, help="r3d_18 crop size (default: its preset, 112)")
    p.add_argument("--r3d_frames", type=int, default=None, help="r3d_18 frames per clip (default: its preset, 16)")
    p.add_argument("--threads", type=int, default=None, help="torch (and onnxruntime) CPU threads (default: torch's)")
    p.add_argument("--bf16", default="auto", choices=["auto", "always", "never"],
                   help="bf16 variants: where the device supports bf16 natively (auto), always, never")
    p.add_argument("--no-onnx", action="store_true", help="leave out the ONNX variant")
    p.add_argument("--quick", action="store_true", help="tiny smoke run (tiny3d at 4x32x32, 4 videos, 1 rep)")
    a = p.parse_args(argv)
    if a.quick:
        a.backbones, a.videos, a.reps, a.batch = ["tiny3d"], 4, 1, 2
    return a


def make_videos(folder: str, n: int, size: int, frames: int) -> list[str]:
    """``n`` H.264 mp4 files of ``frames`` frames of the embedded generator's videos (its domains
    and classes in turn)."""
    import numpy as np

    from vidlit.data.synthetic import CLASSES, DOMAINS, render_video
    from vidlit.data.video_io import write_video

    paths = []
    for i in range(n):
        domain, cls = DOMAINS[i % len(DOMAINS)], CLASSES[(i // len(DOMAINS)) % len(CLASSES)]
        path = os.path.join(folder, f"{i:03d}_{domain}_{cls}.mp4")
        clip = render_video(domain, cls, np.random.default_rng([0, i]), 16, size)  # the generator's 16 frames
        while len(clip) < frames:  # longer videos: the motion played back and forth
            clip = np.concatenate([clip, clip[::-1]])
        write_video(path, np.ascontiguousarray(clip[:frames]))
        paths.append(path)
    return paths


def bf16_wanted(mode: str, device: torch.device) -> tuple[bool, str]:
    from vidlit.utils.precision import detect

    choice = detect(use_cuda=device.type == "cuda")
    if mode == "never":
        return False, f"bf16 not measured (--bf16 never); this machine's default: {choice.line('')}"
    if mode == "always":
        return True, f"bf16 measured (--bf16 always); this machine's default: {choice.line('')}"
    return choice.precision == "bf16-mixed", f"detected: {choice.line('')}"


def build_variants(trained, folder: str, device: torch.device, bf16: bool, onnx: bool) -> dict[str, Callable]:
    """name -> function(uint8 clips (B, C, T, H, W) on the CPU) -> predicted class indices."""
    from vidlit.inference.trained import ClipClassifier
    from vidlit.commands.export import export, load_exported, onnx_unavailable

    variants: dict[str, Callable] = {}
    out = os.path.join(folder, "export")
    ts_path = export("", "torchscript", out, check=False, trained=trained)["path"]  # exported on the CPU
    onnx_path = None
    if onnx and device.type == "cpu" and onnx_unavailable() is None:
        onnx_path = export("", "onnx", out, check=False, trained=trained)["path"]
    elif onnx and device.type == "cpu":
        print(f"# onnx: not measured ({onnx_unavailable()})")
    net = ClipClassifier.from_strategy(trained.model).to(device)

    def eager(clips: torch.Tensor, autocast: bool = False) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            return net(clips.to(device)).float().argmax(1).cpu()

    variants["eager fp32"] = eager
    with warnings_off():
        module = torch.jit.load(ts_path, map_location=device)

    def script(clips: torch.Tensor, autocast: bool = False) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            return module(clips.to(device)).float().argmax(1).cpu()

    variants["torchscript fp32"] = script
    if onnx_path is not None:
        run = load_exported(onnx_path)
        variants["onnx fp32"] = lambda clips: run(clips).argmax(1)
    if bf16:
        variants["eager bf16"] = lambda clips: eager(clips, autocast=True)
        variants["torchscript bf16"] = lambda clips: script(clips, autocast=True)
    return variants


@contextlib.contextmanager
def warnings_off():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


def one_pass(predict: Callable, videos: list[str], trained, batch: int, device: torch.device) -> dict[str, float]:
    """Every video once, file to predicted class: seconds in total and decoding (+ crop)."""
    from vidlit.inference.trained import video_clip

    decode_s = total = 0.0
    t0 = time.perf_counter()
    for i in range(0, len(videos), batch):
        t = time.perf_counter()
        clips = torch.stack([video_clip(v, trained.num_frames, trained.frame_stride, trained.size) for v in videos[i : i + batch]])
        decode_s += time.perf_counter() - t
        predict(clips)
        if device.type == "cuda":
            torch.cuda.synchronize()
    total = time.perf_counter() - t0
    return {"total_s": total, "decode_s": decode_s, "clips_per_s": len(videos) / total}


def trained_for(backbone: str, frames: int, size: int, stride: int, num_classes: int = 5):
    """A randomly initialised erm network as :func:`vidlit.inference.trained.load_trained` returns a checkpoint's."""
    from vidlit.models.backbones import BACKBONES, NORM_PRESETS
    from vidlit.inference.trained import Trained
    from vidlit.models.strategy import STRATEGIES

    torch.manual_seed(0)
    model = STRATEGIES.get("erm")(num_classes=num_classes, num_domains=3, backbone=backbone).eval()
    mean, std = NORM_PRESETS[BACKBONES.get(backbone).norm]
    return Trained(model=model, strategy="erm", backbone=backbone, class_names=[f"c{i}" for i in range(num_classes)],
                   num_frames=frames, frame_stride=stride, num_clips=1, size=size, short_video="loop",
                   mean=list(mean), std=list(std), checkpoint="(random weights)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    print(machine_line())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16, why = bf16_wanted(a.bf16, device)
    print(f"# infer: device {device.type}; {why}")
    for backbone in a.backbones:
        frames, size, stride, batch = CASES[backbone]
        if a.quick:
            frames, size = 4, 32
        if backbone == "r3d_18":
            frames, size = a.r3d_frames or frames, a.r3d_size or size
        batch = a.batch or batch
        with tempfile.TemporaryDirectory(prefix="vidlit-bench-infer-") as tmp:
            # videos a little larger than the crop and long enough for the clip (decoding is measured too)
            videos = make_videos(tmp, a.videos, size=size + size // 4, frames=max(16, (frames - 1) * stride + 1))
            trained = trained_for(backbone, frames, size, stride)
            variants = build_variants(trained, tmp, device, bf16, onnx=not a.no_onnx)
            print(f"# infer: {backbone} {frames}x{size}x{size} (stride {stride}), {len(videos)} mp4 files of "
                  f"{size + size // 4}px, batch {batch}, {a.reps} reps; variants: {', '.join(variants)}", flush=True)
            for predict in variants.values():  # warm-up: first calls (TorchScript's profiling runs, allocation)
                for _ in range(2):
                    one_pass(predict, videos[:batch], trained, batch, device)
            runs: dict[str, list[dict]] = {k: [] for k in variants}
            for rep, flip in alternate(a.reps):
                order = list(variants)[::-1] if flip else list(variants)
                for name in order:
                    runs[name].append(one_pass(variants[name], videos, trained, batch, device))
                print(f"rep {rep}: " + "; ".join(
                    f"{n} {runs[n][-1]['clips_per_s']:.1f} clips/s (decoding {100 * runs[n][-1]['decode_s'] / runs[n][-1]['total_s']:.0f}%)"
                    for n in variants), flush=True)
            base = runs["eager fp32"]
            for name in variants:
                if name == "eager fp32":
                    continue
                ratios = [r["clips_per_s"] / b["clips_per_s"] for r, b in zip(runs[name], base)]
                print(ratio_line(f"infer {backbone} {name} / eager fp32 clips/s (video files to predictions)", ratios, unit="x"))
            if "torchscript bf16" in variants:
                ratios = [r["clips_per_s"] / b["clips_per_s"] for r, b in zip(runs["torchscript bf16"], runs["torchscript fp32"])]
                print(ratio_line(f"infer {backbone} torchscript bf16 / torchscript fp32 clips/s", ratios, unit="x"))
            for name in variants:
                shares = [r["decode_s"] / r["total_s"] for r in runs[name]]
                print(ratio_line(f"infer {backbone} {name} decoding share of the time", shares))
            print(f"# infer {backbone}: median clips/s " + ", ".join(
                f"{n} {median([r['clips_per_s'] for r in runs[n]]):.1f}" for n in variants), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
