"""``python -m vidlit export --ckpt_path CKPT [--format torchscript|onnx] [--out DIR]``: a trained
checkpoint as a self-contained model for deployment.

The exported model takes what the DataModule yields, a uint8 clip batch ``(B, C, T, H, W)`` (RGB,
0..255, ``T = num_clips x num_frames``, ``H = W = size``), converts it to float and normalises it
with the backbone's mean/std itself, and returns **logits** ``(B, num_classes)`` (softmax gives the
probabilities ``predict`` writes). The batch size is free; T, H and W are the ones it was trained
with. Written into ``RUN/export/`` (``RUN``: the checkpoint's run folder) or ``--out``:

* ``model.pt``: TorchScript (``torch.jit.trace`` of the network, then ``torch.jit.freeze``);
  load with ``torch.jit.load("model.pt")``, no vidlit needed;
* ``model.onnx``: ONNX (torch's dynamo exporter, ``torch.onnx.export(..., dynamo=True)``, every
  weight inside the one file; needs ``pip install -e ".[onnx]"``: onnx, onnxscript, and
  onnxruntime for the check); run with onnxruntime;
* ``model.json``: class names (index order of the logits), clip length (``num_frames``,
  ``frame_stride``, ``num_clips``), ``size``, mean/std, the input layout and dtype, and how a
  clip is taken from a video (:func:`video_clip` does it the same way as evaluation).

Weights are fp32. Precision is a run-time choice: on hardware with native bf16 (see
:mod:`vidlit.precision`) run the TorchScript model under ``torch.autocast(device, torch.bfloat16)``;
``python -m vidlit bench infer`` measures both. After writing, the file is loaded back and its
outputs are compared with the checkpoint's on random clips (``--check false`` skips this).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import warnings
from typing import Callable, Iterator, Optional, Sequence

import torch

from vidlit.inference.trained import (
    ClipClassifier,
    Trained,
    eager_logits,
    example_clips,
    load_trained,
)
from vidlit.utils.errors import MissingDependencyError, VidlitError
from vidlit.utils.io import atomic_path, write_json

FORMATS = {"torchscript": "model.pt", "onnx": "model.onnx"}
META_FILE = "model.json"
#: largest difference allowed between the exported model's logits and the checkpoint's (--check)
CHECK_ATOL = 1e-3


def metadata(trained: Trained) -> dict:
    """``model.json`` without its ``files`` entry (the same for every format)."""
    c, t, h, w = trained.clip_shape
    return {
        "input": {
            "name": "video", "layout": "BCTHW", "dtype": "uint8", "shape": ["batch", c, t, h, w], "channels": "RGB",
            "range": [0, 255], "normalisation": "inside the model: (x / 255 - mean) / std",
        },
        "output": {"name": "logits", "shape": ["batch", len(trained.class_names)],
                   "meaning": "class logits in class_names order; softmax gives the probabilities"},
        "class_names": trained.class_names,
        "num_frames": trained.num_frames,
        "frame_stride": trained.frame_stride,
        "num_clips": trained.num_clips,
        "clip_length": t,
        "size": trained.size,
        "mean": trained.mean,
        "std": trained.std,
        "clip_sampling": (f"{trained.num_clips} equal segment(s) of the video, from each {trained.num_frames} frames "
                          f"{trained.frame_stride} apart centred in it (videos too short: '{trained.short_video}'); "
                          f"short side resized to {trained.size}, centre {trained.size}x{trained.size} crop "
                          "(vidlit.inference.trained.video_clip)"),
        "short_video": trained.short_video,
        "weights_dtype": "float32",
        "precision": "fp32 weights; on CUDA or a CPU with AVX-512 BF16/AMX, torch.autocast(bfloat16) around the "
                     "TorchScript model is faster (python -m vidlit bench infer)",
        "strategy": trained.strategy,
        "backbone": trained.backbone,
        "checkpoint": trained.checkpoint,
        "torch": torch.__version__,
    }


@contextlib.contextmanager
def _quiet_torch() -> Iterator[None]:
    """torch.jit.*'s deprecation FutureWarnings and the tracer's warnings are not for the user."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


