"""A file that is not a checkpoint, or one that is not safe to load, given wherever vidlit reads a
checkpoint or weights file: one line naming the file and what to pass instead, exit status 2, and
never torch's advice to load it with ``weights_only=False`` (that runs whatever code the file holds)."""
from __future__ import annotations

import os
import random
import re
import zipfile

import pytest
import torch

from tests.helpers import REPO, TINY_FLAGS, run_vidlit


class Payload:
    """A custom class in a pickle: ``torch.load(weights_only=True)`` must refuse to import it."""

    def __init__(self) -> None:
        self.note = "unpickling me imports tests.test_checkpoint_errors"


def _random_file(path: str, seed: int, first: bytes = b"") -> str:
    data = first + random.Random(seed).randbytes(4096)
    if not first:
        data = bytes([data[0] | 0x01 if data[0] in (0x50, 0x80) else data[0]]) + data[1:]  # not 'PK' nor a pickle's 0x80
    with open(path, "wb") as fh:
        fh.write(data)
    return path


def _bad_files(folder) -> dict[str, str]:
    """Files that are not checkpoints: random bytes (several: torch fails on them in several ways,
    some starting like a pickle), a truncated zip archive (torch.save's format), another zip."""
    files = {f"random{s}": _random_file(str(folder / f"random{s}.ckpt"), s) for s in range(3)}
    files["pickle-like"] = _random_file(str(folder / "pickle-like.ckpt"), 7, first=b"\x80\x02")
    good = folder / "good.pt"
    torch.save({"state_dict": {"w": torch.ones(3)}}, good)
    data = good.read_bytes()
    (folder / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    files["truncated"] = str(folder / "truncated.ckpt")
    with zipfile.ZipFile(folder / "other.zip.ckpt", "w") as z:
        z.writestr("readme.txt", "not a checkpoint")
    files["zip"] = str(folder / "other.zip.ckpt")
    return files


def _unsafe_file(folder) -> str:
    path = str(folder / "unsafe.ckpt")
    torch.save({"state_dict": {"w": torch.ones(3)}, "extra": Payload()}, path)
    return path


def assert_one_line_error(proc, path: str, *expect: str) -> str:
    """Exit status 2, the error in one line (the last on stderr: ``fit`` prints its seed and
    precision before) naming ``path``, containing ``expect``, no unsafe advice, no traceback, no warning."""
    out = proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, out[-3000:]
    errors = [ln for ln in lines if ln.startswith("vidlit: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], out[-3000:]
    assert all(ln.startswith(("vidlit: ", "Seed set to")) for ln in lines), out[-3000:]
    lines = errors
    assert path in lines[0], lines[0]
    for text in expect:
        assert text in lines[0], lines[0]
    assert not UNSAFE_ADVICE.search(out), out
    assert "Traceback" not in out and "Warning" not in out, out
    return lines[0]


NOT_A_CHECKPOINT = "is not a checkpoint"
#: torch's advice to load with weights_only=False, in any of its spellings
UNSAFE_ADVICE = re.compile(r"weights_only\W{0,12}(set to\W{0,4})?(=|to)?\W{0,4}False", re.I)


@pytest.mark.parametrize("command", ["test", "validate", "predict"])
def test_eval_commands_say_the_file_is_not_a_checkpoint(tmp_path, command):
    for kind, path in _bad_files(tmp_path).items():
        proc = run_vidlit(command, "--ckpt_path", path)
        line = assert_one_line_error(proc, path, NOT_A_CHECKPOINT, "--ckpt_path")
        assert "RUN/checkpoints/" in line, (kind, line)  # what to pass instead


def test_eval_commands_refuse_a_pickle_that_imports_code(tmp_path):
    path = _unsafe_file(tmp_path)
    for command in ("test", "validate", "predict"):
        proc = run_vidlit(command, "--ckpt_path", path, cwd=REPO)
        assert_one_line_error(proc, path, "tests.test_checkpoint_errors.Payload", "could run code")


def test_fit_resume_export_explain_adapt_say_the_file_is_not_a_checkpoint(tiny_root, tmp_path):
    files = _bad_files(tmp_path)
    unsafe = _unsafe_file(tmp_path)
    for path in (files["random0"], files["truncated"]):
        for argv in (["fit", "--data.root", tiny_root, *TINY_FLAGS, "--trainer.default_root_dir", str(tmp_path / "run"),
                      "--ckpt_path", path],
                     ["export", "--ckpt_path", path],
                     ["explain", "--ckpt_path", path],
                     ["adapt", "--ckpt_path", path, "--shots", "1"],
                     ["adapt", "--ckpt_path", path, "--shots", "0"]):
            assert_one_line_error(run_vidlit(*argv), path, NOT_A_CHECKPOINT)
    for argv in (["export", "--ckpt_path", unsafe], ["explain", "--ckpt_path", unsafe]):
        assert_one_line_error(run_vidlit(*argv, cwd=REPO), unsafe, "tests.test_checkpoint_errors.Payload", "could run code")


def test_pretrained_and_data_run_say_the_file_is_not_a_checkpoint(tiny_root, tmp_path):
    files = _bad_files(tmp_path)
    unsafe = _unsafe_file(tmp_path)
    fit = ["fit", "--data.root", tiny_root, *TINY_FLAGS, "--trainer.max_epochs", "1", "--trainer.default_root_dir"]
    for kind in ("random1", "truncated"):
        path = files[kind]
        proc = run_vidlit(*fit, str(tmp_path / kind), "--model.pretrained", path)
        assert_one_line_error(proc, path, NOT_A_CHECKPOINT, "--model.pretrained")
        # predict on video files, with the classes of a "run" that is this file
        video = next(os.path.join(dp, f) for dp, _, fs in os.walk(tiny_root) for f in fs if f.endswith(".mp4"))
        proc = run_vidlit("predict", "--dataset", "files", "--data.videos", f"[{video}]", "--data.run", path,
                          "--trainer.default_root_dir", str(tmp_path / f"p-{kind}"))
        assert_one_line_error(proc, path, NOT_A_CHECKPOINT, "--data.run")
    proc = run_vidlit(*fit, str(tmp_path / "unsafe"), "--model.pretrained", unsafe, cwd=REPO)
    assert_one_line_error(proc, unsafe, "tests.test_checkpoint_errors.Payload", "could run code")


def test_library_loaders_never_advise_unsafe_loading(tmp_path):
    """The functions behind every entry point, on every kind of bad file: a VidlitError (exit 2 in
    the CLI) whose message names the file and never suggests ``weights_only=False``."""
    from vidlit.run.checkpoint import load_checkpoint
    from vidlit.utils.errors import VidlitError
    from vidlit.run.checkpoint import trained_run_info
    from vidlit.models.weights import forget_file, read_file

    files = {**_bad_files(tmp_path), "unsafe": _unsafe_file(tmp_path)}
    for kind, path in files.items():
        for load in (load_checkpoint, read_file, trained_run_info):
            forget_file()
            with pytest.raises(VidlitError) as info:
                load(path)
            msg = str(info.value)
            assert path in msg and "\n" not in msg and not UNSAFE_ADVICE.search(msg), (kind, load.__name__, msg)
            assert ("could run code" if kind == "unsafe" else NOT_A_CHECKPOINT) in msg, (kind, load.__name__, msg)
