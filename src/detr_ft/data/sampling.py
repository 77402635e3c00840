"""Samplers: per-epoch order, batches of like shape, and sharding across processes.

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


class _EpochShardedSampler(Sampler):
    """What every detr-ft sampler shares: an epoch Lightning sets (``set_epoch``), a global order
    for that epoch drawn from (seed, epoch) (``_items``), sharded by rank, each index tagged
    with the epoch (``_tagged``)."""

    def __init__(self, shuffle: bool, seed: int):
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _items(self) -> list:
        """This epoch's items (indices or batches of indices), the same in every process."""
        raise NotImplementedError

    def _count(self) -> int:
        return len(self._items())

    def _tagged(self, item):
        raise NotImplementedError

    def __len__(self) -> int:
        _, world_size = world()
        return -(-self._count() // world_size)

    def __iter__(self):
        rank, world_size = world()
        return iter([self._tagged(item) for item in _shard(self._items(), rank, world_size)])


class EpochSampler(_EpochShardedSampler):
    """All indices once per epoch (shuffled with (seed, epoch) when ``shuffle``), sharded by rank."""

    def __init__(self, n: int, shuffle: bool, seed: int = 0):
        super().__init__(shuffle, seed)
        self.n = n

    def _items(self) -> list[int]:
        return _order(self.n, self.shuffle, self.seed, self.epoch)

    def _count(self) -> int:
        return self.n  # without drawing the order

    def _tagged(self, i: int) -> tuple[int, int]:
        return i, self.epoch


def single_orientation_batches(order: list[int], aspects: list[float], batch_size: int, drop_last: bool = False,
                               merge_short: bool = False) -> list[list[int]]:
    """The indices in ``order`` cut into batches of ``batch_size``: landscape images (height <=
    width) first, then portrait ones, each group in the order given; no batch holds both, but
    with ``merge_short`` the two groups' short last batches become one where they fit one (as
    many batches as without grouping, and no two-image batch weighing its images double)."""
    batches = []
    for portrait in (False, True):
        group = [i for i in order if (aspects[i] > 1) == portrait]
        for start in range(0, len(group), batch_size):
            chunk = group[start:start + batch_size]
            if len(chunk) == batch_size or not drop_last:
                batches.append(chunk)
    short = [k for k, b in enumerate(batches) if len(b) < batch_size]
    if merge_short and len(short) == 2 and sum(len(batches[k]) for k in short) <= batch_size:
        batches[short[0]] = batches[short[0]] + batches.pop(short[1])
    return batches


def aspect_sorted_batches(aspects: list[float], batch_size: int, drop_last: bool = False) -> list[list[int]]:
    """Batches for inference: the images sorted by aspect ratio (height / width), so that each
    batch pads its images to little more than their own size; no batch mixes orientations."""
    return single_orientation_batches(sorted(range(len(aspects)), key=aspects.__getitem__), aspects,
                                      batch_size, drop_last)


class ShapeBatchSampler(_EpochShardedSampler):
    """Batches of images of like shape, for padding to the batch's largest image (``--no-pad``)
    or to the canvas of its orientation (``--pad-canvases auto``).

    ``aspects[i]`` is image i's height / width (from the JSON sizes; no image decoded). A full
    batch never mixes a landscape and a portrait image, which would pad each other to a square
    (benchmarks/README.md). Shuffled (training), each epoch: shuffle within each orientation, cut into
    batches, shuffle the batches; ``merge_short``: the orientations' short last batches
    merged where they fit one (``single_orientation_batches``). Not shuffled (validation): sorted
    by aspect ratio (``aspect_sorted_batches``), the least padding. Batches are sharded by rank.
    """

    def __init__(self, aspects: list[float], batch_size: int, shuffle: bool, seed: int = 0, drop_last: bool = False,
                 merge_short: bool = False):
        super().__init__(shuffle, seed)
        self.aspects = list(aspects)
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.merge_short = merge_short

    def _items(self) -> list[list[int]]:
        """This epoch's batches."""
        if not self.shuffle:
            return aspect_sorted_batches(self.aspects, self.batch_size, self.drop_last)
        order = _order(len(self.aspects), True, self.seed, self.epoch)
        batches = single_orientation_batches(order, self.aspects, self.batch_size, self.drop_last,
                                             self.merge_short)
        perm = _order(len(batches), True, self.seed + 1, self.epoch)
        return [batches[k] for k in perm]

    def _tagged(self, batch: list[int]) -> list[tuple[int, int]]:
        return [(i, self.epoch) for i in batch]