def export_torchscript(net: ClipClassifier, clips: torch.Tensor, path: str) -> None:
    with _quiet_torch(), torch.no_grad():
        traced = torch.jit.trace(net, clips, check_trace=False)
        frozen = torch.jit.freeze(traced.eval())
        torch.jit.save(frozen, path)


def onnx_unavailable(runtime: bool = True) -> Optional[str]:
    """Why ONNX export (and, with ``runtime``, running it) cannot work here, or None."""
    import importlib.util

    missing = [m for m in (("onnx", "onnxscript") + (("onnxruntime",) if runtime else ())) if importlib.util.find_spec(m) is None]
    return f"{', '.join(missing)} not installed (pip install -e \".[onnx]\" in the vidlit checkout)" if missing else None


def export_onnx(net: ClipClassifier, clips: torch.Tensor, path: str) -> None:
    why = onnx_unavailable(runtime=False)
    if why:
        raise MissingDependencyError(f"--format onnx: {why}")
    import io

    batch = torch.export.Dim("batch", min=1)
    # the dynamo exporter prints its progress on stdout: kept out of the user's output
    with _quiet_torch(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(net, (clips,), path, dynamo=True, external_data=False, input_names=["video"],
                          output_names=["logits"], dynamic_shapes=({0: batch},), verbose=False)
    for leftover in (path + ".data",):  # nothing beside the file: it is self-contained
        if os.path.exists(leftover):
            os.remove(leftover)


def load_exported(path: str, fmt: Optional[str] = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """An exported model (``model.pt``, ``model.onnx``, or ``model.json`` and a format: the one
    exported first when not given) as a function of uint8 clips ``(B, C, T, H, W)`` -> fp32 logits;
    ONNX runs on onnxruntime's CPU provider."""
    if path.endswith(".json"):
        with open(path) as fh:
            files = json.load(fh)["files"]
        path = os.path.join(os.path.dirname(path), files[fmt or next(iter(files))]["file"])
    if path.endswith(".onnx"):
        why = onnx_unavailable()
        if why:
            raise MissingDependencyError(f"running {path}: {why}")
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def run(clips: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run(None, {name: clips.cpu().numpy()})[0])

        return run
    with _quiet_torch():
        module = torch.jit.load(path, map_location="cpu")

    def run_ts(clips: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(clips).float()

    return run_ts


def export(ckpt: str, fmt: str = "torchscript", out: Optional[str] = None, check: bool = True,
           trained: Optional[Trained] = None, seed: int = 0) -> dict:
    """Write the exported model and ``model.json`` for ``ckpt``; returns the metadata plus
    ``path``, ``json`` and (``check``) ``max_abs_diff`` against the checkpoint's logits."""
    from vidlit.run.rundir import checkpoint_run_dir

    if fmt not in FORMATS:
        raise VidlitError(f"--format must be one of {', '.join(FORMATS)}, got '{fmt}'")
    if fmt == "onnx" and onnx_unavailable(runtime=False):
        raise MissingDependencyError(f"--format onnx: {onnx_unavailable(runtime=False)}")
    trained = trained or load_trained(ckpt)
    out = out or os.path.join(checkpoint_run_dir(ckpt), "export")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as err:
        raise VidlitError(f"--out: cannot create the folder '{out}' ({err.strerror or err}); choose a writable folder") from None
    path = os.path.join(out, FORMATS[fmt])
    net = ClipClassifier.from_strategy(trained.model)
    clips = example_clips(trained, batch=2, seed=seed)
    with atomic_path(path, suffix=os.path.splitext(path)[1]) as tmp:
        (export_torchscript if fmt == "torchscript" else export_onnx)(net, clips, tmp)
    entry: dict = {"file": os.path.basename(path)}
    if check and (fmt == "torchscript" or onnx_unavailable() is None):
        other = example_clips(trained, batch=3, seed=seed + 1)  # another batch size than the traced one
        got = load_exported(path)(other)
        want = eager_logits(trained, other)
        diff = float((got - want).abs().max())
        if not diff <= CHECK_ATOL:
            raise RuntimeError(f"exported {path}: logits differ from the checkpoint's by {diff:.2e} (> {CHECK_ATOL})")
        entry["check"] = {"max_abs_diff": diff, "clips": int(other.shape[0])}
    meta = metadata(trained)
    json_path = os.path.join(out, META_FILE)
    meta["files"] = {fmt: entry}
    try:  # the other format, exported before from the same checkpoint into this folder, stays listed
        with open(json_path) as fh:
            before = json.load(fh)
        if {k: v for k, v in before.items() if k != "files"} == json.loads(json.dumps({k: v for k, v in meta.items() if k != "files"})):
            meta["files"] = {**{k: v for k, v in before.get("files", {}).items() if k != fmt
                                and os.path.isfile(os.path.join(out, v.get("file", "")))}, fmt: entry}
    except (OSError, ValueError, AttributeError):
        pass
    write_json(json_path, meta)
    return {**meta, "format": fmt, "path": path, "json": json_path, **({"check": entry["check"]} if "check" in entry else {})}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, as every vidlit error
        raise VidlitError(f"export: {message} (options: python -m vidlit export --help)")


def _bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")
    return value in ("true", "1", "yes")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = _Parser(prog="python -m vidlit export",
                description="Write a vidlit checkpoint as a self-contained TorchScript or ONNX model (uint8 clips "
                            "(B, C, T, H, W) in, logits out; normalisation inside) and model.json (class names, clip "
                            "length, stride, size, mean/std).")
    p.add_argument("--ckpt_path", required=True, help="a checkpoint of `python -m vidlit fit` (RUN/checkpoints/*.ckpt)")
    p.add_argument("--format", default="torchscript", help=f"{' or '.join(FORMATS)} (default torchscript)")
    p.add_argument("--out", default=None, help="folder to write into (default: RUN/export, RUN the checkpoint's run folder)")
    p.add_argument("--trainer.default_root_dir", dest="root_dir", default=None, metavar="OUT",
                   help="fit's name for --out, the same setting (both given: the same value)")
    p.add_argument("--seed_everything", type=int, default=0, metavar="SEED",
                   help="seed of the random clips the model is traced and checked with (default 0)")
    p.add_argument("--check", type=_bool, default=True, help="load the file back and compare its logits with the checkpoint's (default true)")
    args = p.parse_args(list(argv))
    from vidlit.commands.main import merge_aliases

    merge_aliases(args, "export", ("out", "--out", "root_dir", "--trainer.default_root_dir"))
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    a = parse_args(sys.argv[1:] if argv is None else argv)
    fmt = str(a.format).lower()
    if fmt not in FORMATS:
        raise VidlitError(f"--format must be one of {', '.join(FORMATS)}, got '{a.format}'")
    result = export(a.ckpt_path, fmt, a.out, check=a.check, seed=a.seed_everything)
    c, t, h, w = (result["input"]["shape"])[1:]
    if "check" in result:
        checked = (f"; outputs match the checkpoint's (max |diff| {result['check']['max_abs_diff']:.1e} on "
                   f"{result['check']['clips']} random clips)")
    else:
        checked = "; not checked" + (f" ({onnx_unavailable()})" if a.check else "")
    print(f"export: {result['path']} ({fmt}, {result['strategy']}/{result['backbone']}, input uint8 (B, {c}, {t}, {h}, {w}), "
          f"{len(result['class_names'])} classes){checked}; settings: {result['json']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
