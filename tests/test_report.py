"""``python -m vidlit report``: runs with different settings are never averaged or selected
together; selection across hyperparameter draws (ties broken by validation loss); the chart."""
from __future__ import annotations

import csv
import json
import os

import pytest
import yaml

from tests.helpers import run_vidlit
from vidlit.commands import report


def _run(root, strategy, target, seed, test, val, *, epochs=12, backbone="tiny3d", draw=None, hparams=None,
         val_loss=None, oracle=None, model=None, folder=None, classes=5, **data):
    """A finished run folder as fit (and sweep) write it: config.yaml, results.json, sweep.json."""
    parts = [root, "folder", strategy] + ([f"hp={draw}"] if draw is not None else []) + [f"target={target}", f"seed={seed}"]
    run_dir = folder or os.path.join(*parts)
    os.makedirs(run_dir)
    config = {
        "seed_everything": seed,
        "trainer": {"accelerator": "cpu", "max_epochs": epochs, "default_root_dir": run_dir, "enable_progress_bar": False},
        "model": {"backbone": backbone, "lr": 0.002, "weight_decay": 0.05, **(model or {}), **{k.split(".", 1)[1]: v for k, v in (hparams or {}).items()}},
        "data": {"root": "/data/x", "size": 32, "num_frames": 4, "target_domains": [target], "num_workers": 2, **data},
        "strategy": strategy, "dataset": "folder",
        "checkpoint": {"dirpath": os.path.join(run_dir, "checkpoints"), "monitor": "val/acc"},
        "wandb": {"name": f"x/{seed}", "group": "g"},
    }
    with open(os.path.join(run_dir, "config.yaml"), "w") as fh:
        yaml.safe_dump(config, fh)
    res = {"dataset": "folder", "strategy": strategy, "backbone": backbone, "seed": seed, "target_domains": [target],
           "source_domains": ["s"], "class_names": [f"c{i}" for i in range(classes)], "test_acc": test, "val_acc": val,
           "oracle_test_acc": oracle if oracle is not None else test}
    if val_loss is not None:
        res["val_loss"] = val_loss
    with open(os.path.join(run_dir, "results.json"), "w") as fh:
        json.dump(res, fh)
    if draw is not None:
        with open(os.path.join(run_dir, "sweep.json"), "w") as fh:
            json.dump({"strategy": strategy, "dataset": "folder", "target": target, "seed": seed, "hparams_draw": draw,
                       "hparams": hparams or {}, "status": "done"}, fh)
    return run_dir


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Run every test in its own folder: report's default --out is reports/<name of DIR> under it."""
    monkeypatch.chdir(tmp_path)


def _written(root: str) -> str:
    """The report.md that ``report ROOT`` wrote to its default --out (reports/<name of ROOT>)."""
    return open(os.path.join("reports", os.path.basename(root), "report.md")).read()


def _erm_rows(text: str, title: str) -> list[str]:
    """The erm rows of the report's table ``### <title>``."""
    part = text.split(f"### {title}")[1].split("###")[0]
    return [ln for ln in part.splitlines() if ln.startswith("| erm")]


def _table_rows(text: str) -> dict[str, list[str]]:
    """heading of each '## Dataset' section -> its training-domain validation rows."""
    out = {}
    for section in text.split("\n## ")[1:]:
        head = section.splitlines()[0]
        tdv = section.split("### Model selection: training-domain validation")[1].split("###")[0] if "###" in section else ""
        out[head] = [ln for ln in tdv.splitlines() if ln.startswith("| ") and not ln.startswith("| Strategy")]
    return out


