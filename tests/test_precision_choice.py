"""The default precision follows the hardware: bf16-mixed on CUDA and on CPUs with native bf16
(AVX-512 BF16, AMX), fp32 elsewhere; ``fit`` applies it and says so in one line."""
from __future__ import annotations

import os

import pytest

from tests.helpers import TINY_FLAGS
from vidlit.utils import precision
from vidlit.utils.precision import default_precision, detect



@pytest.fixture(autouse=True)
def _detected(monkeypatch):
    """These tests are about the detected default: without the suite's pinned VIDLIT_PRECISION."""
    monkeypatch.delenv("VIDLIT_PRECISION", raising=False)


def test_vidlit_precision_overrides_the_detection(monkeypatch):
    monkeypatch.setenv("VIDLIT_PRECISION", "32-true")
    choice = detect(use_cuda=False, flags={"avx512_bf16"})
    assert choice.precision == "32-true" and "VIDLIT_PRECISION=32-true" in choice.line()
    monkeypatch.delenv("VIDLIT_PRECISION")
    assert detect(use_cuda=False, flags={"avx512_bf16"}).precision == "bf16-mixed"

@pytest.mark.parametrize("flags, cuda, cuda_bf16, want", [
    ({"avx2", "avx512f", "avx512_vnni"}, False, True, "32-true"),  # AVX-512 without BF16: fp32
    ({"avx2"}, False, True, "32-true"),
    (set(), False, True, "32-true"),
    ({"avx2", "avx512f", "avx512_bf16"}, False, True, "bf16-mixed"),
    ({"amx_tile", "amx_bf16"}, False, True, "bf16-mixed"),
    ({"avx2"}, True, True, "bf16-mixed"),  # a GPU with bf16, whatever the CPU
    ({"avx512_bf16"}, True, False, "32-true"),  # a GPU without bf16 (pre-Ampere): not the CPU's answer
])
def test_decision(flags, cuda, cuda_bf16, want):
    assert default_precision(cuda, flags, cuda_bf16=cuda_bf16) == want


def test_cpu_flags_read_from_cpuinfo(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True, "amx_bf16": False}, raising=False)
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n\nprocessor\t: 1\n")
    flags = precision.cpu_flags(str(info))
    assert {"avx2", "avx512_bf16", "avx512f"} <= flags and "amx_bf16" not in flags  # False capabilities are not flags
    assert precision.cpu_flags(str(tmp_path / "absent")) == {"avx2"}  # no /proc/cpuinfo (not Linux): torch's only


def test_the_line_names_the_reason():
    on = detect(use_cuda=False, flags={"avx2", "avx512_bf16"})
    off = detect(use_cuda=False, flags={"avx2"})
    assert on.line() == "vidlit: precision bf16-mixed (CPU has AVX-512 BF16; --trainer.precision to change)"
    assert off.precision == "32-true" and off.line().startswith("vidlit: precision 32-true (CPU without AVX-512 BF16 or AMX")


@pytest.mark.parametrize("flags, want", [({"avx2"}, "32-true"), ({"avx2", "amx_bf16"}, "bf16-mixed")])
def test_fit_uses_and_prints_the_choice(tiny_root, tmp_path, capsys, monkeypatch, flags, want):
    import yaml

    from vidlit.commands.cli import run_cli

    monkeypatch.setattr(precision, "cpu_flags", lambda cpuinfo="/proc/cpuinfo": set(flags))
    run_dir = str(tmp_path / "run")
    cli = run_cli(["fit", "--data.root", tiny_root, "--trainer.default_root_dir", run_dir, *TINY_FLAGS,
                   "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1"])
    assert cli.trainer.precision == want
    err = capsys.readouterr().err
    assert [ln for ln in err.splitlines() if ln.startswith("vidlit: precision")] == [f"vidlit: precision {want} ({precision.reason(want, False, flags)}; --trainer.precision to change)"]
    with open(os.path.join(run_dir, "config.yaml")) as fh:
        assert yaml.safe_load(fh)["trainer"]["precision"] == want  # the run's config says what it ran with
    # inference chooses the same way (the checkpoint's run settings carry no precision)
    cli = run_cli(["test", "--data.root", tiny_root, "--ckpt_path", os.path.join(run_dir, "checkpoints", "last.ckpt"),
                   "--trainer.enable_progress_bar", "false", "--data.num_workers", "0"])
    assert cli.trainer.precision == want
    assert f"vidlit: precision {want} (" in capsys.readouterr().err


def test_a_given_precision_is_kept_and_not_announced(tiny_root, tmp_path, capsys, monkeypatch):
    from vidlit.commands.cli import run_cli

    monkeypatch.setattr(precision, "cpu_flags", lambda cpuinfo="/proc/cpuinfo": {"avx512_bf16"})
    cli = run_cli(["fit", "--data.root", tiny_root, "--trainer.default_root_dir", str(tmp_path / "run"), *TINY_FLAGS,
                   "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
                   "--trainer.precision", "32-true"])
    assert cli.trainer.precision == "32-true"
    assert "vidlit: precision" not in capsys.readouterr().err
