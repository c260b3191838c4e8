"""``python -m vidlit adapt``: K labelled videos per class of the target, chosen by group (or video) and seed;
fine-tuned from a run's checkpoint; tested on the rest; results.json with ``shots``."""
from __future__ import annotations

import csv
import json
import os

import pytest

from tests.helpers import TINY_FLAGS, run_vidlit
from vidlit.commands.adapt import choose_shots
from vidlit.data.records import VideoRecord
from vidlit.utils.errors import VidlitError


def records(n_videos: int = 4, segments: int = 2) -> list[VideoRecord]:
    return [VideoRecord(path=f"/d/{dom}/{c}/v{v}.mp4", label=c, domain=dom, start_frame=10 * s, end_frame=10 * s + 10)
            for dom in ("t1", "t2") for c in ("a", "b", "c") for v in range(n_videos) for s in range(segments)]


def test_shots_per_class_by_video_and_seed():
    recs = records()
    picked, rest = choose_shots(recs, 2, seed=0)
    vids = {(r.domain, r.path) for r in picked}
    assert len(vids) == 2 * 3 * 2  # 2 videos x 3 classes x 2 domains
    for dom in ("t1", "t2"):
        for c in ("a", "b", "c"):
            assert len({r.path for r in picked if r.domain == dom and r.label == c}) == 2
    assert len(picked) == 2 * len(vids)  # both segments of every chosen video
    assert not vids & {(r.domain, r.path) for r in rest} and len(picked) + len(rest) == len(recs)
    again, _ = choose_shots(list(reversed(recs)), 2, seed=0)  # order of the listing does not matter
    assert {(r.domain, r.path) for r in again} == vids
    draws = {frozenset((r.domain, r.path) for r in choose_shots(recs, 2, seed=s)[0]) for s in range(6)}
    assert len(draws) > 1  # the seed chooses
    with pytest.raises(VidlitError, match="only 4 video"):
        choose_shots(recs, 4, seed=0)  # none left to test on


def grouped(domain: str = "t", classes=("a", "b", "c"), groups=("g01", "g02", "g03", "g04"), per_group: int = 2) -> list[VideoRecord]:
    """UCF101-style: videos ``v_<class>_<group>_c<k>`` (clips of one long video per group and class, the group
    number shared by the classes as in UCF101's file names), two segments each."""
    return [VideoRecord(path=f"/d/{domain}/{c}/v_{c}_{g}_c{k}.avi", label=c, domain=domain, start_frame=10 * s,
                        end_frame=10 * s + 10, group=g)
            for c in classes for g in groups for k in range(1, per_group + 1) for s in range(2)]


def test_shots_are_drawn_by_group_and_no_group_is_on_both_sides():
    recs = grouped("u1") + grouped("u2", groups=("g01", "g02", "g03", "g04", "g05", "g06")) + records()  # records(): no groups
    for shots in (1, 2):
        for seed in range(4):
            picked, rest = choose_shots(recs, shots, seed)
            for dom in ("u1", "u2"):
                for c in ("a", "b", "c"):
                    assert len({r.path for r in picked if r.domain == dom and r.label == c}) == shots  # K videos per class ...
                    assert len({r.group for r in picked if r.domain == dom and r.label == c}) == shots  # ... from K groups
                    assert any(r.domain == dom and r.label == c for r in rest)
            shot_groups = {(r.domain, r.split_key) for r in picked}
            both = shot_groups & {(r.domain, r.split_key) for r in rest}
            assert not both, f"groups with a shot and test videos: {sorted(both)}"  # no group on both sides
            assert all(len([x for x in picked if x.path == r.path]) == 2 for r in picked)  # whole videos (both segments)
            # neither shot nor tested: exactly the other videos of the shots' groups (here at least the shot's sibling clip)
            left = [r for r in recs if r not in picked and r not in rest]
            assert {(r.domain, r.split_key) for r in left} <= shot_groups
            assert all(r.path.replace("_c1.", "_c2.") in {x.path for x in left} for r in picked if r.path.endswith("_c1.avi"))
            # without groups (records()): a video is its own group, nothing is left out
            assert {r.path for r in recs if r.group is None} == {r.path for r in picked + rest if r.group is None}
    with pytest.raises(VidlitError, match="only 4 group"):
        choose_shots(grouped("u1"), 4, seed=0)  # 8 videos of each class, but in 4 groups: none left to test on