def test_runs_differing_only_in_epochs_are_never_averaged(tmp_path):
    root = str(tmp_path / "runs")
    # the same grid point trained for 12 and for 2 epochs, two seeds each, in two separate run folders
    for seed, (long, short) in enumerate([(0.8, 0.4), (0.9, 0.5)]):
        _run(root, "erm", "A", seed, long, 0.9, epochs=12, folder=os.path.join(root, "long", f"s{seed}"))
        _run(root, "erm", "A", seed, short, 0.95, epochs=2, folder=os.path.join(root, "short", f"s{seed}"))
    proc = run_vidlit("report", root, "--out", str(tmp_path / "rep"))
    assert proc.returncode == 0, proc.stderr
    tables = _table_rows(proc.stdout)
    assert set(tables) == {"Dataset `folder` (1 of 2): trainer.max_epochs=2", "Dataset `folder` (2 of 2): trainer.max_epochs=12"}
    # 40 and 50: std (ddof=0, DomainBed's) 5, SE 5 / sqrt(2) = 3.54; 80 and 90 likewise
    assert tables["Dataset `folder` (1 of 2): trainer.max_epochs=2"] == ["| erm | 45.0 ± 3.5 | 45.0 ± 3.5 | 2 |"]
    assert tables["Dataset `folder` (2 of 2): trainer.max_epochs=12"] == ["| erm | 85.0 ± 3.5 | 85.0 ± 3.5 | 2 |"]
    assert "differ in: trainer.max_epochs." in proc.stdout
    assert "Settings: model.backbone=tiny3d, trainer.max_epochs=12, data.size=32, data.num_frames=4, data.root=/data/x." in proc.stdout
    for k in (1, 2):
        assert os.path.isfile(tmp_path / "rep" / f"report_folder-{k}.csv") and os.path.isfile(tmp_path / "rep" / f"report_folder-{k}.png")
    # --where picks one of them
    proc = run_vidlit("report", root, "--out", str(tmp_path / "rep2"), "--where", "trainer.max_epochs=12")
    assert proc.returncode == 0, proc.stderr
    assert list(_table_rows(proc.stdout).values()) == [["| erm | 85.0 ± 3.5 | 85.0 ± 3.5 | 2 |"]]


def test_draws_with_different_epochs_are_not_selected_together(tmp_path):
    root = str(tmp_path / "sweep")
    # one sweep, but draw 1 was (wrongly) run with other epochs: its better val_acc must not win over draw 0
    _run(root, "erm", "A", 0, 0.30, 0.70, epochs=12, draw=0)
    _run(root, "erm", "A", 0, 0.60, 0.99, epochs=2, draw=1, hparams={"model.lr": 0.005})
    _run(root, "erm", "A", 0, 0.20, 0.60, epochs=12, draw=2, hparams={"model.lr": 0.0004})
    assert report.main([root]) == 0
    text = _written(root)
    tables = _table_rows(text)
    # one seed: the value alone (no standard error, never "± 0.0"), n = 1 in the Seeds column
    assert tables["Dataset `folder` (1 of 2): trainer.max_epochs=2"] == ["| erm | 60.0 | 60.0 | 1 |"]
    # among the 12-epoch draws (0 and 2), draw 0 has the best val_acc; model.lr is the search, not a setting
    assert tables["Dataset `folder` (2 of 2): trainer.max_epochs=12"] == ["| erm | 30.0 | 30.0 | 1 |"]
    assert "Hyperparameter search (erm: model.lr)" in text


def test_strategy_options_outside_the_search_make_separate_rows(tmp_path):
    root = str(tmp_path / "runs")
    _run(root, "erm", "A", 0, 0.5, 0.8)
    _run(root, "dann", "A", 0, 0.6, 0.8, model={"lambda_max": 1.0}, folder=os.path.join(root, "d1"))
    _run(root, "dann", "A", 0, 0.7, 0.8, model={"lambda_max": 0.1}, folder=os.path.join(root, "d2"))
    assert report.main([root]) == 0
    rows = list(_table_rows(_written(root)).values())
    assert rows == [["| erm | 50.0 | 50.0 | 1 |", "| dann (lambda_max=0.1) | 70.0 | 70.0 | 1 |", "| dann (lambda_max=1.0) | 60.0 | 60.0 | 1 |"]]


def test_same_settings_outside_one_sweep_are_refused_with_the_flag_to_choose(tmp_path):
    root = str(tmp_path / "runs")
    a = _run(root, "erm", "A", 0, 0.5, 0.8, folder=os.path.join(root, "first"))
    b = _run(root, "erm", "A", 0, 0.7, 0.9, folder=os.path.join(root, "again"))
    proc = run_vidlit("report", root)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vidlit report: error:") and "--exclude" in err[0] and a in err[0] and b in err[0]
    proc = run_vidlit("report", root, "--exclude", b)
    assert proc.returncode == 0, proc.stderr
    assert list(_table_rows(proc.stdout).values()) == [["| erm | 50.0 | 50.0 | 1 |"]]


