"""Domain-balanced batches: every training batch holds clips from every source domain.

Each epoch every domain's indices are permuted by ``(seed, epoch, domain)``, sharded across ranks
(``indices[rank::world_size]``, truncated to equal length), and batches take ``batch_size // K``
clips from each of the K domains (the remainder goes to the first domains). Smaller domains cycle
through their shard (re-permuted) until the largest one is used up, as Lightning's
``max_size_cycle`` does. Every rank computes the same permutation, so the shards are disjoint and
together cover each domain (up to ``world_size - 1`` clips), without any communication.
"""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from vidlit.data.records import DataError


class _EpochHook:
    """Lightning calls ``set_epoch`` on ``dataloader.sampler`` and ``batch_sampler.sampler``, never
    on the batch sampler itself: batch samplers expose this as ``.sampler`` to be reshuffled."""

    def __init__(self, owner: Sampler) -> None:
        self.owner = owner

    def set_epoch(self, epoch: int) -> None:
        self.owner.set_epoch(epoch)


class DomainBalancedBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields batches of ``(dataset_index, epoch)`` pairs; ``salt`` gives an independent random
    stream for a second sampler over the same seed (e.g. the unlabeled target clips)."""

    def __init__(
        self,
        domain_ids: Sequence[int],
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        salt: int = 0,
        flag: str = "--data.batch_size",
        role: str = "source",
    ) -> None:
        ids = np.asarray(domain_ids)
        self.domains = sorted(set(ids.tolist()))
        k = len(self.domains)
        if batch_size < k:
            raise DataError(f"{flag} {batch_size} is smaller than the number of {role} domains ({k}); each batch needs one clip per domain")
        self.per_domain = [batch_size // k + (1 if i < batch_size % k else 0) for i in range(k)]
        self.members = [np.flatnonzero(ids == d) for d in self.domains]
        self.seed, self.rank, self.world_size, self.epoch, self.salt = seed, rank, world_size, 0, salt
        for d, m in zip(self.domains, self.members):
            if len(m) < world_size:
                raise DataError(f"{role} domain index {d} has {len(m)} training clips, fewer than {world_size} processes")
        self.shard_len = [len(m) // world_size for m in self.members]
        self.sampler = _EpochHook(self)
        self.iter_epoch: int | None = None  # the epoch of the pass in progress (see EpochSeedCallback)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return max(math.ceil(n / b) for n, b in zip(self.shard_len, self.per_domain))

    def _key(self, *parts: int) -> list[int]:
        return [self.seed, self.epoch, *parts] + ([self.salt] if self.salt else [])

    def _stream(self, di: int) -> Iterator[int]:
        """This rank's shard of domain ``di`` for this epoch, then (for a domain that must cycle)
        re-permutations of the same shard, so ranks never share a clip within an epoch."""
        members = self.members[di]
        shard = members[np.random.default_rng(self._key(di, 0)).permutation(len(members))]
        shard = shard[self.rank :: self.world_size][: self.shard_len[di]]
        yield from shard.tolist()
        cycle = 1
        while True:
            yield from shard[np.random.default_rng(self._key(di, cycle, self.rank)).permutation(len(shard))].tolist()
            cycle += 1

    def batches(self, count: int) -> Iterator[list[tuple[int, int]]]:
        """``count`` batches of this epoch (cycling every domain as often as needed)."""
        self.iter_epoch = self.epoch
        streams = [self._stream(i) for i in range(len(self.domains))]
        for _ in range(count):
            yield [(next(s), self.epoch) for s, b in zip(streams, self.per_domain) for _ in range(b)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return self.batches(len(self))


class SourceTargetBatchSampler(Sampler[list[tuple[str, int, int]]]):
    """Pairs each source batch with a batch of unlabeled target clips.

    Yields ``[("s", index, epoch), ..., ("t", index, epoch), ...]``; the epoch length is the
    source sampler's, the target sampler cycles as needed. Both are sharded across ranks.
    """

    def __init__(self, source: DomainBalancedBatchSampler, target: DomainBalancedBatchSampler) -> None:
        self.source, self.target = source, target
        self.sampler = _EpochHook(self)

    @property
    def iter_epoch(self) -> int | None:
        return self.source.iter_epoch

    def set_epoch(self, epoch: int) -> None:
        self.source.set_epoch(epoch)
        self.target.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.source)

    def __iter__(self) -> Iterator[list[tuple[str, int, int]]]:
        for s, t in zip(self.source, self.target.batches(len(self.source))):
            yield [("s", i, e) for i, e in s] + [("t", i, e) for i, e in t]
