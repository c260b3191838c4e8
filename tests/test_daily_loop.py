"""The daily loop (tracker issue 25): ``fit --help`` opens with the flags people use, ``list`` shows
every switchable feature and whole descriptions, the foreground-share line gives its uniform
reference, and the explain strip has a colour scale and the video's frame numbers."""
from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import REPO

#: the flags the short section names, per subcommand (the brief of issue 25, part 6)
COMMON = ["--strategy", "--backbone", "--dataset", "--data.root", "--data.target_domains", "--trainer.precision",
          "--trainer.devices", "--config", "--seed_everything", "--ckpt_path"]


def _help(capsys, command: str) -> str:
    from vidlit.commands.main import main

    with pytest.raises(SystemExit) as ex:  # LightningCLI's help exits
        main([command, "--help"])
    assert ex.value.code in (0, None)
    return capsys.readouterr().out


@pytest.mark.parametrize("command,extra", [("fit", ["--trainer.max_epochs", "--ckpt_path last"]), ("test", ["--ckpt_path CKPT"])])
def test_help_opens_with_the_common_flags_then_the_full_list(capsys, command, extra):
    out = _help(capsys, command)
    full_at = out.index(f"usage: python -m vidlit [options] {command}")  # LightningCLI's own usage line
    short, full = out[:full_at], out[full_at:]
    rows = [ln for ln in short.splitlines() if ln.startswith("  --")]
    flags = [ln.split()[0] for ln in rows]
    assert set(COMMON) <= set(flags), set(COMMON) - set(flags)
    for flag in extra:
        assert any(ln.split(None, 2)[:2] == flag.split()[:2] if " " in flag else ln.split()[0] == flag for ln in rows), (flag, short)
    assert all(len(ln.split()) >= 3 for ln in rows)  # flag, value, one line saying what it is
    assert len(short.splitlines()) < 30 and "follows" in short.strip().splitlines()[-1]
    # every flag named is a real one of the full list (no typo): LightningCLI lists it
    for flag in flags:
        flag = {"--backbone": "--model.backbone"}.get(flag, flag)  # vidlit's short name (vidlit/commands/args.py)
        assert re.search(rf"(^|[\s\[,]){re.escape(flag)}([\s=\]]|$)", full, re.MULTILINE), flag
    assert len(full.splitlines()) > 300


def test_top_level_help_still_imports_neither_torch_nor_lightning():
    code = ("import sys\nfrom vidlit.commands.main import main, short_help\nshort_help('fit')\nmain(['--help'])\n"
            "bad = [m for m in ('torch', 'lightning') if m in sys.modules]\nassert not bad, bad\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_list_shows_every_feature_and_whole_descriptions(capsys):
    from vidlit.commands.cli import CALLBACK_GROUPS, callback_class
    from vidlit.commands.listing import main

    assert main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    features = [ln for ln in lines if ln.startswith("feature ")]
    assert len(features) == len(CALLBACK_GROUPS)
    for (key, target), line in zip(CALLBACK_GROUPS, features):
        cls = callback_class(target)
        first = " ".join(cls.__doc__.strip().split("\n\n")[0].split())[:40]
        assert line.split()[1] == f"--{key}.*" and first in line, (key, line)
    (files,) = [ln for ln in lines if ln.split()[:2] == ["dataset", "files"]]
    assert files.endswith("or a text file (one video path per line, relative to the file's folder), or "
                          "``--data.videos '[a.mp4, b.mp4]'``."), files
    # no description is cut mid-sentence
    for line in lines:
        if not line.startswith("backbone"):
            assert line.rstrip().endswith((".", ")")), line


def test_foreground_line_gives_the_uniform_reference():
    from vidlit.callbacks.saliency import ForegroundShare, foreground_line

    share, area = {"texture": 0.093, "shaky": 0.05, "colour": None}, {"texture": 0.0332, "shaky": 0.031, "colour": 0.03}
    results = {"foreground_share": dict(share), "foreground_share_info": {"mask_area": dict(area)}}
    (line,) = ForegroundShare().results_lines(results)
    assert results == {"foreground_share": share, "foreground_share_info": {"mask_area": area}}  # values unchanged
    assert line == foreground_line(share, area)
    cells = dict(re.findall(r"(\w+) [\d.]+% \(([\d.]+)x uniform\)", line))
    assert set(cells) == {"texture", "shaky"} and "colour -" in line
    for d, ratio in cells.items():
        assert float(ratio) == pytest.approx(share[d] / area[d], abs=0.05), (d, ratio)
    assert "texture 9.3% (2.8x uniform)" in line and "3.1%-3.3%" in line  # the object's area is stated
    # without mask_area (a results.json written before it was recorded): the shares alone
    assert foreground_line({"texture": 0.093}).endswith(": texture 9.3%")


def test_strip_has_a_colour_bar_and_the_video_frame_numbers(tmp_path, monkeypatch):
    from matplotlib.axes import Axes
    from PIL import Image

    from vidlit.inference.render import write_strip

    titles: list[str] = []
    real = Axes.set_title
    monkeypatch.setattr(Axes, "set_title", lambda self, label, *a, **k: (titles.append(label), real(self, label, *a, **k))[1])
    t = 4
    frames = np.full((t, 32, 32, 3), 128, np.uint8)
    maps = np.zeros((t, 32, 32), np.float32)  # all zero: the only red anywhere is the colour bar's top
    write_strip(str(tmp_path / "s.png"), frames, maps, "title", frame_index=[40, 42, 44, 46])
    assert titles == ["frame 40", "frame 42", "frame 44", "frame 46"]
    img = np.asarray(Image.open(tmp_path / "s.png").convert("RGB")).astype(int)
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    red, blue = (r > 150) & (b < 100) & (g < 100), (b > 150) & (r < 100) & (g < 100)
    _, xs = np.nonzero(red)
    assert len(xs) > 20, "no colour bar"
    assert xs.min() > 0.8 * img.shape[1]  # on the right of the strip
    x = int(np.median(xs))
    column_red, column_blue = np.nonzero(red[:, x])[0], np.nonzero(blue[:, x])[0]
    assert len(column_blue) and column_red.max() < column_blue.min()  # 1 (red) at the top, 0 (blue) at the bottom
    span = column_blue.max() - column_red.min()
    assert span > 0.4 * img.shape[0]  # a bar along the strip's height
    # without frame numbers: the clip's own positions
    titles.clear()
    write_strip(str(tmp_path / "t.png"), frames, maps, "title")
    assert titles == ["t=0", "t=1", "t=2", "t=3"]
