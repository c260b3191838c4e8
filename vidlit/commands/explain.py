"""``python -m vidlit explain --ckpt_path CKPT [--clips N] [--data.KEY VALUE ...] [VIDEO ...]``:
where a trained model looks, over space and time (Grad-CAM, :mod:`vidlit.saliency`).

Without videos: up to ``--clips`` clips of each target domain of the checkpoint's run (its data
settings, ``--data.*`` and ``--dataset`` override them), taken as ``test`` takes them (one view).
With videos: those files, one evaluation clip each (true label unknown). Written into
``RUN/eval/explain-<time>/`` (``RUN``: the checkpoint's run folder) or ``--out``, per clip:

* ``<clip>.mp4``: the clip with the heat map overlaid, true and predicted labels burnt in below;
* ``<clip>-strip.png``: the frames, the heat map and the overlay as three rows of a strip, the
  labels in the title;
* ``<clip>-curve.png``: the per-frame importance (share of the clip's saliency mass per frame);

and for every clip ``explain.json`` (labels, probability, stage, per-frame importance, foreground
share when the data has object masks) and ``importance.csv`` (clip, frame, importance).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
import time
from typing import Any, Optional, Sequence

import numpy as np
import torch

from vidlit.inference.render import (
    _captioned,
    _enlarge,
    overlay,
    write_curve,
    write_strip,
)
from vidlit.utils.errors import VidlitError


def _parse(argv: Sequence[str]) -> tuple[argparse.Namespace, dict[str, Any]]:
    import yaml

    p = argparse.ArgumentParser(prog="python -m vidlit explain", usage="python -m vidlit explain --ckpt_path CKPT [options] [--data.KEY VALUE ...] [VIDEO ...]",
                                description="Grad-CAM over space and time of a checkpoint: the run's target-domain clips "
                                            "(--data.* overrides its data settings), or the VIDEO files given.",
                                epilog="--data.KEY VALUE: any data option of the run's dataset format, e.g. --data.target_domains "
                                       "'[shaky]', --data.root DIR, --data.size N, --data.num_frames N, --data.frame_stride N "
                                       "(python -m vidlit fit --help lists them).")
    p.add_argument("--ckpt_path", required=True, help="a vidlit checkpoint, e.g. RUN/checkpoints/best-epoch=008.ckpt")
    p.add_argument("--out", help="output folder (default: RUN/eval/explain-<time>)")
    p.add_argument("--trainer.default_root_dir", dest="root_dir", metavar="OUT",
                   help="fit's name for --out, the same setting (both given: the same value)")
    p.add_argument("--seed_everything", type=int, metavar="SEED",
                   help="accepted as fit takes it (torch's seed); explain draws nothing at random: the clips are the "
                        "classes in turn and Grad-CAM is deterministic")
    p.add_argument("--clips", type=int, default=4, help="clips per target domain (the classes in turn); default 4")
    p.add_argument("--stage", help="backbone stage to attach to (default: the last with positions left)")
    p.add_argument("--target", choices=("predicted", "true"), default="predicted", help="class whose evidence is shown")
    p.add_argument("--dataset", help="dataset format (default: the run's)")
    p.add_argument("--fps", type=int, default=4, help="frame rate of the mp4 files")
    p.add_argument("--min_size", type=int, default=192, help="frames are enlarged to at least this many pixels")
    p.add_argument("--batch_size", type=int, default=4, help="clips per Grad-CAM pass")
    args, rest = p.parse_known_args(list(argv))
    from vidlit.commands.main import merge_aliases

    merge_aliases(args, "explain", ("out", "--out", "root_dir", "--trainer.default_root_dir"))
    args.videos = []
    data: dict[str, Any] = {}
    i = 0
    while i < len(rest):
        a = rest[i]
        m = re.fullmatch(r"--data\.(\w+)(?:=(.*))?", a)
        if not m:
            if a.startswith("-"):
                raise VidlitError(f"explain: unknown option {a}; every option: python -m vidlit explain --help")
            args.videos.append(a)
            i += 1
            continue
        if m.group(2) is None:
            if i + 1 >= len(rest):
                raise VidlitError(f"explain: {a} needs a value")
            value, i = rest[i + 1], i + 2
        else:
            value, i = m.group(2), i + 1
        data[m.group(1)] = yaml.safe_load(value)
    if args.clips < 1:
        raise VidlitError("explain: --clips must be >= 1")
    return args, data


def _datamodule(ckpt: str, trained: Any, dataset: Optional[str], overrides: dict[str, Any]) -> Any:
    """The checkpoint run's DataModule (its settings, then ``overrides``), indexed."""
    from vidlit.data.datamodule import DATAMODULES
    from vidlit.run.checkpoint import LINKED
    from vidlit.utils.registry import init_arg_names
    from vidlit.run.checkpoint import checkpoint_settings

    settings, _ = checkpoint_settings(ckpt)
    name = str(dataset or settings.get("dataset") or "folder").lower()
    cls = DATAMODULES.get(name)
    ok = init_arg_names(cls) - LINKED["data"]
    values = {k: v for k, v in (settings.get("data") or {}).items() if k in ok}
    if dataset and str(settings.get("dataset") or "").lower() != name:
        values = {k: v for k, v in values.items() if k not in ("root", "source_domains", "target_domains", "classes")}
    unknown = sorted(set(overrides) - ok)
    if unknown:
        raise VidlitError(f"explain: --data.{unknown[0]} is not an option of --dataset {name}; its options: python -m vidlit fit --dataset {name} --help")
    values.update(overrides)
    values.update(backbone=trained.backbone, num_workers=0, test_views="1x1")
    dm = cls(**values)
    dm.prepare_index()
    return dm


