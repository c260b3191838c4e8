"""``python -m vidlit adapt``: few-shot adaptation of a trained run to its target domain.

From a run's checkpoint (``--ckpt_path RUN/checkpoints/best-epoch=N.ckpt``, any strategy), K labelled
videos per class of each target domain (``--shots K``) are drawn with ``--seed``; the model (backbone
and head, as ``--model.pretrained CKPT --model.pretrained_head true``) is fine-tuned on them with
cross-entropy (ERM: a DG loss has one domain to work with here) for ``--steps`` optimizer steps,
and tested on the rest of the target. The run goes through ``python -m vidlit fit`` (a manifest
of the shots and the rest, written into the output folder), so the output folder is a run folder
with the usual ``results.json``, plus ``shots``, ``adapt`` and the original run's strategy and
source domains. ``--shots 0`` fine-tunes nothing: the checkpoint is tested on the whole target.

The shots are drawn by group, the key of the holdout split (UCF101's ``gXX``, EPIC's video id, a
manifest's ``group`` column; without one, the video): the K shots of a class come from K different
groups, and the other videos of a shot's group (clips cut from the same long video: same actor,
same scene) are left out of the test, so that no group is on both sides (:func:`choose_shots`;
``adapt.left_out_videos`` in ``results.json`` counts them). The segments of one video are never split.

There is no validation split (K videos per class leave none): the model of the last step is the
one tested (``best_checkpoint`` is that step's file). By default only the head trains (``--model.freeze
backbone``, a linear probe: on the embedded data it beat fine-tuning the whole network at K = 1 and 5,
docs/TRANSFER.md); ``--model.freeze none`` trains the backbone too, at ``--model.lr`` x
``--model.backbone_lr_mult`` (0.1 by default), with the BatchNorm statistics kept as trained
(``--model.freeze_bn true``: statistics of K clips per class hurt; ``--model.freeze_bn false`` to
update them, ``--tta.method adabn`` to replace them by the rest of the target's at test time); any
other ``fit`` flag given after the options (``--trainer.precision 32-true``, ``--model.freeze none``,
``--finetune.unfreeze_at_epoch``, ...) is passed on.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from typing import Optional, Sequence

import numpy as np

from vidlit.utils.errors import VidlitError

#: data settings of the run that describe clips (kept), not which videos or how they are split
_CLIP_KEYS = ("num_frames", "frame_stride", "size", "eval_batch_size", "num_workers", "crop_scale", "flip", "flip_label_map",
              "color_jitter", "short_video", "on_bad_video", "decoder", "num_clips", "test_views")
#: model settings of the run passed to the fine-tuning (ERM) model
_MODEL_KEYS = ("backbone", "lr", "optimizer", "betas", "weight_decay", "warmup_epochs", "label_smoothing", "dropout",
               "channels_last", "freeze_bn")


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="python -m vidlit adapt", description=__doc__.split("\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt_path", required=True, help="a run's checkpoint (RUN/checkpoints/best-epoch=N.ckpt)")
    p.add_argument("--shots", type=int, required=True, help="labelled videos per class of each target domain (0: none)")
    p.add_argument("--seed", type=int, default=None, help="which videos are the shots, and the fine-tuning's seed (default 0)")
    p.add_argument("--seed_everything", type=int, default=None, metavar="SEED",
                   help="fit's name for --seed, the same setting (both given: the same value)")
    p.add_argument("--steps", type=int, default=60, help="optimizer steps of the fine-tuning")
    p.add_argument("--batch_size", type=int, default=None, help="clips per step (default: the run's, at most the shots)")
    p.add_argument("--out", default=None, help="the run folder to write (default: RUN/adapt/shots=K/seed=S)")
    p.add_argument("--trainer.default_root_dir", dest="root_dir", default=None, metavar="OUT",
                   help="fit's name for --out, the same setting (both given: the same value)")
    args, rest = p.parse_known_args(list(argv))
    from vidlit.commands.main import merge_aliases

    merge_aliases(args, "adapt", ("seed", "--seed", "seed_everything", "--seed_everything"),
                  ("out", "--out", "root_dir", "--trainer.default_root_dir"))
    args.seed = 0 if args.seed is None else args.seed
    if args.shots < 0:
        raise VidlitError(f"--shots must be >= 0, got {args.shots}")
    if args.steps < 1:
        raise VidlitError(f"--steps must be >= 1, got {args.steps}")
    bad = [a for a in rest if a.startswith("--") and a.split("=", 1)[0].split(".")[0] not in
           ("--trainer", "--model", "--data", "--finetune", "--tta", "--average", "--bgmix", "--saliency", "--checkpoint", "--wandb")]
    if bad:
        raise VidlitError(f"adapt: unknown option {bad[0]}; adapt's options: python -m vidlit adapt --help "
                          "(other flags are fit's --trainer.*, --model.*, --data.*, ...)")
    return args, rest


def choose_shots(records: list, shots: int, seed: int) -> tuple[list, list]:
    """(shots, rest) of target records, drawn by group, the key of the holdout split
    (``VideoRecord.split_key``: the record's group, e.g. UCF101's ``gXX`` or EPIC's ``video_id``, else
    its video file, its own group).

    Per (domain, class), ``shots`` videos of the class, each from a different group, drawn with
    ``seed``: first the groups, among those holding a video of the class (a class draws among the
    groups already holding a shot of an earlier class of the domain, in class order, before new
    ones: fewer groups leave the test), then one video of the class in each. Every record of a drawn
    video with that class is a shot. No group is on both sides: the other records of a group that
    holds a shot (its other videos, its other classes) are neither shots nor tested; they are in
    neither list. So the shots are K videos per class (not whole groups, which would be more), and
    the test loses those videos. Without groups every video is its own group and the draw is by
    video. A class with no more groups than shots, or with no test video left, is an error."""
    by: dict[tuple[str, str], dict[str, set[str]]] = {}  # (domain, class) -> group -> videos of the class in it
    grouped = any(r.group for r in records)
    for r in records:
        by.setdefault((r.domain, r.label), {}).setdefault(r.split_key, set()).add(r.path)
    chosen: set[tuple[str, str, str]] = set()  # (domain, video, class)
    used: dict[str, set[str]] = {}  # domain -> groups holding a shot
    for (domain, label), groups in sorted(by.items()):
        keys = sorted(groups)
        if len(keys) <= shots:
            n_videos = len(set().union(*groups.values()))
            have = f"videos in only {len(keys)} group(s) ({n_videos} video(s))" if grouped else f"only {len(keys)} video(s)"
            raise VidlitError(f"--shots {shots}: target domain '{domain}' class '{label}' has {have}; the shots come from "
                              f"distinct {'groups' if grouped else 'videos'} and at least one more is needed for the test")
        rng = np.random.default_rng([seed, sum(map(ord, domain)), sum(map(ord, label))])
        again = [k for k in keys if k in used.get(domain, ())]
        if len(again) >= shots:
            drawn = [again[i] for i in rng.choice(len(again), shots, replace=False)]
        else:
            new = [k for k in keys if k not in again]
            drawn = again + [new[i] for i in rng.choice(len(new), shots - len(again), replace=False)]
        for key in drawn:
            videos = sorted(groups[key])
            chosen.add((domain, videos[int(rng.integers(len(videos)))] if len(videos) > 1 else videos[0], label))
        used.setdefault(domain, set()).update(drawn)
    picked = [r for r in records if (r.domain, r.path, r.label) in chosen]
    taken = {(r.domain, r.split_key) for r in picked}
    rest = [r for r in records if (r.domain, r.split_key) not in taken]
    for domain, label in sorted(by):
        if not any(r.domain == domain and r.label == label for r in rest):
            raise VidlitError(f"--shots {shots}: no test video of target domain '{domain}' class '{label}' is left: every group "
                              "holding one also holds a shot (a group is never on both sides); use fewer --shots")
    return picked, rest


def _write_manifest(path: str, rows: list[tuple]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "domain", "start_frame", "end_frame"])
        for rec, domain in rows:
            w.writerow([os.path.abspath(rec.path), rec.label, domain,
                        "" if rec.start_frame is None else rec.start_frame, "" if rec.end_frame is None else rec.end_frame])


def adapt(ckpt: str, shots: int, seed: int = 0, steps: int = 60, batch_size: Optional[int] = None,
          out: Optional[str] = None, extra: Sequence[str] = ()) -> dict:
    """Run the adaptation; returns the results dictionary written to ``OUT/results.json``."""
    import yaml

    from vidlit.commands.main import main as cli_main
    from vidlit.data.datamodule import DATAMODULES
    from vidlit.run.checkpoint import checkpoint_settings
    from vidlit.run.files import RESULTS_FILE
    from vidlit.run.results import write_results
    from vidlit.run.rundir import checkpoint_run_dir

    if not os.path.isfile(ckpt):
        raise VidlitError(f"--ckpt_path: no checkpoint file '{ckpt}'")
    found, source = checkpoint_settings(ckpt)
    strategy, dataset = found.get("strategy", "erm"), found.get("dataset", "folder")
    model_cfg, data_cfg = dict(found.get("model") or {}), dict(found.get("data") or {})
    run = checkpoint_run_dir(ckpt)
    out = out or os.path.join(run, "adapt", f"shots={shots}", f"seed={seed}")
    os.makedirs(out, exist_ok=True)
    dm_cls = DATAMODULES.get(dataset)
    dm = dm_cls(**{k: v for k, v in data_cfg.items() if k not in ("seed", "backbone")}, backbone=model_cfg.get("backbone", "tiny3d"))
    dm.prepare_index()
    targets, sources, classes = list(dm.target_domains), list(dm.source_domains), list(dm.class_names)
    if shots == 0:
        return _zero_shot(ckpt, out, strategy, sources, seed, extra)
    picked, rest = choose_shots(dm.test_records, shots, seed)
    manifest = os.path.join(out, "adapt_manifest.csv")
    shot_domains = [f"{d}-shots" for d in targets]
    _write_manifest(manifest, [(r, f"{r.domain}-shots") for r in picked] + [(r, r.domain) for r in rest])
    data = {k: data_cfg[k] for k in _CLIP_KEYS if data_cfg.get(k) is not None}
    n_train = len(picked)
    bs = max(1, min(batch_size or int(data_cfg.get("batch_size") or 30), n_train))
    per_epoch = math.ceil(n_train / bs)
    data.update(manifest=manifest, classes=classes, target_domains=targets, batch_size=bs, holdout_fraction=0.0,
                eval_target_each_epoch=False, source_domains=shot_domains)
    model = {k: model_cfg[k] for k in _MODEL_KEYS if model_cfg.get(k) is not None}
    # the head alone (a linear probe), BatchNorm statistics as trained: measured best at K = 1 and 5 (docs/TRANSFER.md)
    model.update(pretrained=os.path.abspath(ckpt), pretrained_head=True, freeze_bn=True, freeze="backbone")
    config = yaml.safe_dump({"model": model, "data": data}, default_flow_style=True, width=1 << 30).strip()
    argv = ["fit", "--strategy", "erm", "--dataset", "manifest", "--config", config, "--seed_everything", str(seed),
            "--trainer.default_root_dir", out, "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
            "--checkpoint.monitor", "null", "--checkpoint.save_last", "false",
            "--trainer.max_epochs", str(math.ceil(steps / per_epoch)), *extra]
    left_out = {(r.domain, r.path) for r in dm.test_records} - {(r.domain, r.path) for r in picked + rest}
    print(f"vidlit adapt: {strategy} run {run} ({source}): {shots} video(s) per class of {', '.join(targets)} "
          f"({n_train} clips) for {steps} steps, testing on the other {len(rest)}"
          + (f" ({len(left_out)} video(s) left out: they share a group with a shot)" if left_out else ""), file=sys.stderr, flush=True)
    code = cli_main(argv)
    if code:
        raise VidlitError(f"adapt: the fine-tuning run failed (exit status {code}); its output is above, its folder {out}")
    with open(os.path.join(out, RESULTS_FILE)) as fh:
        results = json.load(fh)
    results.update(
        kind="adapt", strategy=strategy, source_domains=sources, shots=shots,
        adapt={"checkpoint": os.path.abspath(ckpt), "run": os.path.abspath(run), "seed": seed,
               "steps": math.ceil(steps / per_epoch) * per_epoch, "batch_size": bs, "finetune_loss": "erm",
               "train_videos": len({(r.domain, r.path) for r in picked}), "test_videos": len({(r.domain, r.path) for r in rest}),
               "left_out_videos": len(left_out),
               "shot_videos": sorted(os.path.abspath(r.path) for r in picked), "selection": "last step"},
    )
    write_results(out, results)
    return results


def _zero_shot(ckpt: str, out: str, strategy: str, sources: list, seed: int, extra: Sequence[str]) -> dict:
    """``--shots 0``: ``test --ckpt_path CKPT`` on the whole target, written as a ``results.json``."""
    from vidlit.commands.main import main as cli_main
    from vidlit.run.results import write_results

    code = cli_main(["test", "--ckpt_path", ckpt, "--trainer.default_root_dir", out, *extra])
    if code:
        raise VidlitError(f"adapt --shots 0: the test failed (exit status {code}); its output is above")
    with open(os.path.join(out, "test_results.json")) as fh:
        test = json.load(fh)
    results = {
        "kind": "adapt", "strategy": strategy, "backbone": test.get("backbone"), "dataset": test.get("dataset"), "seed": seed,
        "run_dir": test.get("run_dir"), "source_domains": sources, "target_domains": test.get("target_domains"),
        "class_names": test.get("class_names"), "val_acc": None, "val_loss": None, "val_acc_per_domain": {},
        "test_acc": test.get("test_acc"), "test_acc_per_domain": test.get("test_acc_per_domain"),
        "best_epoch": None, "best_checkpoint": os.path.abspath(ckpt), "oracle_test_acc": None, "oracle_epoch": None,
        "epochs_run": 0, "wall_time_s": test.get("wall_time_s"), "history": [], "shots": 0,
        "adapt": {"checkpoint": os.path.abspath(ckpt), "seed": seed, "steps": 0, "train_videos": 0,
                  "test_videos": None, "selection": "the checkpoint itself"},
    }
    write_results(out, results)
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, rest = parse_args(sys.argv[1:] if argv is None else argv)
    res = adapt(args.ckpt_path, args.shots, args.seed, args.steps, args.batch_size, args.out, rest)
    acc = res.get("test_acc")
    print(f"adapt: shots {args.shots}, test accuracy on the rest of the target "
          f"{'-' if acc is None else f'{100 * acc:.1f}%'}: {os.path.join(res['run_dir'], 'results.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
