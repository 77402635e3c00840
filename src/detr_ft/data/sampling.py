"""Samplers that carry the epoch to the dataset, so augmentation is reproducible.

Each item is ``(index, epoch)``: the dataset seeds its random flip from
(seed, epoch, index), whatever the number of workers or processes.
Lightning calls ``set_epoch`` on samplers at the start of every epoch.
"""

from __future__ import annotations

import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler):
    """All indices once per epoch, shuffled with (seed, epoch) when ``shuffle``."""

    def __init__(self, n: int, shuffle: bool, seed: int = 0):
        self.n = n
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = range(self.n)
        return iter([(i, self.epoch) for i in order])
