"""The multi-domain DataModule on real (generated) mp4 files."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

from datamodules.folder import FolderDataModule
from vidlit.data import DataError
from vidlit.data.sampler import DomainBalancedBatchSampler
from vidlit.data.synthetic import CLASSES, DOMAINS, render_video


def make_dm(root, **kw) -> FolderDataModule:
    args = dict(root=root, num_frames=4, size=32, batch_size=12, num_workers=0)
    args.update(kw)
    dm = FolderDataModule(**args)
    dm.trainer = None
    return dm


def test_defaults_and_shapes(tiny_root):
    dm = make_dm(tiny_root)
    dm.prepare_index()
    assert dm.source_domains == list(DOMAINS[:-1]) and dm.target_domains == [DOMAINS[-1]]
    assert dm.class_names == sorted(CLASSES) and dm.num_classes == 5 and dm.num_domains == 3
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["video"].shape == (12, 3, 4, 32, 32) and batch["video"].dtype == torch.uint8
    assert batch["label"].dtype == torch.int64 and batch["domain"].max() < 3
    val = next(iter(dm.val_dataloader()[0]))
    assert val["video"].shape[1:] == (3, 4, 32, 32)
    test = next(iter(dm.test_dataloader()))
    assert set(test["domain"].tolist()) == {0}


def test_every_batch_holds_every_source_domain(tiny_root):
    dm = make_dm(tiny_root, target_domains=["clean"], batch_size=7)
    dm.setup("fit")
    loader = dm.train_dataloader()
    n = 0
    for batch in loader:
        counts = torch.bincount(batch["domain"], minlength=3)
        assert (counts >= 2).all(), counts  # 7 over 3 domains: 3, 2, 2
        n += 1
    assert n == len(loader) > 0


def test_no_video_in_both_train_and_val(tiny_root):
    dm = make_dm(tiny_root, holdout_fraction=0.3)
    dm.prepare_index()
    train = {r.path for r in dm.train_records}
    val = {r.path for r in dm.val_records}
    assert train and val and not train & val
    assert {r.domain for r in dm.val_records} == set(dm.source_domains)
    assert not {r.path for r in dm.test_records} & (train | val)


def test_clips_are_resized_whatever_the_source_resolution(tiny_root):
    dm = make_dm(tiny_root, size=24)
    dm.setup("fit")
    assert next(iter(dm.val_dataloader()[0]))["video"].shape[-2:] == (24, 24)


def test_training_batches_are_deterministic(tiny_root):
    a, b = make_dm(tiny_root), make_dm(tiny_root)
    a.setup("fit"), b.setup("fit")
    ba, bb = next(iter(a.train_dataloader())), next(iter(b.train_dataloader()))
    assert torch.equal(ba["video"], bb["video"]) and torch.equal(ba["label"], bb["label"])


def test_sampler_shards_are_disjoint_and_balanced():
    domains = np.repeat([0, 1, 2], [10, 14, 9])
    seen = []
    for rank in range(2):
        s = DomainBalancedBatchSampler(domains, batch_size=6, seed=1, rank=rank, world_size=2)
        s.set_epoch(3)
        batches = list(s)
        assert len(batches) == len(s)
        for batch in batches:
            assert sorted(np.bincount([domains[i] for i, _ in batch], minlength=3)) == [2, 2, 2]
        seen.append({i for batch in batches for i, _ in batch})
    assert not seen[0] & seen[1]


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(target_domains=["nope"]), "unknown domain 'nope'"),
        (dict(target_domains=list(DOMAINS)), "no source domain left"),
        (dict(source_domains=["clean"], target_domains=["clean"]), "both source and target"),
    ],
)
def test_bad_domain_flags(tiny_root, kwargs, message):
    with pytest.raises(DataError, match=message):
        make_dm(tiny_root, **kwargs).prepare_index()


def test_missing_root_and_empty_root(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        make_dm(str(tmp_path / "missing")).prepare_index()
    with pytest.raises(DataError, match="no videos found"):
        make_dm(str(tmp_path)).prepare_index()


def test_classes_that_differ_between_domains(tiny_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_root, root)
    shutil.rmtree(root / "colour" / "circle")
    with pytest.raises(DataError, match="domain 'colour' lacks class"):
        make_dm(str(root)).prepare_index()
    dm = make_dm(str(root), classes=["move_left", "move_right"])
    assert dm.num_classes == 2


def test_unreadable_videos_are_reported_together(tiny_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_root, root)
    (root / "clean" / "circle" / "empty.mp4").write_bytes(b"")
    (root / "shaky" / "circle" / "text.mp4").write_text("not a video")
    with pytest.raises(DataError) as err:
        make_dm(str(root)).prepare_index()
    msg = str(err.value)
    assert "2 unreadable video(s)" in msg and "empty.mp4" in msg and "text.mp4" in msg


def test_generated_classes_need_motion():
    """Where the object is in a frame (pooled over the video's frames) is the same for every class:
    only the motion between frames tells the classes apart."""
    rng = np.random.default_rng
    centroids = {}
    for c in CLASSES:
        pts = [np.argwhere(f[..., 0] > 150).mean(0) for i in range(150) for f in render_video("clean", c, rng([7, i]), 16, 64)]
        centroids[c] = np.mean(pts, 0)
    spread = np.ptp(np.stack(list(centroids.values())), axis=0)
    assert (spread < 5.0).all(), centroids  # pixels, on a 64 px frame (sampling noise ~1.2 px)
    clip = render_video("clean", "move_right", rng([1]), frames=8, size=32)
    xs = [np.argwhere(f[..., 0] > 150)[:, 1].mean() for f in clip]
    assert xs[-1] > xs[0] + 4  # the object really moves right


def test_synthetic_set_is_deterministic(tmp_path):
    from vidlit.data import synthetic

    a = synthetic.generate(seed=3, videos_per_class=1, size=32, cache_dir=str(tmp_path / "a"))
    b = synthetic.generate(seed=3, videos_per_class=1, size=32, cache_dir=str(tmp_path / "b"))
    files = sorted(os.path.relpath(os.path.join(d, f), a) for d, _, fs in os.walk(a) for f in fs if f.endswith(".mp4"))
    assert len(files) == len(DOMAINS) * len(CLASSES)
    for f in files:
        assert open(os.path.join(a, f), "rb").read() == open(os.path.join(b, f), "rb").read()
