"""Samplers: per-epoch order, orientation-grouped batches, and sharding across processes.

Each item is ``(index, epoch)``: the dataset seeds its random flip from
(seed, epoch, index), so augmentation is reproducible whatever the number of
workers or processes. Lightning calls ``set_epoch`` at the start of every
epoch. Under DDP each process takes every ``world_size``-th item (or batch)
of the same global order, padded by repetition so all processes step
together — the samplers shard themselves (``use_distributed_sampler=False``),
which keeps canvases and buckets intact.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


def world() -> tuple[int, int]:
    """(rank, world_size) of the current process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _shard(items: list, rank: int, world_size: int) -> list:
    """Every world_size-th item from ``rank``, after padding to a multiple of world_size."""
    if world_size == 1 or not items:
        return items
    padded = items + items[: (-len(items)) % world_size]
    return padded[rank::world_size]


def _order(n: int, shuffle: bool, seed: int, epoch: int) -> list[int]:
    if not shuffle:
        return list(range(n))
    g = torch.Generator().manual_seed(seed * 100003 + epoch)
    return torch.randperm(n, generator=g).tolist()


class EpochSampler(Sampler):
    """All indices once per epoch (shuffled with (seed, epoch) when ``shuffle``), sharded by rank."""

    def __init__(self, n: int, shuffle: bool, seed: int = 0):
        self.n = n
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        _, world_size = world()
        return -(-self.n // world_size)

    def __iter__(self):
        rank, world_size = world()
        order = _shard(_order(self.n, self.shuffle, self.seed, self.epoch), rank, world_size)
        return iter([(i, self.epoch) for i in order])


class OrientationBatchSampler(Sampler):
    """Batches whose images share an orientation, for ``--pad-canvases auto``.

    ``portrait[i]`` says whether image i is taller than wide (from the JSON
    sizes; no image decoded). Each epoch: shuffle within each orientation,
    cut into batches, shuffle the batches, shard them by rank.
    """

    def __init__(self, portrait: list[bool], batch_size: int, shuffle: bool, seed: int = 0, drop_last: bool = False):
        self.portrait = list(portrait)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        order = _order(len(self.portrait), self.shuffle, self.seed, self.epoch)
        batches = []
        for want in (False, True):
            group = [i for i in order if self.portrait[i] == want]
            for start in range(0, len(group), self.batch_size):
                chunk = group[start:start + self.batch_size]
                if len(chunk) == self.batch_size or not self.drop_last:
                    batches.append(chunk)
        perm = _order(len(batches), self.shuffle, self.seed + 1, self.epoch)
        return [batches[k] for k in perm]

    def __len__(self) -> int:
        _, world_size = world()
        return -(-len(self._batches()) // world_size)

    def __iter__(self):
        rank, world_size = world()
        return iter([[(i, self.epoch) for i in b] for b in _shard(self._batches(), rank, world_size)])