def test_adapt_with_a_grouped_manifest_keeps_every_group_on_one_side(tiny_root, tmp_path):
    """``adapt`` from a run on a manifest with a group column (three groups of two videos per class, the group
    names shared by the classes, as UCF101's gXX): the shots' groups are not tested on."""
    manifest = tmp_path / "videos.csv"
    groups = {}
    with open(manifest, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "domain", "group"])
        for dom in ("clean", "texture"):
            for c in sorted(os.listdir(os.path.join(tiny_root, dom))):
                for i, f in enumerate(sorted(f for f in os.listdir(os.path.join(tiny_root, dom, c)) if f.endswith(".mp4"))):
                    path = os.path.join(tiny_root, dom, c, f)
                    groups[path] = f"g{i // 2}"
                    w.writerow([path, c, dom, groups[path]])
    run = str(tmp_path / "run")
    flags = list(TINY_FLAGS)
    flags[flags.index("--trainer.max_epochs") + 1] = "1"
    proc = run_vidlit("fit", "--dataset", "manifest", "--data.manifest", str(manifest), "--data.target_domains", "[texture]",
                      *flags, "--trainer.limit_train_batches", "1", "--data.eval_target_each_epoch", "false",
                      "--trainer.logger", "false", "--trainer.default_root_dir", run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "k1"
    proc = run_vidlit("adapt", "--ckpt_path", os.path.join(run, "checkpoints", "last.ckpt"), "--shots", "1", "--steps", "1",
                      "--out", str(out), "--trainer.logger", "false", "--trainer.enable_progress_bar", "false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "adapt_manifest.csv") as fh:
        rows = list(csv.DictReader(fh))
    shots = [r for r in rows if r["domain"] == "texture-shots"]
    tested = [r for r in rows if r["domain"] == "texture"]
    assert sorted(r["label"] for r in shots) == sorted(os.listdir(os.path.join(tiny_root, "texture")))  # 1 video per class
    both = {groups[r["path"]] for r in shots} & {groups[r["path"]] for r in tested}
    assert not both, f"groups with a shot and test videos: {sorted(both)}"  # no group on both sides
    a = json.loads((out / "results.json").read_text())["adapt"]
    assert a["train_videos"] == 5 and a["test_videos"] == len(tested) and a["test_videos"] + a["left_out_videos"] == 25
    assert a["left_out_videos"] >= 5  # at least the other video of each shot's group


def shot_predictions(ckpt: str, run: str, videos, out) -> dict[str, tuple[float, bool]]:
    """``python -m vidlit predict`` of ``ckpt`` on the listed videos of the tiny set: video -> (probability of
    its true class, whether it is the prediction); the true class is the folder the video is in."""
    proc = run_vidlit("predict", "--dataset", "files", "--data.root", str(videos), "--data.run", run, "--ckpt_path", ckpt,
                      "--trainer.default_root_dir", str(out), "--data.num_workers", "0", "--trainer.logger", "false",
                      "--trainer.enable_progress_bar", "false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(str(out), "predictions.csv")) as fh:
        rows = list(csv.DictReader(fh))
    found = {}
    for r in rows:
        true = os.path.basename(os.path.dirname(r["video"]))
        probs = {r[f"class_{j}"]: float(r[f"prob_{j}"]) for j in range(1, 6)}
        found[r["video"]] = (probs[true], r["predicted"] == true)
    return found


def test_adapt_on_a_tiny_run(tiny_root, tmp_path_factory, tmp_path):
    from tests.test_reproducible import reference_run

    run = reference_run(tiny_root, str(tmp_path_factory.getbasetemp()))
    ckpt = os.path.join(run, "checkpoints", "last.ckpt")
    out = tmp_path / "k1"
    # --steps: the default (60)
    proc = run_vidlit("adapt", "--ckpt_path", ckpt, "--shots", "1", "--seed", "1", "--out", str(out),
                      "--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--data.num_workers", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    ref = json.loads(open(os.path.join(run, "results.json")).read())
    assert res["shots"] == 1 and res["strategy"] == ref["strategy"] and res["source_domains"] == ref["source_domains"]
    assert res["target_domains"] == ["texture"] and set(res["test_acc_per_domain"]) == {"texture"}
    assert 0 <= res["test_acc"] <= 1 and res["class_names"] == ref["class_names"]
    a = res["adapt"]
    assert a["train_videos"] == 5 and a["test_videos"] == 25 and a["steps"] == 60 and a["batch_size"] == 5  # 5 classes x 6 videos
    assert a["left_out_videos"] == 0  # no groups here: every video is its own
    with open(out / "adapt_manifest.csv") as fh:
        rows = list(csv.DictReader(fh))
    shots = sorted(r["path"] for r in rows if r["domain"] == "texture-shots")
    assert shots == a["shot_videos"] and len({r["label"] for r in rows if r["domain"] == "texture-shots"}) == 5
    assert not set(shots) & {r["path"] for r in rows if r["domain"] == "texture"}
    # fine-tuned from the checkpoint: backbone and head loaded (pretrained_head), the shots' BatchNorm statistics not used
    cfg = (out / "config.yaml").read_text()
    assert "pretrained_head: true" in cfg and "freeze_bn: true" in cfg and os.path.abspath(ckpt) in cfg
    assert "freeze: backbone" in cfg  # the default: a linear probe
    import torch

    before = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    after = torch.load(res["best_checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
    backbone = [k for k in before if k.startswith("backbone.")]
    assert backbone and all(torch.equal(before[k], after[k]) for k in backbone)  # the backbone untouched, statistics too
    # the head learnt the shots' own classes: predicted (python -m vidlit predict) on the shot videos, their true class
    # (the folder each file is in, not the manifest adapt wrote) gets more probability on every shot after adapting
    # and is the prediction on all 5, which the checkpoint did not manage; wrong (permuted) shot labels, no training
    # (lr 0) or weight decay alone (it scales the logits: same predictions) fail this
    (tmp_path / "shots.txt").write_text("\n".join(shots) + "\n")
    was, now = shot_predictions(ckpt, run, tmp_path / "shots.txt", tmp_path / "p0"), \
        shot_predictions(res["best_checkpoint"], run, tmp_path / "shots.txt", tmp_path / "p1")
    assert sorted(was) == sorted(now) == shots
    assert sum(correct for _, correct in was.values()) < 5  # else this proves nothing
    assert all(correct for _, correct in now.values()), now
    assert all(now[v][0] > was[v][0] for v in shots), (was, now)
    assert "shots 1, test accuracy on the rest of the target" in proc.stdout

    # K = 0: the checkpoint tested on the whole target, the same results.json shape
    out0 = tmp_path / "k0"
    proc = run_vidlit("adapt", "--ckpt_path", ckpt, "--shots", "0", "--out", str(out0), "--trainer.logger", "false",
                      "--trainer.enable_progress_bar", "false", "--data.num_workers", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    zero = json.loads((out0 / "results.json").read_text())
    keys = {"strategy", "backbone", "dataset", "seed", "source_domains", "target_domains", "class_names", "val_acc", "test_acc",
            "test_acc_per_domain", "best_checkpoint", "history", "shots", "adapt"}
    assert zero["shots"] == 0 and keys <= set(zero) and keys <= set(res)
    test = json.loads((out0 / "test_results.json").read_text())
    assert zero["test_acc"] == test["test_acc"]
    # one results schema: fit's results.json, test's test_results.json and adapt's results.json
    # start with the same head (vidlit.run.results.results_head), each naming the command that wrote it
    head = {"kind", "strategy", "backbone", "dataset", "run_dir", "source_domains", "target_domains", "class_names"}
    assert head <= set(ref) and head <= set(test) and head <= set(res) and head <= set(zero)
    assert (ref["kind"], test["kind"], res["kind"], zero["kind"]) == ("fit", "test", "adapt", "adapt")
    assert test["class_names"] == ref["class_names"] and test["target_domains"] == ref["target_domains"]

    proc = run_vidlit("adapt", "--ckpt_path", ckpt, "--shots", "6", "--out", str(tmp_path / "k6"))
    assert proc.returncode == 2 and "--shots 6" in proc.stderr and "has only 6 video(s)" in proc.stderr


def test_fits_names_for_the_seed_and_the_folder(capsys):
    """``--seed_everything`` is ``--seed`` and ``--trainer.default_root_dir`` is ``--out`` (fit's names):
    kept by adapt (the shots' draw, the output folder), not passed on to the fine-tuning run; both names
    with different values: one line."""
    from vidlit.commands.adapt import parse_args
    from vidlit.commands.main import main

    args, rest = parse_args(["--ckpt_path", "x.ckpt", "--shots", "1", "--seed_everything", "3",
                             "--trainer.default_root_dir", "out/k1", "--trainer.max_epochs", "2"])
    assert (args.seed, args.out) == (3, "out/k1") and rest == ["--trainer.max_epochs", "2"]
    args, _ = parse_args(["--ckpt_path", "x.ckpt", "--shots", "1", "--seed", "3", "--seed_everything", "3", "--out", "o"])
    assert (args.seed, args.out) == (3, "o")
    args, _ = parse_args(["--ckpt_path", "x.ckpt", "--shots", "1"])
    assert (args.seed, args.out) == (0, None)
    for flags, line in (
        (["--seed", "1", "--seed_everything", "2"], "adapt: --seed 1 and --seed_everything 2 are the same setting with different values; give one"),
        (["--out", "a", "--trainer.default_root_dir=b"],
         "adapt: --out a and --trainer.default_root_dir b are the same setting with different values; give one"),
    ):
        assert main(["adapt", "--ckpt_path", "x.ckpt", "--shots", "1", *flags]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [f"vidlit: error: {line}"]
