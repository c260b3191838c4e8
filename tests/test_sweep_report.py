"""``python -m vidlit sweep`` (local grid, skip/resume on rerun, W&B sweep config) and
``python -m vidlit report`` (DomainBed-style tables)."""
from __future__ import annotations

import csv
import json
import os
import shlex

import pytest
import yaml

from tests.helpers import TINY_FLAGS, run_vidlit
from vidlit.commands import report, sweep


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Run every test in its own folder: report's default --out (and sweep's closing report) is
    reports/<name of DIR> under it."""
    monkeypatch.chdir(tmp_path)


def _tiny(root: str) -> list[str]:
    flags = list(TINY_FLAGS)
    flags[flags.index("--trainer.max_epochs") + 1] = "1"
    return ["--data.root", root, *flags]


@pytest.mark.slow
def test_sweep_runs_grid_then_skips_finished_and_resumes_broken(tiny_root, tmp_path):
    out = str(tmp_path / "sweep")
    args = ["sweep", "--strategies", "erm", "--targets", "clean", "texture", "--seeds", "5", "--parallel", "2", "--out", out, *_tiny(tiny_root)]
    proc = run_vidlit(*args, env={"WANDB_MODE": "disabled"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[2/2]" in proc.stdout
    # the closing table: report's tables of the sweep's folder, written to report's default folder
    assert "### Model selection: training-domain validation" in proc.stdout and "| erm |" in proc.stdout
    assert os.path.isfile(tmp_path / "reports" / "sweep" / "report.md")
    first = {}
    for target in ("clean", "texture"):
        run_dir = os.path.join(out, "folder", "erm", f"target={target}", "seed=5")
        with open(os.path.join(run_dir, "results.json")) as fh:
            res = json.load(fh)
        assert res["target_domains"] == [target] and res["seed"] == 5 and target not in res["source_domains"]
        assert json.load(open(os.path.join(run_dir, "sweep.json")))["status"] == "done"
        first[target] = res

    # break one run (as if killed after its last checkpoint), then rerun the same command
    broken = os.path.join(out, "folder", "erm", "target=clean", "seed=5")
    os.remove(os.path.join(broken, "results.json"))
    finished = os.path.join(out, "folder", "erm", "target=texture", "seed=5", "results.json")
    mtime = os.stat(finished).st_mtime_ns
    proc = run_vidlit(*args, env={"WANDB_MODE": "disabled"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "1 finished (skipped), 1 to resume, 0 to start" in proc.stdout
    assert os.stat(finished).st_mtime_ns == mtime  # not rerun
    assert json.load(open(os.path.join(broken, "sweep.json")))["command"][-2:] == ["--ckpt_path", "last"]
    with open(os.path.join(broken, "results.json")) as fh:
        resumed = json.load(fh)
    assert resumed["test_acc"] == first["clean"]["test_acc"] and resumed["history"] == first["clean"]["history"]

    # the report reads the sweep's folder
    assert report.main([out, "--out", str(tmp_path / "rep")]) == 0
    with open(tmp_path / "rep" / "report.md") as fh:
        text = fh.read()
    assert "| erm |" in text and "clean" in text and "texture" in text


def test_dry_run_plans_every_domain_with_passthrough_flags(tiny_root, tmp_path, capsys):
    out = str(tmp_path / "s")
    assert sweep.main(["--dry_run", "--seeds", "0", "1", "--strategies", "erm", "--out", out, "--data.root", tiny_root, "--trainer.max_epochs", "3"]) == 0
    printed = capsys.readouterr().out
    commands = [shlex.split(line) for line in printed.splitlines() if line.startswith("        ")]
    assert len(commands) == 4 * 2  # every domain of the data held out once, two seeds
    held_out = sorted({c[c.index("--data.target_domains") + 1] for c in commands})
    assert held_out == ['["clean"]', '["colour"]', '["shaky"]', '["texture"]']
    for c in commands:
        assert c[1:4] == ["-m", "vidlit", "fit"] and c[c.index("--trainer.max_epochs") + 1] == "3"
        assert c[c.index("--trainer.default_root_dir") + 1].startswith(os.path.join(out, "folder", "erm", "target="))
    assert "8 runs: 0 done, 0 resume, 8 new" in printed


def test_sweep_rejects_flags_it_sets(capsys):
    for flags in (["--data.target_domains", '["a"]'], ["--ckpt_path", "last"], ["--strategy", "erm"]):
        assert sweep.main(["--targets", "a", *flags]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and flags[0] in err[0] and "--targets" in err[0]


def _planned(argv: list[str], capsys) -> list[list[str]]:
    assert sweep.main(["--dry_run", "--strategies", "erm", "--targets", "clean", *argv]) == 0
    return [shlex.split(line) for line in capsys.readouterr().out.splitlines() if line.startswith("        ")]


def test_sweep_takes_fits_names_for_the_seed_and_the_folder(tmp_path, capsys):
    """--seed_everything N is --seeds N and --trainer.default_root_dir DIR is --out DIR, as in fit."""
    out = str(tmp_path / "s")
    fit_names = _planned(["--seed_everything", "7", "--trainer.default_root_dir", out], capsys)
    assert fit_names == _planned(["--seeds", "7", "--out", out], capsys)
    assert fit_names == _planned(["--seed_everything=7", f"--trainer.default_root_dir={out}"], capsys)
    (cmd,) = fit_names
    assert cmd[cmd.index("--seed_everything") + 1] == "7"
    assert cmd[cmd.index("--trainer.default_root_dir") + 1] == os.path.join(out, "folder", "erm", "target=clean", "seed=7")
    # both names of one thing, or a seed that is not one integer: one line
    for argv, says in ((["--seeds", "1", "--seed_everything", "2"], "--seed_everything N is the same as --seeds N"),
                       (["--out", out, "--trainer.default_root_dir", out], "--trainer.default_root_dir DIR is the same as --out DIR"),
                       (["--seed_everything", "x"], "--seed_everything x: expected one integer")):
        assert sweep.main(["--dry_run", "--targets", "clean", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("vidlit sweep: error: ") and says in err[0], err


def test_hparam_draws_are_stable_and_independent():
    lr = sweep.Param.parse("model.lr=loguniform:1e-4:1e-2")
    drop = sweep.Param.parse("model.dropout=choice:0,0.1,0.5")
    a = sweep.draw_hparams("erm", "folder", 3, [lr, drop])
    assert sweep.draw_hparams("erm", "folder", 3, [drop, lr]) == a  # order of the space does not matter
    assert sweep.draw_hparams("erm", "folder", 3, [lr])["model.lr"] == a["model.lr"]  # nor other entries
    assert 1e-4 <= a["model.lr"] <= 1e-2 and a["model.dropout"] in (0, 0.1, 0.5)
    assert sweep.draw_hparams("erm", "folder", 0, [lr, drop]) == {}  # draw 0: the defaults
    draws = [sweep.draw_hparams("erm", "folder", k, [lr])["model.lr"] for k in range(1, 6)]
    assert len(set(draws)) == 5
    # pinned values: if these change, every existing sweep's draws changed with the code
    assert sweep.draw_hparams("dann", "ucf_hmdb", 1, [lr]) == {"model.lr": 0.00688}
    space = [drop, sweep.Param.parse("model.x=int:1:9")]
    assert sweep.draw_hparams("erm", "folder", 2, space) == {"model.dropout": 0.5, "model.x": 8}
    with pytest.raises(sweep.SweepError, match="loguniform"):
        sweep.Param.parse("model.lr=log:1:2")


def test_wandb_sweep_config_runs_vidlit_fit(tiny_root, tmp_path, capsys):
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    out = str(tmp_path / "w")
    argv = ["--wandb", "--strategies", "erm", "--targets", "clean", "texture", "--seeds", "0", "1", "--out", out,
            "--data.root", tiny_root, "--wandb.project", "dg"]
    assert sweep.main(argv) == 0
    assert "wandb agent" in capsys.readouterr().out
    with open(os.path.join(out, "wandb_sweep.yaml")) as fh:
        cfg = yaml.safe_load(fh)
    assert cfg["method"] == "grid" and cfg["project"] == "dg" and cfg["metric"] == {"name": "test_acc", "goal": "maximize"}
    assert cfg["command"][:5] == ["${env}", "${interpreter}", "-m", "vidlit", "fit"] and cfg["command"][-1] == "${args}"
    assert cfg["parameters"]["seed_everything"]["values"] == [0, 1]

    # what `wandb agent` would run for one grid point is a valid `python -m vidlit fit` command line
    point = {k: {"value": v["values"][-1]} for k, v in cfg["parameters"].items()}
    rendered = create_sweep_command_args({"args": point})["args"]
    fit_argv = [a for a in cfg["command"][3:-1]] + rendered
    from vidlit.commands.cli import run_cli

    with pytest.raises(SystemExit) as exit_info:
        run_cli(fit_argv[1:] + ["--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["target_domains"] == ["texture"] and printed["seed_everything"] == 1
    assert printed["data"]["root"] == tiny_root and printed["wandb"]["project"] == "dg"


def _fake_run(root, dataset, strategy, target, seed, test, val, oracle, draw=None):
    run_dir = os.path.join(root, dataset, strategy, *( [f"hp={draw}"] if draw is not None else []), f"target={target}", f"seed={seed}")
    os.makedirs(run_dir)
    res = {"dataset": dataset, "strategy": strategy, "seed": seed, "target_domains": [target], "source_domains": ["x"],
           "test_acc": test, "val_acc": val, "oracle_test_acc": oracle}
    with open(os.path.join(run_dir, "results.json"), "w") as fh:
        json.dump(res, fh)
    if draw is not None:
        with open(os.path.join(run_dir, "sweep.json"), "w") as fh:
            json.dump({"hparams_draw": draw, "status": "done"}, fh)
    return run_dir


def test_report_tables_mean_se_selection_and_incomplete_runs(tmp_path, capsys):
    root = str(tmp_path / "runs")
    for seed, (a, b) in enumerate([(0.5, 0.7), (0.6, 0.8), (0.7, 0.9)]):
        _fake_run(root, "folder", "erm", "A", seed, a, 0.9, a + 0.05)
        _fake_run(root, "folder", "erm", "B", seed, b, 0.8, b + 0.05)
    # dann: two hyperparameter draws; selection by val_acc picks draw 1 for seed 0, draw 0 for seed 1
    _fake_run(root, "folder", "dann", "A", 0, 0.40, 0.70, 0.95, draw=0)
    _fake_run(root, "folder", "dann", "A", 0, 0.60, 0.75, 0.65, draw=1)
    _fake_run(root, "folder", "dann", "A", 1, 0.50, 0.80, 0.55, draw=0)
    _fake_run(root, "folder", "dann", "A", 1, 0.90, 0.60, 0.92, draw=1)
    # coral: one seed; mixup: seeds 0 and 1 on A, seed 0 only on B
    _fake_run(root, "folder", "coral", "A", 0, 0.61, 0.85, 0.63)
    _fake_run(root, "folder", "coral", "B", 0, 0.72, 0.75, 0.72)
    _fake_run(root, "folder", "mixup", "A", 0, 0.62, 0.85, 0.66)
    _fake_run(root, "folder", "mixup", "B", 0, 0.74, 0.75, 0.80)
    _fake_run(root, "folder", "mixup", "A", 1, 0.66, 0.90, 0.70)
    # W&B's copy of results.json must not count twice
    dup = os.path.join(root, "folder", "erm", "target=A", "seed=0", "wandb", "offline-run-x", "files")
    os.makedirs(dup)
    with open(os.path.join(dup, "results.json"), "w") as fh:
        json.dump({"dataset": "folder", "strategy": "erm", "seed": 0, "target_domains": ["A"], "test_acc": 0.0}, fh)
    # a killed run and a failed one
    killed = os.path.join(root, "folder", "erm", "target=B", "seed=3")
    os.makedirs(os.path.join(killed, "checkpoints"))
    open(os.path.join(killed, "checkpoints", "last.ckpt"), "w").close()
    open(os.path.join(killed, "config.yaml"), "w").close()
    failed = os.path.join(root, "folder", "dann", "target=B", "seed=0")
    os.makedirs(failed)
    with open(os.path.join(failed, "sweep.json"), "w") as fh:
        json.dump({"status": "failed (exit 1)"}, fh)

    out = str(tmp_path / "rep")
    assert report.main([root, "--out", out]) == 0
    text = capsys.readouterr().out
    with open(os.path.join(out, "report.md")) as fh:
        assert fh.read().strip() == text.split("\nwrote ")[0].strip()
    sections = text.split("### ")
    tdv = next(s for s in sections if s.startswith("Model selection: training-domain validation"))
    oracle = next(s for s in sections if s.startswith("Model selection: oracle"))
    inout = next(s for s in sections if s.startswith("In-domain vs out-of-domain"))
    assert "UPPER BOUND" in oracle
    # standard error as DomainBed: std with ddof=0 over the seeds / sqrt(n), stated with the tables
    assert "standard error over seeds as in DomainBed: std (ddof=0) / sqrt(n)" in text
    # erm A: 50, 60, 70 -> 60.0 +- sqrt((100 + 0 + 100) / 3) / sqrt(3) = 4.71; B: 70, 80, 90; Avg per seed 60, 70, 80
    assert "| erm | 60.0 ± 4.7 | 80.0 ± 4.7 | 70.0 ± 4.7 | 3 |" in tdv
    # dann A: seed 0 picks draw 1 (val 0.75) -> 60, seed 1 picks draw 0 (val 0.80) -> 50: 55 +- 5 / sqrt(2); no B: no Avg
    assert "| dann | 55.0 ± 3.5 | - | - | 2 |" in tdv
    # one seed: the value alone, no standard error (never "± 0.0"); n in the Seeds column
    assert "| coral | 61.0 | 72.0 | 66.5 | 1 |" in tdv
    # a row with cells of different n: the cells with fewer seeds than the row's most say theirs
    # (A: 62, 66 -> 64 +- 2 / sqrt(2); B: seed 0 only; Avg: seed 0 only, (62 + 74) / 2)
    assert "| mixup | 64.0 ± 1.4 | 74.0 (n=1) | 68.0 (n=1) | 1-2 |" in tdv
    # oracle: best oracle_test_acc over draws: 95 and 92 -> 93.5 +- 1.5 / sqrt(2)
    assert "| dann | 93.5 ± 1.1 | - | - | 2 |" in oracle
    assert "| erm | 65.0 ± 4.7 | 85.0 ± 4.7 | 75.0 ± 4.7 | 3 |" in oracle
    assert "| coral | 63.0 | 72.0 | 67.5 | 1 |" in oracle
    assert "| mixup | 68.0 ± 1.4 | 80.0 (n=1) | 73.0 (n=1) | 1-2 |" in oracle
    # erm in-domain: per seed mean(0.9, 0.8) = 85 (three equal values: a real 0.0); out: 60, 70, 80; gap 25, 15, 5
    assert "| erm | 85.0 ± 0.0 | 70.0 ± 4.7 | 15.0 ± 4.7 | 3 |" in inout
    assert "| coral | 80.0 | 66.5 | 13.5 | 1 |" in inout
    # mixup per seed: in 80 (0.85, 0.75) and 90, out 68 and 66, gap 12 and 24
    assert "| mixup | 85.0 ± 3.5 | 67.0 ± 0.7 | 18.0 ± 4.2 | 2 |" in inout
    assert not [ln for ln in text.splitlines() if ln.startswith("| ") and "± 0.0" in ln and not ln.startswith("| erm |")]
    assert f"`{killed}`: no results.json (incomplete); checkpoints/last.ckpt present" in text
    assert f"`{failed}`: no results.json (failed (exit 1))" in text

    with open(os.path.join(out, "report_folder.csv")) as fh:
        rows = list(csv.DictReader(fh))
    erm_avg = [r for r in rows if r["table"] == "training-domain validation" and r["strategy"] == "erm" and r["column"] == "Avg"]
    assert [(float(r["mean_pct"]), float(r["se_pct"]), r["n_seeds"]) for r in erm_avg] == [(70.0, 4.714, "3")]  # sqrt(200) / 3
    mixup = {r["column"]: (float(r["mean_pct"]), r["se_pct"], r["n_seeds"]) for r in rows
             if r["table"] == "training-domain validation" and r["strategy"] == "mixup"}
    assert mixup == {"A": (64.0, "1.4142", "2"), "B": (74.0, "", "1"), "Avg": (68.0, "", "1")}  # one seed: no SE
    with open(os.path.join(out, "report_folder.png"), "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_report_on_a_folder_without_runs_says_so(tmp_path, capsys):
    assert report.main([str(tmp_path)]) == 2
    assert "no run folders" in capsys.readouterr().err


def test_execute_records_failures_and_successes(tmp_path, capsys):
    import sys

    ok = sweep.Run("erm", "folder", "A", 0, None, {}, str(tmp_path / "ok"))
    write = f"import json; json.dump({{'test_acc': 0.25}}, open({os.path.join(ok.run_dir, 'results.json')!r}, 'w'))"
    ok.command = [sys.executable, "-c", write]
    bad = sweep.Run("erm", "folder", "B", 0, None, {}, str(tmp_path / "bad"))
    bad.command = [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"]
    assert sweep.execute([ok, bad], parallel=2) == 1
    out = capsys.readouterr().out
    assert "done   erm target=A seed=0: test_acc 25.0%" in out
    assert "failed erm target=B seed=0 (exit 3)" in out and os.path.join(bad.run_dir, "sweep.log") in out
    assert json.load(open(os.path.join(ok.run_dir, "sweep.json")))["status"] == "done"
    assert json.load(open(os.path.join(bad.run_dir, "sweep.json")))["status"] == "failed (exit 3)"
    assert "boom" in open(os.path.join(bad.run_dir, "sweep.log")).read()


def test_sweep_prints_the_report_of_its_runs_at_the_end_even_when_one_fails(tmp_path, capsys, monkeypatch):
    import sys

    tests = {("erm", "A", 0): 0.50, ("erm", "A", 1): 0.60, ("erm", "B", 0): 0.40, ("erm", "B", 1): 0.50,
             ("dann", "A", 0): 0.60, ("dann", "A", 1): 0.72, ("dann", "B", 0): 0.50}  # dann B seed 1 fails

    def fake_fit(run, passthrough, sweep_name):  # what fit writes, without training
        acc = tests.get((run.strategy, run.target, run.seed))
        if acc is None:
            return [sys.executable, "-c", "import sys; sys.exit(1)"]
        res = {"dataset": run.dataset, "strategy": run.strategy, "seed": run.seed, "target_domains": [run.target],
               "source_domains": ["x"], "test_acc": acc, "val_acc": 0.9, "oracle_test_acc": acc}
        return [sys.executable, "-c", f"import json; json.dump({res!r}, open({os.path.join(run.run_dir, 'results.json')!r}, 'w'))"]

    monkeypatch.setattr(sweep, "fit_command", fake_fit)
    out = str(tmp_path / "sw")
    assert sweep.main(["--strategies", "erm", "dann", "--targets", "A", "B", "--seeds", "0", "1", "--parallel", "4",
                       "--out", out]) == 1  # one run failed
    text = capsys.readouterr().out
    assert "failed dann target=B seed=1 (exit 1)" in text
    # the finished runs' table: erm A 50, 60 -> 55 +- 5 / sqrt(2); B 40, 50; Avg per seed 45, 55
    # dann A 60, 72 -> 66 +- 6 / sqrt(2); B seed 0 only; Avg seed 0 only: (60 + 50) / 2
    tdv = text.split("### Model selection: training-domain validation")[1].split("###")[0]
    assert [ln for ln in tdv.splitlines() if ln.startswith("| ") and not ln.startswith("| Strategy")] == [
        "| erm | 55.0 ± 3.5 | 45.0 ± 3.5 | 50.0 ± 3.5 | 2 |",
        "| dann | 66.0 ± 4.2 | 50.0 (n=1) | 55.0 (n=1) | 1-2 |",
    ]
    # dann - erm over the 3 pairs both have: +10, +12, +10 -> 10.667; std sqrt((0.667^2 x 2 + 1.333^2) / 3) = 0.943,
    # SE 0.544; 95%: [9.60, 11.73]
    paired = text.split("### Paired difference vs erm:")[1].split("###")[0]
    assert "| dann | +10.7 ± 0.5 | [+9.6, +11.7] | 3 | better |" in paired
    assert f"`{os.path.join(out, 'folder', 'dann', 'target=B', 'seed=1')}`: no results.json (failed (exit 1))" in text
    assert os.path.isfile(tmp_path / "reports" / "sw" / "report.md")
