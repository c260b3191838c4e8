"""``python -m vidlit bench``: every benchmark runs in a tiny mode and prints its ratio line.
Benchmarks are not tests: nothing here asserts a timing."""
from __future__ import annotations

import os
import subprocess

import pytest

from tests.helpers import REPO, run_vidlit
from vidlit.commands import bench


def test_usage_and_unknown_name(capsys):
    assert bench.main([]) == 2
    assert "usage: python -m vidlit bench" in capsys.readouterr().out
    assert bench.main(["nope"]) == 2
    assert "unknown benchmark 'nope'" in capsys.readouterr().err


def test_missing_benchmark_file_is_a_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(bench, "repo_root", lambda: str(tmp_path))
    assert bench.main(["loop", "--quick"]) == 2
    err = capsys.readouterr().err
    assert "benchmarks/loop.py" in err and "does not exist" in err and "checkout" in err


@pytest.mark.parametrize("name", ["loop", "precision"])
def test_quick_in_process(name, capsys):
    assert bench.main([name, "--quick"]) == 0
    out = capsys.readouterr().out
    assert "RATIO " in out and "[reps: " in out


# every registered benchmark not run by another test here (infer: tests/test_export.py)
DELEGATED = [n for n in bench.NAMES if n not in ("loop", "precision", "ddp", "demo", "infer")]


@pytest.mark.parametrize("name", DELEGATED)
def test_quick_delegated(name, capsys):
    """Other benchmarks' own output formats: only that they run through the dispatcher."""
    assert bench.main([name, "--quick"]) == 0
    assert capsys.readouterr().out.strip()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ddp", "demo"])
def test_quick_subprocess_benchmarks(name):
    proc = run_vidlit("bench", name, "--quick", cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RATIO " in proc.stdout


@pytest.mark.slow
def test_gpu_check_runs_on_cpu():
    env = dict(os.environ, EPOCHS="1")
    proc = subprocess.run(["bash", os.path.join(REPO, "benchmarks", "gpu_check.sh"), "--cpu"], env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for line in ("all requirements found", "GPU_CHECK erm  mp4", "GPU_CHECK dann memory", "bottleneck:"):
        assert line in proc.stdout
