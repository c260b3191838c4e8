"""Loading: TSN sampling, multi-view test batches and their averaging, unlabeled target clips,
splits that depend on nothing but the seed, and bad videos during training (skip / one-line error)."""
from __future__ import annotations

import json
import os
import random
import shutil
from types import SimpleNamespace

import av
import numpy as np
import pytest
import torch
from lightning.fabric.utilities.data import _set_sampler_epoch

from datamodules.folder import FolderDataModule
from tests.helpers import TINY_FLAGS, run_vidlit
from vidlit.data import DataError
from vidlit.data.clips import ClipDataset, ClipTransform, clip_indices
from vidlit.data.datamodule import parse_views
from vidlit.data.records import VideoRecord
from vidlit.data.video_io import VideoDecodeError, decode_frames
from vidlit.models.strategy import STRATEGIES


def make_dm(root: str, **kw) -> FolderDataModule:
    args = dict(root=root, num_frames=4, size=32, batch_size=6, num_workers=0, decoder="pyav")
    args.update(kw)
    return FolderDataModule(**args)


# ----------------------------------------------------------------------------- sampling
def test_tsn_segments_one_snippet_each_random_in_training_centred_in_evaluation():
    n, k, f, s = 100, 4, 3, 2  # span 5 frames, segments of 25
    for seed in range(20):
        idx = clip_indices(n, f, s, np.random.default_rng(seed), num_clips=k)
        assert idx.shape == (k * f,)
        for seg, snippet in enumerate(idx.reshape(k, f)):
            assert np.all(np.diff(snippet) == s)
            assert seg * 25 <= snippet[0] and snippet[-1] < (seg + 1) * 25
    evaluation = clip_indices(n, f, s, None, num_clips=k)
    assert evaluation.reshape(k, f)[:, 0].tolist() == [10, 35, 60, 85]  # centred: (25 - 5) // 2 in each
    assert clip_indices(n, f, s, None, start=7, num_clips=k).tolist() == (evaluation + 7).tolist()
    trains = {tuple(clip_indices(n, f, s, np.random.default_rng(seed), num_clips=k)) for seed in range(10)}
    assert len(trains) > 1


def test_short_videos_loop_or_pad_in_every_segment():
    assert clip_indices(3, 4, 1, None).tolist() == [0, 1, 2, 0]
    assert clip_indices(3, 4, 1, None, short="pad").tolist() == [0, 1, 2, 2]
    # 2 segments of a 4-frame video, snippets of 3 frames 2 apart (span 5): each starts at its segment
    assert clip_indices(4, 3, 2, None, short="pad", num_clips=2).tolist() == [0, 2, 3, 2, 3, 3]
    assert clip_indices(4, 3, 2, None, short="loop", num_clips=2).tolist() == [0, 2, 0, 2, 0, 2]
    # segments shorter than a snippet (but not the video): snippets overlap, staying inside the video
    assert clip_indices(6, 3, 2, None, num_clips=2).tolist() == [0, 2, 4, 1, 3, 5]


def test_num_clips_concatenates_snippets_along_time(tiny_root):
    dm = make_dm(tiny_root, num_clips=2, frame_stride=1)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["video"].shape == (6, 3, 8, 32, 32) and batch["video"].dtype == torch.uint8


# ----------------------------------------------------------------------------- views
def test_views_flag_parsing():
    assert parse_views("10x3") == (10, 3) and parse_views("1x1") == (1, 1) and parse_views(5) == (5, 1)
    for bad in ("3x", "x3", "0x3", "ten"):
        with pytest.raises(DataError, match="--data.test_views"):
            parse_views(bad)


def test_three_crops_are_left_centre_right_or_top_centre_bottom():
    t = ClipTransform(size=4, train=False)
    ramp = torch.arange(12, dtype=torch.uint8)
    landscape = ramp.view(1, 1, 1, 12).expand(2, 3, 4, 12)  # (T, C, H, W), value = column
    crops = t.crops(landscape, [0.0, 0.5, 1.0])
    assert [c[0, 0, 0].tolist() for c in crops] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    portrait = ramp.view(1, 1, 12, 1).expand(2, 3, 12, 4)  # value = row
    crops = t.crops(portrait, [0.0, 0.5, 1.0])
    assert [c[0, 0, :, 0].tolist() for c in crops] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert all(c.shape == (2, 3, 4, 4) for c in crops)


def _index_frames(rec: VideoRecord, indices: np.ndarray) -> np.ndarray:
    """A fake decoder: frame i is uniformly grey level i (T, 8, 12, 3)."""
    return np.broadcast_to(np.asarray(indices, np.uint8)[:, None, None, None], (len(indices), 8, 12, 3)).copy()