def test_where_with_an_unknown_setting_is_one_line(tmp_path, capsys):
    root = str(tmp_path / "runs")
    _run(root, "erm", "A", 0, 0.5, 0.8)
    assert report.main([root, "--where", "trainer.max_epoch=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--where trainer.max_epoch" in err[0] and "trainer.max_epochs" in err[0]


def test_ties_in_val_acc_are_broken_by_lower_val_loss(tmp_path):
    root = str(tmp_path / "sweep")
    # seed 0: every draw reaches 100% source val accuracy; draw 2 has the lowest val loss
    _run(root, "erm", "A", 0, 0.40, 1.0, draw=0, val_loss=0.30)
    _run(root, "erm", "A", 0, 0.55, 1.0, draw=1, hparams={"model.lr": 0.005}, val_loss=0.20)
    _run(root, "erm", "A", 0, 0.75, 1.0, draw=2, hparams={"model.lr": 0.0004}, val_loss=0.05)
    _run(root, "erm", "A", 0, 0.90, 0.9, draw=3, hparams={"model.lr": 0.009}, val_loss=0.01)  # lower loss, lower acc: not picked
    # seed 1: tie without val_loss (results.json of older runs): today's rule, the lowest draw
    _run(root, "erm", "A", 1, 0.35, 1.0, draw=0)
    _run(root, "erm", "A", 1, 0.65, 1.0, draw=1, hparams={"model.lr": 0.005})
    assert report.main([root]) == 0
    rows = list(_table_rows(_written(root)).values())
    assert rows == [["| erm | 55.0 ± 14.1 | 55.0 ± 14.1 | 2 |"]]  # 75 (draw 2) and 35 (draw 0): std 20, SE 20 / sqrt(2)


def test_chart_marks_chance_labels_bars_and_keeps_the_legend_off_them(tmp_path):
    root = str(tmp_path / "runs")
    for seed in (0, 1):
        _run(root, "erm", "A", seed, 0.5 + seed / 10, 0.8, classes=4)
        _run(root, "erm", "B", seed, 0.7, 0.8, classes=4)
        _run(root, "dann", "A", seed, 0.6, 0.8, classes=4)
        _run(root, "dann", "B", seed, 0.9, 0.8, classes=4)
    results, _ = report.find_runs(root)
    (group,) = report.group_runs(results)
    info = report.group_tables(report.select(group["runs"]))
    title = f"folder: held-out domain accuracy ({report._short_settings(group['shared'])})\ntraining-domain validation; mean ± SE over seeds"
    fig = report.chart_figure(title, info, report._chance(group["runs"]))
    ax = fig.axes[0]
    fig.canvas.draw()
    chance = [ln for ln in ax.get_lines() if ln.get_label().startswith("chance")]
    assert len(chance) == 1 and chance[0].get_ydata()[0] == pytest.approx(25.0)
    labels = [t.get_text() for t in ax.texts]
    assert sorted(labels) == sorted(["55.0", "70.0", "62.5", "60.0", "90.0", "75.0"])
    legend = ax.get_legend().get_window_extent()
    axes_box = ax.get_window_extent()
    assert legend.x0 >= axes_box.x1  # outside the plotting area: it covers no bar
    assert legend.x1 <= fig.bbox.x1 + 1  # and not cut off
    title = ax.title.get_window_extent()
    assert title.x0 >= fig.bbox.x0 - 1 and title.x1 <= fig.bbox.x1 + 1


def test_strategies_at_their_own_defaults_share_a_table(tmp_path):
    """dann's defaults differ from erm's (e.g. its AdamW betas): that is no reason to split them; a
    value the user set is."""
    dann_defaults = report._strategy_defaults("dann")
    erm_defaults = report._strategy_defaults("erm")
    differing = sorted(k for k in dann_defaults if k in erm_defaults and not report._same(dann_defaults[k], erm_defaults[k]))
    assert differing, "erm and dann no longer differ in any default: pick another pair"
    own = {k.split(".", 1)[1]: json.loads(json.dumps(v)) for k, v in dann_defaults.items() if k in differing}
    root = str(tmp_path / "runs")
    _run(root, "erm", "A", 0, 0.5, 0.8)
    _run(root, "dann", "A", 0, 0.6, 0.8, model=own)
    _run(root, "erm", "A", 0, 0.4, 0.8, model={"lr": 0.01}, folder=os.path.join(root, "lr"))
    assert report.main([root]) == 0
    tables = _table_rows(_written(root))
    assert tables == {
        "Dataset `folder` (1 of 2): model.lr=default": ["| erm | 50.0 | 50.0 | 1 |", "| dann | 60.0 | 60.0 | 1 |"],
        "Dataset `folder` (2 of 2): model.lr=0.01": ["| erm | 40.0 | 40.0 | 1 |"],
    }


def test_wandb_agent_draws_are_selected_within_their_sweep_only(tmp_path, monkeypatch):
    from vidlit.run.sweep_record import record_wandb_agent_run

    root = str(tmp_path / "runs")

    def agent_run(name, sweep_id, lr, test, val):
        run_dir = _run(root, "erm", "A", 0, test, val, hparams={"model.lr": lr}, folder=os.path.join(root, name))
        params = tmp_path / f"config-{name}.yaml"  # what `wandb agent` writes and points WANDB_SWEEP_PARAM_PATH at
        params.write_text(yaml.safe_dump({"strategy": {"value": "erm"}, "seed_everything": {"value": 0},
                                          "data.target_domains": {"value": '["A"]'}, "model.lr": {"value": lr}}))
        monkeypatch.setenv("WANDB_SWEEP_ID", sweep_id)
        monkeypatch.setenv("WANDB_RUN_ID", name)
        monkeypatch.setenv("WANDB_SWEEP_PARAM_PATH", str(params))
        assert record_wandb_agent_run(run_dir, "done")
        record = json.load(open(os.path.join(run_dir, "sweep.json")))
        assert record["wandb_sweep"] == sweep_id and record["hparams"] == {"model.lr": lr} and record["hparams_draw"] == name

    agent_run("erm-folder-1", "sw1", 0.002, 0.40, 0.80)
    agent_run("erm-folder-2", "sw1", 0.005, 0.70, 0.95)  # the best val of sweep sw1
    assert report.main([root]) == 0
    assert list(_table_rows(_written(root)).values()) == [["| erm | 70.0 | 70.0 | 1 |"]]
    # a draw of another W&B sweep at the same grid point is not a draw of sw1: refused, not selected
    agent_run("erm-folder-3", "sw2", 0.001, 0.90, 0.99)
    assert report.main([root]) == 2
    # outside an agent nothing is written; a `vidlit sweep` record is left alone
    monkeypatch.delenv("WANDB_SWEEP_ID")
    assert not record_wandb_agent_run(str(tmp_path), "done") and not os.path.exists(tmp_path / "sweep.json")


def test_averaged_runs_show_the_run_without_averaging_and_the_paired_gain(tmp_path, capsys):
    root = str(tmp_path / "sweep")
    runs = {  # seed: (averaged test, epoch-selected test)
        0: (0.80, 0.75), 1: (0.70, 0.72),
    }
    for seed, (avg_test, raw_test) in runs.items():
        run_dir = _run(root, "erm", "a", seed, avg_test, 0.9)
        path = os.path.join(run_dir, "results.json")
        res = json.load(open(path))
        res["best_epoch"] = 4
        res["history"] = [{"epoch": e, "val_acc": 0.5, "target_acc": 0.1 * e} for e in range(4)] + [
            {"epoch": 4, "val_acc": 0.9, "val_loss": 0.3, "target_acc": raw_test, "target_acc_per_domain": {"a": raw_test}}]
        if seed == 0:  # written by fit today: the entry itself
            res["average"] = {"method": "swad", "unaveraged": {"best_epoch": 4, "test_acc": raw_test}}
            res["history"][-1]["target_acc"] = 0.0  # the entry wins over the history
        else:  # written before the entry existed: from the history at best_epoch
            res["average"] = {"method": "swad"}
        json.dump(res, open(path, "w"))
    assert report.main([root, "--out", str(tmp_path / "rep")]) == 0
    text = capsys.readouterr().out

    # 80, 70: SE 5 / sqrt(2) = 3.54; 75, 72: 1.5 / sqrt(2) = 1.06; gains 5, -2: 3.5 / sqrt(2) = 2.47
    assert _erm_rows(text, "Model selection: training-domain validation") == ["| erm | 75.0 ± 3.5 | 75.0 ± 3.5 | 2 |"]
    assert _erm_rows(text, "The same runs without weight averaging") == ["| erm | 73.5 ± 1.1 | 73.5 ± 1.1 | 2 |"]
    assert _erm_rows(text, "Gain from weight averaging") == ["| erm | 1.5 ± 2.5 | 1.5 ± 2.5 | 2 |"]
    # without averaged runs neither table is there
    plain = str(tmp_path / "plain")
    _run(plain, "erm", "a", 0, 0.8, 0.9)
    assert report.main([plain, "--out", str(tmp_path / "rep2")]) == 0
    assert "without weight averaging" not in capsys.readouterr().out


def test_the_averaging_gain_leaves_out_runs_whose_two_models_were_tested_differently(tmp_path, capsys):
    """The paired gain compares like with like: a run whose model without averaging was tested
    with other views or test-time adaptation than the averaged one (recorded by fit, or a run
    written before fit recorded it whose averaged model used TTA) gives no gain and no raw cell."""
    root = str(tmp_path / "sweep")
    alike = {"test_views": "2x1", "tta": "adabn"}
    cases = {0: ({"evaluation": alike}, alike),                      # tested alike: counted
             1: ({"evaluation": alike}, {"test_views": "1x1", "tta": "none"}),  # differ: left out
             2: ({}, None)}                                          # old run with TTA: left out
    for seed, (avg, raw_ev) in cases.items():
        run_dir = _run(root, "erm", "a", seed, 0.80, 0.9)
        path = os.path.join(run_dir, "results.json")
        res = json.load(open(path))
        raw = {"best_epoch": 3, "test_acc": 0.70}
        if raw_ev is not None:
            raw["evaluation"] = raw_ev
        res["average"] = {"method": "swad", **avg, "unaveraged": raw}
        if seed == 2:
            res["tta"] = {"method": "adabn"}
        json.dump(res, open(path, "w"))
    assert report.main([root, "--out", str(tmp_path / "rep")]) == 0
    text = capsys.readouterr().out

    assert _erm_rows(text, "Gain from weight averaging") == ["| erm | 10.0 | 10.0 | 1 |"]  # seed 0 alone
    assert _erm_rows(text, "The same runs without weight averaging") == ["| erm | 70.0 | 70.0 | 1 |"]


def _comparison_rows(text: str, reference: str = "erm") -> list[str]:
    """The rows of the report's table ``### Paired difference vs <reference>...``."""
    part = text.split(f"### Paired difference vs {reference}:")[1].split("###")[0]
    return [ln for ln in part.splitlines() if ln.startswith("| ") and not ln.startswith("| Strategy")]


def _comparison_grid(root: str) -> None:
    erm = {("A", 0): 0.50, ("A", 1): 0.60, ("A", 2): 0.70, ("B", 0): 0.40, ("B", 1): 0.50, ("B", 2): 0.60}
    dann = {("A", 0): 0.60, ("A", 1): 0.72, ("A", 2): 0.78, ("B", 0): 0.50, ("B", 1): 0.59, ("B", 2): 0.71}
    coral = {("A", 0): 0.55, ("A", 1): 0.55, ("A", 2): 0.72}  # no B runs: paired on A only
    for name, grid in (("erm", erm), ("dann", dann), ("coral", coral)):
        for (target, seed), test in grid.items():
            _run(root, name, target, seed, test, 0.9)
    _run(root, "mixup", "B", 0, 0.45, 0.9)  # one pair with erm
    _run(root, "mixup", "C", 0, 0.45, 0.9)  # erm has no C: not a pair


def test_paired_difference_vs_erm_with_standard_error_interval_and_verdict(tmp_path, capsys):
    root = str(tmp_path / "runs")
    _comparison_grid(root)
    assert report.main([root]) == 0
    text = capsys.readouterr().out
    assert "### Paired difference vs erm: each strategy's accuracy minus erm's on the same held-out domain and seed" in text
    assert _comparison_rows(text) == [
        # coral - erm on A, seeds 0 1 2: +5, -5, +2 -> mean 0.667; std (ddof=0) sqrt((4.333^2 + 5.667^2 + 1.333^2) / 3)
        # = 4.190, SE 4.190 / sqrt(3) = 2.419; 95%: 0.667 -+ 1.96 x 2.419 = [-4.07, +5.41], contains 0
        "| coral | +0.7 ± 2.4 | [-4.1, +5.4] | 3 | within noise |",
        # dann - erm on A and B, seeds 0 1 2: +10 +12 +8 +10 +9 +11 -> mean 10; std sqrt(10 / 6) = 1.291,
        # SE 1.291 / sqrt(6) = 0.527; 95%: [8.97, 11.03], above 0
        "| dann | +10.0 ± 0.5 | [+9.0, +11.0] | 6 | better |",
        # mixup - erm: B seed 0 only (erm has no C): +5, one pair: the value alone, no interval
        "| mixup | +5.0 | - | 1 | too few pairs |",
    ]
    with open(tmp_path / "reports" / "runs" / "report_folder.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["table"] == "paired difference vs erm"]
    assert [(r["strategy"], r["mean_pct"], r["se_pct"], r["n_seeds"], r["ci95_low_pct"], r["ci95_high_pct"], r["verdict"])
            for r in rows] == [("coral", "0.6667", "2.4191", "3", "-4.0747", "5.408", "within noise"),
                               ("dann", "10.0", "0.527", "6", "8.967", "11.033", "better"),
                               ("mixup", "5.0", "", "1", "", "", "too few pairs")]


def test_reference_flag_chooses_what_the_others_are_compared_with(tmp_path, capsys):
    root = str(tmp_path / "runs")
    _comparison_grid(root)
    assert report.main([root, "--reference", "dann"]) == 0
    text = capsys.readouterr().out
    assert "### Paired difference vs dann:" in text and "Paired difference vs erm" not in text
    assert _comparison_rows(text, "dann") == [
        # erm - dann: -10 +- 0.527 (the mirror of dann - erm)
        "| erm | -10.0 ± 0.5 | [-11.0, -9.0] | 6 | worse |",
        # coral - dann on A: -5, -17, -6 -> mean -9.333; std sqrt((4.333^2 + 7.667^2 + 3.333^2) / 3) = 5.437,
        # SE 3.139; 95%: [-15.49, -3.18]
        "| coral | -9.3 ± 3.1 | [-15.5, -3.2] | 3 | worse |",
        "| mixup | -5.0 | - | 1 | too few pairs |",  # B seed 0: 45 - 50
    ]
    # a reference without runs is one line naming the rows there are
    assert report.main([root, "--reference", "fish"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--reference fish" in err[0] and "erm, coral, dann, mixup" in err[0]
    # without the default reference (erm), the table says so instead of comparing
    only = str(tmp_path / "no_erm")
    _run(only, "dann", "A", 0, 0.6, 0.9)
    _run(only, "coral", "A", 0, 0.5, 0.9)
    assert report.main([only]) == 0
    text = capsys.readouterr().out
    assert "Paired difference" not in text and "No paired comparison in this table: no `erm` runs" in text


def test_default_out_is_outside_the_scanned_folder_and_printed(tmp_path, capsys):
    root = tmp_path / "sweeps" / "ucf-hmdb"
    _run(str(root), "erm", "A", 0, 0.5, 0.9)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert report.main([str(root)]) == 0  # cwd: tmp_path (the autouse fixture)
    out = tmp_path / "reports" / "ucf-hmdb"
    assert sorted(os.listdir(out)) == ["report.md", "report_folder.csv", "report_folder.png"]
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if not str(p).startswith(str(tmp_path / "reports")))
    assert after == before  # nothing written into the folder of runs
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"wrote {os.path.join('reports', 'ucf-hmdb', 'report.md')}, report_folder.csv, report_folder.png (in {out})"
    # a trailing slash or "." in DIR names the same folder
    assert report.main([str(root) + os.sep]) == 0 and "(in " + str(out) + ")" in capsys.readouterr().out
