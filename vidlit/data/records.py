"""What a dataset index holds, the checks run on it, and the holdout split."""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace
from typing import Iterable, Optional, Sequence

import numpy as np

from vidlit.utils.errors import DataError, VidlitError  # noqa: F401 - DataError re-exported (its old home)


@dataclass(frozen=True)
class VideoRecord:
    """One labelled video (or segment of one).

    ``start_frame``/``end_frame`` bound a segment (end exclusive); ``group`` keeps related videos
    (e.g. UCF101's ``_gXX_`` group) on one side of the holdout split; ``kind`` is ``"video"`` for
    a video file and ``"frames"`` for a folder of JPEG frames.
    """

    path: str
    label: str
    domain: str
    start_frame: Optional[int] = None
    end_frame: Optional[int] = None
    group: Optional[str] = None
    kind: str = "video"
    num_frames: int = 0  # filled in by indexing
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def split_key(self) -> str:
        return self.group or self.path

    def with_frames(self, n: int) -> "VideoRecord":
        return replace(self, num_frames=n)


def check_domains(
    all_domains: Sequence[str], source: Optional[Sequence[str]], target: Optional[Sequence[str]], where: str
) -> tuple[list[str], list[str]]:
    """Resolve source/target domain lists; default target = last domain in sorted order.

    An empty ``target`` list (``--data.target_domains '[]'``) is plain fine-tuning: no held-out
    domain, every domain (or ``source``) is trained on; returns ``(source, [])``."""
    domains = sorted(all_domains)
    if not domains:
        raise DataError(f"{where}: no domains found; expected <root>/<domain>/<class>/<video> folders")
    if target is not None and len(target) == 0:
        target = []
    else:
        target = list(target) if target else [domains[-1]]
    for name in list(target) + list(source or []):
        if name not in domains:
            raise DataError(f"unknown domain '{name}' (--data.source_domains/--data.target_domains); domains in {where}: {', '.join(domains)}")
    source = list(source) if source else [d for d in domains if d not in target]
    overlap = sorted(set(source) & set(target))
    if overlap:
        raise DataError(f"domain(s) {', '.join(overlap)} are both source and target; pick each domain for one side only")
    if not source:
        raise DataError(f"no source domain left: all of {', '.join(domains)} are targets; keep at least one domain for training")
    return source, target


def check_classes(records: Iterable[VideoRecord], domains: Sequence[str], classes: Optional[Sequence[str]]) -> list[str]:
    """Class names in label order; every used domain must hold every class."""
    records = list(records)
    per_domain: dict[str, set[str]] = {d: set() for d in domains}
    for r in records:
        if r.domain in per_domain:
            per_domain[r.domain].add(r.label)
    if classes:
        wanted = list(classes)
        for d, have in per_domain.items():
            lacking = [c for c in wanted if c not in have]
            if lacking:
                raise DataError(f"domain '{d}' has no videos of class(es) {', '.join(lacking)} listed in --data.classes")
        return wanted
    union = sorted(set().union(*per_domain.values())) if per_domain else []
    problems = [
        f"domain '{d}' lacks class(es) {', '.join(sorted(set(union) - have))}"
        for d, have in per_domain.items() if set(union) - have
    ]
    if problems:
        # name where each partial class comes from: a typo in a label is a class of one domain, one file
        partial = [c for c in union if any(c not in have for have in per_domain.values())]
        where = []
        for c in partial[:5]:
            files = [r.path for r in records if r.label == c and r.domain in per_domain]
            doms = sorted({r.domain for r in records if r.label == c and r.domain in per_domain})
            where.append(f"'{c}' only in {', '.join(doms)} ({len(files)} video(s), e.g. {files[0]})")
        raise DataError(
            "classes differ between domains: " + "; ".join(problems) + " [class " + "; ".join(where) + "]"
            + ". Fix the labels, or use --data.classes '[...]' to train on the classes every domain has."
        )
    if not union:
        raise DataError("no videos found in the selected domains")
    return union


def holdout_split(
    records: Sequence[VideoRecord], fraction: float, seed: int, salt: int = 0, flag: str = "--data.holdout_fraction"
) -> tuple[list[VideoRecord], list[VideoRecord]]:
    """Split each domain's records into (train, val) by ``split_key`` (video or group).

    Depends only on the set of keys, the fraction, the seed and ``salt`` (another split of the same
    records, e.g. the in-domain test split of plain fine-tuning): not on listing order or workers.
    """
    if not 0 <= fraction < 1:
        raise DataError(f"{flag} must be in [0, 1), got {fraction}")
    train, val = [], []
    by_domain: dict[str, list[VideoRecord]] = {}
    for r in records:
        by_domain.setdefault(r.domain, []).append(r)
    for domain, recs in sorted(by_domain.items()):
        keys = sorted({r.split_key for r in recs})
        rng = np.random.default_rng([seed, zlib.crc32(domain.encode())] + ([salt] if salt else []))
        order = rng.permutation(len(keys))
        n_val = int(round(fraction * len(keys)))
        if fraction > 0 and len(keys) > 1:
            n_val = min(max(n_val, 1), len(keys) - 1)
        val_keys = {keys[i] for i in order[:n_val]}
        for r in sorted(recs, key=lambda r: (r.path, r.start_frame or 0)):
            (val if r.split_key in val_keys else train).append(r)
    return train, val


def finetune_split(
    records: Sequence[VideoRecord], val_fraction: float, test_fraction: float, seed: int
) -> tuple[list[VideoRecord], list[VideoRecord], list[VideoRecord]]:
    """Plain fine-tuning: each domain's records into (train, val, test) by ``split_key``.

    ``test_fraction`` of each domain's videos (or groups) is the in-domain test split, then
    ``val_fraction`` of the rest is the validation split, as :func:`holdout_split` draws it; a
    video or group is on one side only. Seeded and deterministic like :func:`holdout_split`."""
    if not 0 < test_fraction < 1:
        raise DataError(f"--data.test_fraction must be in (0, 1) for plain fine-tuning (--data.target_domains '[]'), got {test_fraction}")
    rest, test = holdout_split(records, test_fraction, seed, salt=1, flag="--data.test_fraction")
    train, val = holdout_split(rest, val_fraction, seed)
    for domain in sorted({r.domain for r in records}):
        keys = len({r.split_key for r in records if r.domain == domain})
        if not any(r.domain == domain for r in test) or not any(r.domain == domain for r in train):
            raise DataError(
                f"plain fine-tuning (--data.target_domains '[]'): domain '{domain}' has {keys} video(s)/group(s), "
                "too few for a train and a test split; add videos or hold out a domain with --data.target_domains"
            )
    return train, val, test