def test_multi_view_items_hold_evenly_spaced_clips_times_crops():
    rec = VideoRecord(path="v.mp4", label="a", domain="d", num_frames=100)
    ds = ClipDataset([rec], ["a"], ["d"], num_frames=2, stride=3, transform=ClipTransform(8, False),
                     decode=_index_frames, views=(4, 3))
    video = ds[0]["video"]
    assert video.shape == (12, 3, 2, 8, 8) and video.dtype == torch.uint8  # (V, C, T, H, W)
    starts = video[::3, 0, 0, 0, 0].tolist()  # the first crop of each clip
    assert starts == [12, 36, 60, 84]  # the centres of 4 equal parts of the possible starts 0..96
    assert video[0, 0, 1, 0, 0] == 15  # stride 3
    assert torch.equal(video[0], video[1]) and torch.equal(video[1], video[2])  # flat frames: crops agree


def test_test_batches_hold_views_and_whole_videos(tiny_root):
    dm = make_dm(tiny_root, test_views="2x3", eval_batch_size=12)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch["video"].shape == (2, 6, 3, 4, 32, 32) and batch["video"].dtype == torch.uint8
    assert next(iter(dm.predict_dataloader()))["video"].shape == (2, 6, 3, 4, 32, 32)
    assert next(iter(dm.val_dataloader()[1]))["video"].shape == (12, 3, 4, 32, 32)  # validation: one view
    assert dm.test_set[0]["video"].shape == (3, 4, 32, 32)


def _module():
    module = STRATEGIES.get("erm")(num_classes=5, num_domains=3, backbone="tiny3d")
    return module.eval()


def test_view_predictions_are_softmax_averages_computed_in_chunks(monkeypatch):
    torch.manual_seed(0)
    module = _module()
    video = torch.randint(0, 256, (2, 5, 3, 4, 16, 16), dtype=torch.uint8)  # (B, V, C, T, H, W)
    batch = module.on_after_batch_transfer({"video": video, "label": torch.tensor([1, 2])}, 0)
    norm = batch["video"]
    assert norm.shape == video.shape and norm.dtype == torch.float32
    torch.testing.assert_close(norm[:, 3], module.normalize(video[:, 3]))
    sizes = []
    module.head.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    monkeypatch.setattr(module, "_trainer", SimpleNamespace(datamodule=SimpleNamespace(eval_batch_size=4)))
    with torch.no_grad():
        probs = module._video_probs(norm)
        expected = torch.stack([module(norm[b]).softmax(-1).mean(0) for b in range(2)])
    assert sizes[:3] == [4, 4, 2]  # 10 clips, at most eval_batch_size at a time
    torch.testing.assert_close(probs, expected)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2))
    with torch.no_grad():  # one view per video: the plain softmax
        torch.testing.assert_close(module._video_probs(norm[:, 0]), module(norm[:, 0]).softmax(-1))


def test_test_step_scores_each_video_once_from_its_views(monkeypatch):
    module = _module()
    module.setup("test")
    monkeypatch.setattr(module, "_trainer", None)
    video = torch.randn(3, 4, 3, 4, 16, 16)
    batch = {"video": video, "label": torch.tensor([0, 1, 2]), "domain": torch.tensor([0, 0, 0])}
    with torch.no_grad():
        module.test_step(batch, 0)
        out = module.predict_step(batch, 0)
    assert module.test_acc.total.tolist() == [3]
    assert out["probs"].shape == (3, 5)


# ----------------------------------------------------------------------------- unlabeled target clips
def test_unlabeled_target_clips_in_training_batches_only(tiny_root):
    dm = make_dm(tiny_root, unlabeled_target=True, target_batch_size=4)
    dm.setup("fit")
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader)
    for batch in batches:
        assert batch["target_video"].shape == (4, 3, 4, 32, 32) and batch["target_video"].dtype == torch.uint8
        assert batch["video"].shape == (6, 3, 4, 32, 32) and batch["bad"].shape == (10,)
        assert set(batch["target_domain"].tolist()) <= set(range(len(dm.target_domains)))
        assert "target_label" not in batch
    target_paths = {r.path for r in dm.unlabeled_target_records()}
    assert {r.domain for r in dm.unlabeled_target_records()} == set(dm.target_domains)
    assert not target_paths & {r.path for r in dm.train_records + dm.val_records}
    for val in dm.val_dataloader():
        assert all(not k.startswith("target") for k in next(iter(val)))
    # the target clips have their own augmentation stream: not the source stream's crops
    same_stream_as_source = dm._dataset(dm.unlabeled_target_records(), dm.target_domains, train=True)
    assert not torch.equal(dm.target_train_set[(0, 0)]["video"], same_stream_as_source[(0, 0)]["video"])


def test_target_clips_are_reshuffled_per_epoch_and_deterministic(tiny_root):
    a, b = make_dm(tiny_root, unlabeled_target=True), make_dm(tiny_root, unlabeled_target=True)
    a.setup("fit"), b.setup("fit")
    la, lb = a.train_dataloader(), b.train_dataloader()
    first = [k for batch in la.batch_sampler for k in batch if k[0] == "t"]
    assert first == [k for batch in lb.batch_sampler for k in batch if k[0] == "t"]
    _set_sampler_epoch(la, 1)
    second = [k for batch in la.batch_sampler for k in batch if k[0] == "t"]
    assert [i for _, i, _ in first] != [i for _, i, _ in second]