def _file_dataset(videos: Sequence[str], trained: Any) -> Any:
    from vidlit.data.clips import ClipDataset, ClipTransform
    from vidlit.data.records import VideoRecord
    from vidlit.data.video_io import probe_video

    records = []
    for path in videos:
        if not os.path.isfile(path):
            raise VidlitError(f"explain: no video file '{path}'")
        records.append(VideoRecord(path=path, label=trained.class_names[0], domain="videos").with_frames(probe_video(path).num_frames))
    return ClipDataset(records, trained.class_names, ["videos"], trained.num_frames, trained.frame_stride,
                       ClipTransform(trained.size, train=False), short=trained.short_video, num_clips=trained.num_clips)


def _safe(name: str) -> str:
    return re.sub(r"[^\w.=-]+", "_", name) or "clip"


def run(args: argparse.Namespace, data: dict[str, Any]) -> str:
    from vidlit.inference.gradcam import explain_clips, pick_per_domain
    from vidlit.inference.trained import load_trained
    from vidlit.run.rundir import checkpoint_run_dir

    if getattr(args, "seed_everything", None) is not None:
        torch.manual_seed(args.seed_everything)
    trained = load_trained(args.ckpt_path)
    model = trained.model
    if args.videos:
        if data or args.dataset:
            raise VidlitError("explain: pass either video files or --data.*/--dataset options, not both")
        dataset, known = _file_dataset(args.videos, trained), False
        picks = {0: list(range(len(dataset)))}
    else:
        dm = _datamodule(args.ckpt_path, trained, args.dataset, data)
        dataset, known = dm._dataset(dm.test_records, dm.target_domains, train=False), True
        if not len(dataset):
            raise VidlitError("explain: the target domains hold no videos")
        picks = pick_per_domain(dataset.domain_ids, dataset.labels, args.clips)
    out = args.out or os.path.join(checkpoint_run_dir(args.ckpt_path), "eval", f"explain-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as err:
        raise VidlitError(f"explain: cannot write the output folder '{out}' ({err.strerror or err}); choose another with --out") from None
    names = trained.class_names
    name = lambda c: names[c] if 0 <= c < len(names) else str(c)  # noqa: E731
    rows: list[dict[str, Any]] = []
    curve_rows: list[list[Any]] = []
    for d, idx in picks.items():
        items = [dataset[i] for i in idx]
        clips = torch.stack([it["video"] for it in items])
        target = torch.tensor([it["label"] for it in items]) if (args.target == "true" and known) else None
        sal = explain_clips(model, clips, args.batch_size, args.stage, target)
        probs = sal.logits.softmax(-1)
        importance = sal.frame_importance().numpy()
        shares = sal.foreground_share(torch.stack([it["mask"] for it in items])).tolist() if "mask" in items[0] else [None] * len(items)
        for j, (i, item) in enumerate(zip(idx, items)):
            rec = dataset.records[i]
            domain = str(dataset.domains[item["domain"]])
            pred = int(probs[j].argmax())
            true = name(int(item["label"])) if known else "?"
            stem = _safe(f"{domain}-{len([r for r in rows if r['domain'] == domain]):02d}-{os.path.splitext(os.path.basename(rec.path))[0]}")
            frames = item["video"].permute(1, 2, 3, 0).numpy()  # (T, H, W, 3)
            maps = sal.maps[j].numpy()
            share = shares[j]
            share = None if share is None or math.isnan(share) else round(float(share), 6)
            factor = max(1, math.ceil(args.min_size / min(frames.shape[1:3])))
            caption = [f"true: {true}", f"pred: {name(pred)} ({100 * float(probs[j, pred]):.0f}%)"]
            from vidlit.data.video_io import write_video

            write_video(os.path.join(out, stem + ".mp4"), _captioned(_enlarge(overlay(frames, maps), factor), caption), fps=args.fps)
            title = f"{os.path.basename(rec.path)} ({domain}): true {true} | pred {name(pred)} ({100 * float(probs[j, pred]):.0f}%)"
            if share is not None:
                title += f" | foreground share {100 * share:.0f}%"
            video_frames = [int(v) for v in np.asarray(dataset._indices(i, None, [0.5])[0])[: frames.shape[0]]]
            if len(video_frames) != frames.shape[0]:  # cannot happen for one view; never mislabel
                video_frames = None
            write_strip(os.path.join(out, stem + "-strip.png"), frames, maps, title, frame_index=video_frames)
            write_curve(os.path.join(out, stem + "-curve.png"), importance[j], title)
            rows.append({
                "clip": stem, "video": rec.path, "domain": domain, "true": true if known else None,
                "predicted": name(pred), "probability": round(float(probs[j, pred]), 6),
                "explained": name(int(sal.target[j])), "stage": sal.stage, "foreground_share": share,
                "frame_importance": [round(float(v), 6) for v in importance[j]],
                "video_frames": video_frames,
                "files": [stem + ".mp4", stem + "-strip.png", stem + "-curve.png"],
            })
            curve_rows += [[stem, f, round(float(v), 6)] for f, v in enumerate(importance[j])]
    per_domain: dict[str, Optional[float]] = {}
    for domain in dict.fromkeys(r["domain"] for r in rows):
        vals = [r["foreground_share"] for r in rows if r["domain"] == domain and r["foreground_share"] is not None]
        per_domain[domain] = round(sum(vals) / len(vals), 6) if vals else None
    summary = {"checkpoint": trained.checkpoint, "backbone": trained.backbone, "strategy": trained.strategy,
               "class_names": names, "foreground_share": per_domain if any(v is not None for v in per_domain.values()) else None,
               "clips": rows}
    with open(os.path.join(out, "explain.json"), "w") as fh:
        json.dump(summary, fh, indent=1)
    with open(os.path.join(out, "importance.csv"), "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["clip", "frame", "importance"])
        w.writerows(curve_rows)
    for r in rows:
        fg = "" if r["foreground_share"] is None else f"  foreground {100 * r['foreground_share']:.0f}%"
        print(f"{r['clip']}: true {r['true'] or '?'} | pred {r['predicted']} ({100 * r['probability']:.0f}%){fg}")
    if summary["foreground_share"]:
        print("foreground share per domain: " + ", ".join(f"{d} {100 * v:.1f}%" for d, v in per_domain.items() if v is not None))
    print(f"explain: {len(rows)} clip(s), Grad-CAM at {rows[0]['stage'] if rows else '-'}: {out}")
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, data = _parse(sys.argv[1:] if argv is None else argv)
    run(args, data)
    return 0
