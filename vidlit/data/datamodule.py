"""The shared multi-domain LightningDataModule.

A dataset is a subclass that implements :meth:`MultiDomainDataModule.index_records` (returning
:class:`VideoRecord` s); everything else -- checks, holdout split, clip decoding, domain-balanced
batches, DDP sharding -- is shared. See ``datamodules/folder.py`` for the smallest example.
"""
from __future__ import annotations

import logging
import os
import re
from abc import abstractmethod
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Literal, Optional, Union

import lightning.pytorch as pl
import numpy as np
from torch.utils.data import DataLoader

from vidlit.models.backbones import BACKBONES
from vidlit.data.clips import ClipDataset, ClipTransform
from vidlit.data.decoders import RecordDecoder, resolve_decoder
from vidlit.data.records import DataError, VideoRecord, check_classes, check_domains, finetune_split, holdout_split
from vidlit.data.sampler import DomainBalancedBatchSampler, SourceTargetBatchSampler
from vidlit.data.target import SourceTargetDataset, collate_source_target
from vidlit.data.video_io import VideoDecodeError, probe_video
from vidlit.utils.registry import Registry

log = logging.getLogger("vidlit.data")
DATAMODULES: Registry[type] = Registry("dataset", "--dataset")
DATAMODULES.scan("datamodules")


def register_datamodule(name: str) -> Callable[[type], type]:
    return DATAMODULES.register(name)