# ----------------------------------------------------------------------------- splits and sampling order
class ShuffledListing(FolderDataModule):
    """The same videos, listed in a different order."""

    def __init__(self, *args, listing_seed: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.listing_seed = listing_seed

    def index_records(self) -> list[VideoRecord]:
        records = super().index_records()
        random.Random(self.listing_seed).shuffle(records)
        return records


def test_splits_do_not_depend_on_listing_order_or_workers(tiny_root):
    dms = [ShuffledListing(root=tiny_root, num_frames=4, size=32, batch_size=6, num_workers=w, listing_seed=s, decoder="pyav")
           for s, w in ((0, 0), (1, 2), (2, 0))]
    for dm in dms:
        dm.setup("fit")
    paths = lambda recs: [r.path for r in recs]  # noqa: E731
    for dm in dms[1:]:
        assert paths(dm.train_records) == paths(dms[0].train_records)
        assert paths(dm.val_records) == paths(dms[0].val_records)
        assert paths(dm.test_records) == paths(dms[0].test_records)
    batches = [list(dm.train_dataloader()) for dm in dms[:2]]  # 0 workers vs 2 workers
    assert len(batches[0]) == len(batches[1])
    for x, y in zip(*batches):
        assert torch.equal(x["index"], y["index"]) and torch.equal(x["video"], y["video"])


def test_batch_sampler_is_reshuffled_through_lightnings_epoch_hook(tiny_root):
    dm = make_dm(tiny_root)
    dm.setup("fit")
    loader = dm.train_dataloader()
    order = lambda: [i for batch in loader.batch_sampler for i, _ in batch]  # noqa: E731
    epoch0 = order()
    _set_sampler_epoch(loader, 1)  # what Lightning's fit loop calls each epoch
    epoch1 = order()
    assert sorted(epoch0) == sorted(epoch1) and epoch0 != epoch1
    _set_sampler_epoch(loader, 0)
    assert order() == epoch0


# ----------------------------------------------------------------------------- bad videos in training
def _corrupt_middle(path: str) -> None:
    """Overwrite the middle packets: the file still opens, probes and starts, but a clip fails."""
    with av.open(path) as c:
        packets = sorted((p.pos, p.size) for p in c.demux(c.streams.video[0]) if p.size)
    data = bytearray(open(path, "rb").read())
    rng = np.random.default_rng(0)
    for pos, size in packets[4:13]:
        data[pos : pos + size] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    open(path, "wb").write(bytes(data))


@pytest.fixture(scope="module")
def bad_root(tiny_root, tmp_path_factory) -> tuple[str, str]:
    """A copy of the tiny set with one training video broken in the middle (passes indexing)."""
    root = str(tmp_path_factory.mktemp("bad") / "data")
    shutil.copytree(tiny_root, root)
    dm = make_dm(root)
    dm.prepare_index()
    path = next(r.path for r in dm.train_records if r.domain == dm.source_domains[0])
    _corrupt_middle(path)
    with pytest.raises(VideoDecodeError):
        decode_frames(path, [4, 6])
    return root, path


def test_skip_replaces_a_bad_clip_with_one_of_the_same_domain_and_class(bad_root):
    root, path = bad_root
    dm = make_dm(root, on_bad_video="skip")
    dm.setup("fit")
    i = next(j for j, r in enumerate(dm.train_records) if r.path == path)
    item = dm.train_set[(i, 0)]
    assert item["bad"] == 1 and item["index"] != i
    assert item["label"] == dm.train_set.labels[i] and item["domain"] == dm.train_set.domain_ids[i]
    strict = make_dm(root)
    strict.setup("fit")
    with pytest.raises(VideoDecodeError, match=f"{os.path.basename(path)}.*--data.on_bad_video skip"):
        strict.train_set[(i, 0)]


def test_cli_skip_counts_bad_videos_in_the_log_and_results(bad_root, tmp_path):
    root, _ = bad_root
    run = tmp_path / "run"
    proc = run_vidlit("fit", "--data.root", root, *TINY_FLAGS, "--data.num_workers", "2", "--data.on_bad_video", "skip", "--data.test_views", "2x3",
                      "--trainer.default_root_dir", str(run))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipping bad video" in proc.stderr
    logged = [row.split(",") for row in (run / "metrics.csv").read_text().splitlines()]
    col = logged[0].index("data/bad_videos")
    counts = [float(row[col]) for row in logged[1:] if row[col]]
    assert len(counts) == 2 and all(c >= 1 for c in counts)  # logged per epoch, hit in each of 2 epochs
    results = json.loads((run / "results.json").read_text())
    assert results["bad_videos"] == int(sum(counts))
    assert results["test_acc"] is not None


def test_cli_worker_decode_failure_is_one_line_naming_the_file(bad_root, tmp_path):
    root, path = bad_root
    proc = run_vidlit("fit", "--data.root", root, *TINY_FLAGS, "--data.num_workers", "2", "--trainer.max_epochs", "1",
                      "--trainer.default_root_dir", str(tmp_path / "run"))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("vidlit: error:")]
    assert len(errors) == 1 and errors[0].startswith(f"vidlit: error: {path}: decoding failed"), proc.stderr[-2000:]
