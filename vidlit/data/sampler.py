"""Domain-balanced batches: every training batch holds clips from every source domain.

Each epoch every domain's indices are permuted by ``(seed, epoch, domain)``, sharded across ranks
(``indices[rank::world_size]``, truncated to equal length), and batches take ``batch_size // K``
clips from each of the K domains (the remainder goes to the first domains). Smaller domains cycle
(re-permuted) until the largest one is used up, as Lightning's ``max_size_cycle`` does.
"""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class DomainBalancedBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields batches of ``(dataset_index, epoch)`` pairs."""

    def __init__(
        self,
        domain_ids: Sequence[int],
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        ids = np.asarray(domain_ids)
        self.domains = sorted(set(ids.tolist()))
        k = len(self.domains)
        if batch_size < k:
            raise ValueError(f"--data.batch_size {batch_size} is smaller than the number of source domains ({k}); each batch needs one clip per domain")
        self.per_domain = [batch_size // k + (1 if i < batch_size % k else 0) for i in range(k)]
        self.members = [np.flatnonzero(ids == d) for d in self.domains]
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0
        for d, m in zip(self.domains, self.members):
            if len(m) < world_size:
                raise ValueError(f"source domain index {d} has {len(m)} training clips, fewer than {world_size} processes")
        self.shard_len = [len(m) // world_size for m in self.members]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return max(math.ceil(n / b) for n, b in zip(self.shard_len, self.per_domain))

    def _stream(self, di: int) -> Iterator[int]:
        cycle = 0
        while True:
            rng = np.random.default_rng([self.seed, self.epoch, di, cycle])
            perm = self.members[di][rng.permutation(len(self.members[di]))]
            yield from perm[self.rank :: self.world_size][: self.shard_len[di]].tolist()
            cycle += 1

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        streams = [self._stream(i) for i in range(len(self.domains))]
        for _ in range(len(self)):
            yield [(next(s), self.epoch) for s, b in zip(streams, self.per_domain) for _ in range(b)]
