"""The torch Dataset: one record of a ``DatasetIndex`` -> one resized ``Sample``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from detr_ft.data.augment import AugmentSpec
from detr_ft.devices import one_cpu_thread
from detr_ft.data.transforms import resized_tensor, xywh_to_cxcywh_norm
from detr_ft.types import DatasetIndex, ResizeSpec


@dataclass
class Sample:
    """One image ready for batching.

    image:     [3, h, w] uint8, resized by the model's rule.
    boxes:     [N, 4] float32, normalised (cx, cy, w, h).
    labels:    [N] int64, contiguous class indices.
    image_id:  the dataset's image id.
    orig_size: (height, width) of the decoded image (EXIF applied).
    """

    image: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor
    image_id: int
    orig_size: tuple[int, int]


class DetectionDataset(Dataset):
    """Lazy image loading over a ``DatasetIndex`` (``index.load_image``: files, or a 🤗 datasets
    table); when ``train``, the augmentation ``augment`` (default: a horizontal flip with
    probability ``hflip``; ``data/augment.py``)."""

    def __init__(self, index: DatasetIndex, resize_spec: ResizeSpec, train: bool = False, seed: int = 0,
                 hflip: float = 0.5, augment: AugmentSpec | None = None):
        self.index = index
        self.resize_spec = resize_spec
        self.train = train
        self.augment = augment if augment is not None else AugmentSpec(hflip=hflip)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key) -> Sample:
        """``key`` is an index, or ``(index, epoch)`` from an ``EpochSampler``: the augmentation
        depends on (seed, epoch, index) only, reproducible with any worker count."""
        i, epoch = key if isinstance(key, tuple) else (key, 0)
        record = self.index.records[i]
        image = self.index.load_image(record)
        # COCO boxes are in pixels of the image as displayed (EXIF applied), whose
        # size the JSON gives; normalised, they fit the decoded image at any scale.
        boxes = xywh_to_cxcywh_norm(record.boxes, record.width, record.height)
        orig_size = (image.height, image.width)
        labels = record.labels
        if self.train:
            rng = np.random.default_rng((self.seed, epoch, i))
            # one thread: small ops, and in the main process (--num-workers 0) the model's threads share the
            # cores (a 2-thread colour map took 149 ms against 9 ms on one on a busy 2-core machine)
            with one_cpu_thread(get_worker_info() is None):
                pixels, boxes, labels = self.augment.apply(image, boxes, labels, rng, self.resize_spec)
        else:
            pixels = resized_tensor(image, self.resize_spec)
        return Sample(pixels, torch.from_numpy(boxes), torch.from_numpy(labels), record.image_id, orig_size)
