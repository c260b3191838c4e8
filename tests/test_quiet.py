"""A default run prints nothing a user cannot act on (issue 14, item 9)."""
from __future__ import annotations

import warnings

from tests.helpers import TINY_FLAGS, run_vidlit

NOISE = (
    "litlogger", "LeafSpec", "You have overridden", "was called before the ``update``", "FLOPs", "Flops",
    "TPU available", "Loading `train_dataloader`", "DataLoader 0", "DataLoader 1", "The dirpath has changed",
)


def _defaults(flags: list[str]) -> list[str]:
    """TINY_FLAGS with the progress bar and the model summary left at their defaults."""
    out, skip = [], False
    for i, a in enumerate(flags):
        if skip:
            skip = False
            continue
        if a in ("--trainer.enable_progress_bar", "--trainer.enable_model_summary"):
            skip = True
            continue
        out.append(a)
    return out


def test_fit_and_validate_print_no_noise(tiny_root, tmp_path):
    run_dir = str(tmp_path / "run")
    flags = _defaults(TINY_FLAGS)
    fit = run_vidlit("fit", "--data.root", tiny_root, "--trainer.default_root_dir", run_dir, *flags, env={"WANDB_MODE": "disabled"})
    assert fit.returncode == 0, fit.stderr[-3000:]
    ckpt = f"{run_dir}/checkpoints/last.ckpt"
    val = run_vidlit("validate", "--data.root", tiny_root, "--ckpt_path", ckpt, "--trainer.default_root_dir", str(tmp_path / "v"),
                     *flags, env={"WANDB_MODE": "disabled"})
    assert val.returncode == 0, val.stderr[-3000:]
    for proc in (fit, val):
        text = proc.stdout + proc.stderr
        assert [n for n in NOISE if n in text] == [], text[-4000:]
        assert "Warning" not in text, text[-4000:]
    assert "Trainable params" in fit.stdout and "| Params" in fit.stdout  # the summary is there, without FLOPs
    # validate names the domains instead of DataLoader 0 / 1
    for domain, role in (("clean", "source (val split)"), ("texture", "target (held out)")):
        assert any(domain in line and role in line for line in val.stdout.splitlines()), val.stdout
    assert "source val loss:" in val.stdout


def test_filters_are_narrow():
    import vidlit.utils.quiet as quiet

    quiet.install()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        quiet._installed = False
        quiet.install()  # re-add our filters in front of "default"
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning)
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", UserWarning)  # other category: kept
        warnings.warn("You have overridden `on_after_batch_transfer` in both `LightningModule` and `LightningDataModule`.")
        # the summary's size estimate under bf16-mixed (the default on bf16 CPUs): dropped; another precision's kept
        warnings.warn("Precision bf16-mixed is not supported by the model summary.  Estimated model size ...", UserWarning)
        warnings.warn("Precision transformer-engine is not supported by the model summary.", UserWarning)
    assert [str(w.message)[:30] for w in caught] == ["`isinstance(treespec, LeafSpec", "You have overridden `on_after_",
                                                     "Precision transformer-engine i"]


def test_resume_filter_drops_only_its_own_folder(tmp_path):
    from vidlit.utils.quiet import expect_checkpoint_dir_warning

    mine, other = tmp_path / "run" / "checkpoints", tmp_path / "other" / "checkpoints"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        expect_checkpoint_dir_warning(str(mine))
        warnings.warn(f"Checkpoint directory {mine} exists and is not empty.", UserWarning)
        warnings.warn(f"Checkpoint directory {other} exists and is not empty.", UserWarning)
        warnings.warn(f"Checkpoint directory {mine} exists and is not empty. And more.", UserWarning)
    assert [str(w.message) for w in caught] == [f"Checkpoint directory {other} exists and is not empty.",
                                               f"Checkpoint directory {mine} exists and is not empty. And more."]


def test_model_summary_has_no_flops_on_a_terminal_or_in_a_file(monkeypatch, capsys):
    import sys

    from vidlit.callbacks.tables import VidlitModelSummary

    data = [(" ", ["0", "1"]), ("Name", ["backbone", "head"]), ("Type", ["Backbone", "Linear"]), ("Params", ["410 K", "965"]),
            ("Mode", ["train", "train"]), ("FLOPs", ["0", "0"])]
    for tty in (False, True):
        monkeypatch.setattr(sys.stdout, "isatty", lambda tty=tty: tty, raising=False)
        VidlitModelSummary.summarize(data, 411000, 411000, 1.645, {"train": 27, "eval": 0}, total_flops=0)
        out = capsys.readouterr().out
        assert "backbone" in out and "410 K" in out and "Trainable params" in out
        assert "FLOPs" not in out and "Flops" not in out