class MultiDomainDataModule(pl.LightningDataModule):
    """Multi-domain video clips for domain generalization.

    Train batches: dicts with ``video`` (B, C, T, H, W) uint8, ``label`` (B,), ``domain`` (B,)
    (index into ``source_domains``), with clips from every source domain in every batch.
    Validation: the held-out part (``holdout_fraction``, split by video or group) of each source
    domain, then (when ``eval_target_each_epoch``) the target domains as a second loader, which
    makes oracle model selection possible. Test: every video of the target domains, ``domain``
    indexing ``target_domains``; with ``test_views`` other than ``1x1``, test and predict batches
    hold ``video`` (B, V, C, T, H, W), the V views of each video. With ``unlabeled_target``, train
    batches also hold ``target_video`` (B_t, C, T, H, W) uint8 and ``target_domain`` (B_t,), clips
    of the target domains without labels (see :meth:`unlabeled_target_records`).
    T is ``num_clips * num_frames``. See docs/DATA_LOADING.md.

    Args:
        root: dataset folder; its meaning is the subclass's.
        source_domains: training domains (default: every domain not in ``target_domains``).
        target_domains: held-out test domains (default: the last domain in sorted order). ``[]``
            is plain fine-tuning: no held-out domain; each domain's videos (or groups) are split
            into train / val / test (``test_fraction``, then ``holdout_fraction`` of the rest), and
            test is the in-domain test split of every domain.
        classes: class names to use, in label order (default: all; they must match across domains).
        backbone: set from ``--backbone``; gives the default ``num_frames`` and ``size``.
        num_frames: frames per clip (default: the backbone's preference).
        frame_stride: take every n-th frame.
        num_clips: TSN segments: the video is split into this many equal parts and one snippet of
            ``num_frames`` frames is taken from each (random offset in training, centred in
            evaluation); the snippets are concatenated along T.
        size: square crop size in pixels (default: the backbone's preference).
        batch_size: clips per training step per device, split evenly over the source domains.
        eval_batch_size: clips per evaluation step (default: ``batch_size``).
        num_workers: DataLoader worker processes.
        holdout_fraction: share of each source domain's videos (or groups) kept for validation.
        test_fraction: plain fine-tuning only (``target_domains`` ``[]``): share of each domain's
            videos (or groups) kept as its in-domain test split.
        split_seed: seed of the holdout split (independent of ``--seed_everything``).
        crop_scale: area range of the training random resized crop.
        flip: random horizontal flip in training. Off by default: not label-preserving for
            direction-dependent classes, unless ``flip_label_map`` maps them (e.g. left <-> right).
        flip_label_map: class -> class to use when a clip is flipped.
        color_jitter: brightness/contrast jitter strength (0 = off).
        short_video: videos shorter than a clip ``loop`` or ``pad`` (repeat the last frame).
        on_bad_video: unreadable videos, in every split: ``error`` (stop; the files that can be
            probed cheaply are all named before training starts) or ``skip``: leave them out and
            count them per split (``skipped_videos`` in ``results.json``, one warning per file).
            With ``skip``, validation and test clips are decoded once before training, exactly as
            evaluated, and a training clip that fails later is replaced by another clip of the same
            domain and class (counted in ``bad_videos``).
        eval_target_each_epoch: also evaluate the target domains each epoch (logged as
            ``val_target/*``; used only for the oracle upper bound, never for selection).
        seed: augmentation and batch-order seed.
        decoder: ``pyav`` (default: it measured faster than torchcodec in the loader benchmark),
            ``auto`` (torchcodec when it can run here, else PyAV), ``torchcodec``, or ``frames``
            (every record must be a folder of frames).
        test_views: ``CLIPSxCROPS`` views per test video, e.g. ``10x3``: evenly spaced clips times
            left/centre/right (top/centre/bottom for portrait) crops; the strategy averages the
            softmax over the views. Test batches then hold ``eval_batch_size // V`` videos (at
            least one) and the model runs on at most ``eval_batch_size`` clips at a time.
        unlabeled_target: add unlabeled target-domain clips to every training batch
            (``target_video``), for domain adaptation methods.
        target_batch_size: target clips per training batch (default: ``batch_size``).
    """

    def __init__(
        self,
        root: Optional[str] = None,
        source_domains: Optional[list[str]] = None,
        target_domains: Optional[list[str]] = None,
        classes: Optional[list[str]] = None,
        backbone: str = "tiny3d",
        num_frames: Optional[int] = None,
        frame_stride: int = 2,
        size: Optional[int] = None,
        batch_size: int = 30,
        eval_batch_size: Optional[int] = None,
        num_workers: int = 2,
        holdout_fraction: float = 0.2,
        split_seed: int = 0,
        crop_scale: tuple[float, float] = (0.5, 1.0),
        flip: bool = False,
        flip_label_map: Optional[dict[str, str]] = None,
        color_jitter: float = 0.0,
        short_video: Literal["loop", "pad"] = "loop",
        on_bad_video: Literal["error", "skip"] = "error",
        eval_target_each_epoch: bool = True,
        seed: int = 0,
        decoder: Literal["auto", "pyav", "torchcodec", "frames"] = "pyav",
        num_clips: int = 1,
        test_views: Union[str, int] = "1x1",
        unlabeled_target: bool = False,
        target_batch_size: Optional[int] = None,
        test_fraction: float = 0.2,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        spec = BACKBONES.get(backbone)
        self.root = root
        self.num_frames = num_frames or spec.num_frames
        self.size = size or spec.size
        self.frame_stride, self.batch_size = frame_stride, batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.num_clips = int(num_clips)
        if self.num_clips < 1:
            raise DataError(f"--data.num_clips must be >= 1, got {num_clips}")
        self.test_views = parse_views(test_views)
        self.target_batch_size = target_batch_size or batch_size
        self._source, self._target, self._classes = source_domains, target_domains, classes
        self._indexed = False
        #: ``--data.target_domains '[]'``: ordinary transfer learning, tested on each domain's own test split
        self.plain_finetune = target_domains is not None and len(target_domains) == 0
        self._eval_checked = False
        self._decoder: Optional[RecordDecoder] = None

    # ----------------------------------------------------------------- to implement per dataset
    @abstractmethod
    def index_records(self) -> list[VideoRecord]:
        """Every labelled video of every domain (frame counts may be left 0: they are probed)."""

    def describe(self) -> str:
        """Where the data comes from, for messages."""
        return str(self.root)

    # ----------------------------------------------------------------- indexing
    def _probe(self, rec: VideoRecord) -> tuple[VideoRecord, Optional[str]]:
        if self.hparams.decoder == "frames" and rec.kind != "frames":
            return rec, f"{rec.path}: a video file, but --data.decoder frames reads frame folders only"
        if rec.num_frames > 0:
            return rec, None
        try:
            if rec.kind == "frames":
                from vidlit.data.frames import probe_frame_folder

                info = probe_frame_folder(rec)
            else:
                info = probe_video(rec.path)
        except VideoDecodeError as err:
            return rec, str(err)
        span = (rec.end_frame if rec.end_frame is not None else info.num_frames) - (rec.start_frame or 0)
        if span < 1:
            return rec, f"{rec.path}: segment [{rec.start_frame}, {rec.end_frame}) is empty (video has {info.num_frames} frames)"
        if span < self.frame_stride:
            return rec, f"{rec.path}: only {span} frame(s), shorter than one frame stride ({self.frame_stride})"
        return rec.with_frames(info.num_frames), None

    def prepare_index(self) -> None:
        """Index, probe and check the data once; raises :class:`DataError` listing every problem."""
        if self._indexed:
            return
        records = self.index_records()
        self.plain_finetune = self._target is not None and len(self._target) == 0  # a subclass may have set _target
        if self.plain_finetune and self.hparams.unlabeled_target:
            raise DataError("--data.unlabeled_target needs target domains; plain fine-tuning (--data.target_domains '[]') has none: "
                            "drop one of the two")
        source, target = check_domains({r.domain for r in records}, self._source, self._target, self.describe())
        used = [r for r in records if r.domain in set(source) | set(target)]
        self.class_names = check_classes(used, source + target, self._classes)
        used = [r for r in used if r.label in set(self.class_names)]
        with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2)) as pool:
            probed = list(pool.map(self._probe, used))
        problems = [p for _, p in probed if p]
        if problems and self.hparams.on_bad_video != "skip":
            raise DataError(
                f"{len(problems)} unreadable video(s) in {self.describe()}; fix or remove them "
                f"(or pass --data.on_bad_video skip to leave them out and count them):\n  " + "\n  ".join(problems)
            )
        recs = [r for r, _ in probed]
        bad = {id(r): p for r, p in probed if p}
        src = [r for r in recs if r.domain in source]
        # split with the bad files still in, so that the good ones land where they would anyway
        if self.plain_finetune:  # the test rows are the source domains' own test splits
            train, val, test = finetune_split(src, self.hparams.holdout_fraction, self.hparams.test_fraction, self.hparams.split_seed)
            target = list(source)
        else:
            train, val = holdout_split(src, self.hparams.holdout_fraction, self.hparams.split_seed)
            test = [r for r in recs if r.domain in target]
        test = sorted(test, key=lambda r: (r.domain, r.path, r.start_frame or 0))
        self.source_domains, self.target_domains = source, target
        self.skipped: dict[str, list[str]] = {"train": [], "val": [], "test": []}
        for split, rows in (("train", train), ("val", val), ("test", test)):
            self.skipped[split] = [bad[id(r)] for r in rows if id(r) in bad]
        self.train_records = [r for r in train if id(r) not in bad]
        self.val_records = [r for r in val if id(r) not in bad]
        self.test_records = [r for r in test if id(r) not in bad]
        if bad:
            self._report_skipped("unreadable")
        for d in source:
            if not any(r.domain == d for r in self.train_records):
                raise DataError(f"source domain '{d}' has no training videos after the holdout split")
        self._indexed = True

    @property
    def num_classes(self) -> int:
        self.prepare_index()
        return len(self.class_names)

    @property
    def num_domains(self) -> int:
        """Number of source (training) domains."""
        self.prepare_index()
        return len(self.source_domains)

    # ----------------------------------------------------------------- datasets and loaders
    def _dataset(
        self, records: list[VideoRecord], domains: list[str], train: bool, views: tuple[int, int] = (1, 1), stream: int = 0
    ) -> ClipDataset:
        h = self.hparams
        transform = ClipTransform(self.size, train, tuple(h.crop_scale), h.flip, h.color_jitter)
        return ClipDataset(
            records, self.class_names, domains, self.num_frames, self.frame_stride, transform,
            seed=h.seed, train=train, short=h.short_video, on_bad_video=h.on_bad_video if train else "error",
            flip_label_map=h.flip_label_map, decode=self.decoder(), num_clips=self.num_clips, views=views, stream=stream,
        )

    def decoder(self) -> Optional[Callable[[VideoRecord, np.ndarray], np.ndarray]]:
        """Function (record, frame indices) -> (T, H, W, 3) uint8, picklable for DataLoader
        workers: the ``--data.decoder`` backend for video files, the frame reader for frame
        folders. Subclasses may override it (None = PyAV)."""
        if self._decoder is None:
            self._decoder = RecordDecoder(resolve_decoder(self.hparams.decoder))
        return self._decoder

    def unlabeled_target_records(self) -> list[VideoRecord]:
        """Target clips for ``unlabeled_target`` training: by default every target video (the
        transductive setting of most video DA papers); a format with a target training split
        can return that instead."""
        return self.test_records

    def _report_skipped(self, what: str) -> None:
        for split, why in self.skipped.items():
            for line in why:
                log.warning("on_bad_video skip: left out of %s: %s", split, line)
        counts = ", ".join(f"{k} {len(v)}" for k, v in self.skipped.items())
        log.warning("on_bad_video skip: %s video(s) left out so far (%s)", sum(len(v) for v in self.skipped.values()), counts)

    def _check_eval_clips(self) -> None:
        """With ``on_bad_video skip``: decode every validation and test clip once, exactly as
        evaluation will (evaluation clips are deterministic), and leave out the videos that fail,
        counted per split. Evaluating on a replacement clip would change the metric; dropping a
        clip from a batch mid-epoch could leave an empty batch."""
        if self._eval_checked or self.hparams.on_bad_video != "skip":
            return
        self._eval_checked = True
        views = [(1, 1)] + ([self.test_views] if self.test_views != (1, 1) else [])

        def failure(job: tuple[ClipDataset, int]) -> Optional[str]:
            dataset, i = job
            try:
                dataset._load(i, None)
            except VideoDecodeError as err:
                return str(err)
            return None

        found = False
        for split, domains, v in (("val", self.source_domains, [(1, 1)]), ("test", self.target_domains, views)):
            records = getattr(self, f"{split}_records")
            failed: dict[int, str] = {}
            for view in v:
                ds = self._dataset(records, domains, train=False, views=view)
                with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2)) as pool:
                    for i, why in enumerate(pool.map(failure, [(ds, i) for i in range(len(ds))])):
                        if why and i not in failed:
                            failed[i] = why
            if failed:
                found = True
                self.skipped[split] += [failed[i] for i in sorted(failed)]
                setattr(self, f"{split}_records", [r for i, r in enumerate(records) if i not in failed])
        if found:
            self._report_skipped("undecodable")
        if not self.val_records and self.hparams.holdout_fraction > 0:
            raise DataError("--data.on_bad_video skip: no readable validation video is left")
        if not self.test_records:
            raise DataError("--data.on_bad_video skip: no readable target-domain video is left to test on")

    def skipped_counts(self) -> dict[str, int]:
        """Videos left out per split by ``on_bad_video skip`` (before training)."""
        return {k: len(v) for k, v in getattr(self, "skipped", {"train": [], "val": [], "test": []}).items()}

    def setup(self, stage: str) -> None:
        self.prepare_index()
        self._check_eval_clips()
        self.train_set = self._dataset(self.train_records, self.source_domains, train=True)
        self.val_set = self._dataset(self.val_records, self.source_domains, train=False)
        self.test_set = self._dataset(self.test_records, self.target_domains, train=False)  # one view per video
        self.test_view_set = self.test_set
        if self.test_views != (1, 1):  # for test and predict only: items (V, C, T, H, W)
            self.test_view_set = self._dataset(self.test_records, self.target_domains, train=False, views=self.test_views)
        self.target_train_set = None
        if self.hparams.unlabeled_target:
            # its own random stream, so target augmentation is not a copy of the source's
            self.target_train_set = self._dataset(self.unlabeled_target_records(), self.target_domains, train=True, stream=1)

    def _loader(self, dataset: ClipDataset, **kw) -> DataLoader:
        workers = self.num_workers
        return DataLoader(
            dataset, num_workers=workers, persistent_workers=workers > 0, pin_memory=self._pin(),
            prefetch_factor=4 if workers > 0 else None, worker_init_fn=die_with_parent if workers > 0 else None, **kw,
        )

    def _pin(self) -> bool:
        trainer = getattr(self, "trainer", None)
        return bool(trainer is not None and trainer.accelerator.__class__.__name__ == "CUDAAccelerator")

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        seed = self.hparams.seed
        sampler = DomainBalancedBatchSampler(self.train_set.domain_ids, self.batch_size, seed=seed, rank=rank, world_size=world)
        if self.target_train_set is None:
            return self._loader(self.train_set, batch_sampler=sampler)
        target = DomainBalancedBatchSampler(
            self.target_train_set.domain_ids, self.target_batch_size, seed=seed, rank=rank, world_size=world,
            salt=1, flag="--data.target_batch_size", role="target",
        )
        return self._loader(
            SourceTargetDataset(self.train_set, self.target_train_set),
            batch_sampler=SourceTargetBatchSampler(sampler, target), collate_fn=collate_source_target,
        )

    def val_dataloader(self) -> list[DataLoader]:
        loaders = [self._loader(self.val_set, batch_size=self.eval_batch_size)]
        if self.hparams.eval_target_each_epoch:
            loaders.append(self._loader(self.test_set, batch_size=self.eval_batch_size))
        return loaders

    def _test_batch_size(self) -> int:
        """Whole videos per test batch: about ``eval_batch_size`` clips with all their views."""
        return max(1, self.eval_batch_size // (self.test_views[0] * self.test_views[1]))

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_view_set, batch_size=self._test_batch_size())

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_view_set, batch_size=self._test_batch_size())


def die_with_parent(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: on Linux, a worker gets SIGKILL when the training process
    dies, even by ``kill -9``. Otherwise an orphaned worker can linger, holding the terminal or
    the caller's pipes open (a ``subprocess.run`` waiting for the output then never returns)."""
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() == 1:  # the parent died before the call: follow it now
            os.kill(os.getpid(), signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def parse_views(value: Union[str, int, tuple]) -> tuple[int, int]:
    """``"10x3"`` -> (10, 3) (clips x crops); ``"10"`` or 10 -> (10, 1)."""
    if isinstance(value, (tuple, list)) and len(value) == 2:
        clips, crops = value
    else:
        m = re.fullmatch(r"\s*(\d+)\s*(?:[xX*]\s*(\d+))?\s*", str(value))
        if not m:
            raise DataError(f"--data.test_views must be CLIPSxCROPS, e.g. 10x3 or 1x1, got '{value}'")
        clips, crops = m.group(1), m.group(2) or 1
    clips, crops = int(clips), int(crops)
    if clips < 1 or crops < 1:
        raise DataError(f"--data.test_views needs at least 1 clip and 1 crop, got '{value}'")
    return clips, crops
