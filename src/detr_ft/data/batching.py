"""Padding samples into one static-shape ``Batch``.

Every mode (``--pad`` or not, ``--num-buckets K`` or 0) produces the same
dataclass of padded tensors; the criterion reads ``valid`` to know which
objects are real, so padding changes nothing by construction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch
from torch.utils.data import get_worker_info

from detr_ft.data.padding import bucket_size, compute_buckets, padded_pixel_fraction  # noqa: F401  (re-exported)
from detr_ft.devices import one_cpu_thread
from detr_ft.types import PAD_BOX


@dataclass
class Batch:
    """A batch of B images padded to H x W, and their objects padded to T.

    pixel_values: [B, 3, H, W]; as collated, uint8 pixels, 0 where padded;
                  after ``to_device_normalised()``, float, normalised, 0 where padded: what
                  the model takes.
    pixel_mask:   [B, H, W] bool, True on real pixels, False on padding.
    labels:       [B, T] long, contiguous class index in [0, num_classes).
    boxes:        [B, T, 4] float, (cx, cy, w, h) normalised by the real
                  (resized, unpadded) image size.
    valid:        [B, T] bool, True for real objects, False for padding.
    image_ids:    [B] long, the dataset's image ids.
    orig_sizes:   [B, 2] long, (height, width) of the original image.
    norm:         [2, 3] float, the (mean, std) x 255 that ``to_device_normalised()`` normalises uint8
                  pixels with; None once they are normalised.
    """

    pixel_values: torch.Tensor
    pixel_mask: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor
    valid: torch.Tensor
    image_ids: torch.Tensor
    orig_sizes: torch.Tensor
    norm: torch.Tensor | None = None

    def _map(self, fn) -> "Batch":
        """A Batch of ``fn(tensor)`` for every field that holds one."""
        return Batch(**{f.name: fn(t) for f in fields(self) if (t := getattr(self, f.name)) is not None})

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "Batch":
        return self._map(torch.Tensor.pin_memory)

    def to_device_normalised(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        """The batch on ``device`` with normalised float pixels. The uint8 pixels travel (a
        quarter of float32's bytes, from loader workers and to an accelerator) and are
        normalised where they arrive."""
        moved = self.to(device, non_blocking=non_blocking)
        if moved.norm is None:
            return moved
        mean, std = moved.norm[0].view(1, 3, 1, 1), moved.norm[1].view(1, 3, 1, 1)
        pixels = torch.sub(moved.pixel_values, mean).div_(std).mul_(moved.pixel_mask[:, None])  # padding stays 0
        return replace(moved, pixel_values=pixels, norm=None)

    def __len__(self) -> int:
        return self.pixel_values.shape[0]

    def __reduce__(self):
        """Pickling (a loader worker handing the batch to the main process): the small fields
        travel by value. PyTorch hands every CPU tensor over through its own shared-memory
        segment, a file descriptor passed over a fresh socket connection, at a fixed cost
        larger than copying a few kB (benchmarks/README.md). The canvases (made in shared
        memory) still go that way."""
        return _rebuild_batch, tuple(_by_value(getattr(self, f.name)) for f in fields(self))

    def targets(self) -> list[dict[str, torch.Tensor]]:
        """The real objects as transformers' list-of-dicts ``labels`` format."""
        return [
            {"class_labels": self.labels[i][self.valid[i]], "boxes": self.boxes[i][self.valid[i]]}
            for i in range(len(self))
        ]


def to_device_normalised_from_loader(batch: Batch, device: torch.device, num_workers: int) -> Batch:
    """``batch.to_device_normalised(device)`` for a batch from a DataLoader with ``num_workers``
    workers. On the CPU while workers decode on the same cores, one thread normalises: more
    threads wait at OpenMP barriers for a thread a worker has descheduled (benchmarks/README.md).
    On CUDA the copy does not block (the loader pins its batches)."""
    with one_cpu_thread(device.type == "cpu" and num_workers > 0):
        return batch.to_device_normalised(device, non_blocking=device.type == "cuda")


# Tensors up to this size leave a loader worker by value (pickled bytes), larger ones through
# shared memory: below it, the fixed cost of a shared-memory segment is the larger one.
BY_VALUE_BYTES = 256 * 1024


def _by_value(t: torch.Tensor | None):
    """A small CPU tensor as a NumPy array (pickled by value); anything else as it is."""
    if (isinstance(t, torch.Tensor) and t.device.type == "cpu" and not t.requires_grad
            and t.untyped_storage().nbytes() <= BY_VALUE_BYTES and t.dtype != torch.bfloat16):
        return t.numpy()
    return t


def _rebuild_batch(*values) -> Batch:
    import numpy as np

    return Batch(*(torch.from_numpy(v) if isinstance(v, np.ndarray) else v for v in values))


class Collator:
    """Pads a list of ``Sample`` into a ``Batch``.

    canvases: fixed (H, W) canvases for ``--pad``; the batch goes on the first
              (smallest) canvas that holds all its images. None: the batch maximum.
    buckets:  object-count buckets; T is the smallest bucket holding the batch's
              largest count. Empty: T is the batch maximum (at least 1).
    fill_to:  pad a short batch (the last one) with blank images up to this size,
              so that batch size is static too; blank images have an all-zero
              pixel_mask, no objects and image_id -1.
    """

    def __init__(self, mean, std, canvases: list[tuple[int, int]] | None = None, buckets: list[int] | None = None,
                 fill_to: int | None = None):
        self.norm = torch.tensor([mean, std], dtype=torch.float32) * 255.0
        self.canvases = sorted(canvases, key=lambda c: c[0] * c[1]) if canvases else None
        self.buckets = list(buckets or [])
        self.fill_to = fill_to

    def smallest_canvas_holding(self, sizes: list[tuple[int, int]]) -> tuple[int, int]:
        """The (H, W) a batch of images of these sizes is padded to: the first (smallest) canvas
        that holds them all, or without canvases their largest height and width."""
        max_h = max(h for h, _ in sizes)
        max_w = max(w for _, w in sizes)
        if self.canvases is None:
            return max_h, max_w
        for ch, cw in self.canvases:
            if ch >= max_h and cw >= max_w:
                return ch, cw
        raise ValueError(f"an image of {max_h}x{max_w} does not fit the canvases {self.canvases}")

    def __call__(self, samples) -> Batch:
        b = max(len(samples), self.fill_to or 0)
        H, W = self.smallest_canvas_holding([tuple(s.image.shape[1:]) for s in samples])
        max_count = max(len(s.labels) for s in samples)
        T = bucket_size(max_count, self.buckets) if self.buckets else max(max_count, 1)
        # uint8 pixels and a bool mask, 4 bytes a pixel to hand over instead of float32 + int64's 20,
        # in one block: a loader worker hands each block over at a fixed cost, whatever its size
        canvas = empty_to_hand_over((b * 4 * H * W,), torch.uint8).zero_()
        pixel_values = canvas[: b * 3 * H * W].view(b, 3, H, W)
        pixel_mask = canvas[b * 3 * H * W:].view(torch.bool).view(b, H, W)
        labels = torch.zeros(b, T, dtype=torch.long)
        boxes = torch.tensor(PAD_BOX, dtype=torch.float32).repeat(b, T, 1)
        valid = torch.zeros(b, T, dtype=torch.bool)
        for i, s in enumerate(samples):
            _, h, w = s.image.shape
            pixel_values[i, :, :h, :w] = s.image
            pixel_mask[i, :h, :w] = True
            n = len(s.labels)
            labels[i, :n] = s.labels
            boxes[i, :n] = s.boxes
            valid[i, :n] = True
        blanks = b - len(samples)
        return Batch(
            pixel_values=pixel_values,
            pixel_mask=pixel_mask,
            labels=labels,
            boxes=boxes,
            valid=valid,
            image_ids=torch.tensor([s.image_id for s in samples] + [-1] * blanks, dtype=torch.long),
            orig_sizes=torch.tensor([s.orig_size for s in samples] + [(1, 1)] * blanks, dtype=torch.long),
            norm=self.norm,
        )


def empty_to_hand_over(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor; in a DataLoader worker, made in shared memory.

    A worker hands its batch to the main process through shared memory: a tensor
    made elsewhere is copied there first (a canvas batch is tens of MB), one made
    there is handed over as it is — the way PyTorch's own ``default_collate`` does it.
    """
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    try:
        storage = torch.UntypedStorage._new_shared(math.prod(shape) * dtype.itemsize)
    except (AttributeError, RuntimeError):  # a torch without it: the copy happens, nothing else changes
        return torch.empty(shape, dtype=dtype)
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)


def batch_padding_fraction(sizes: list[tuple[int, int]], batches: list[list[int]]) -> float:
    """Share of pixels that are padding when each batch (indices into ``sizes``, the resized
    (height, width) of the images) is padded to its largest height and width (no canvas)."""
    real = total = 0
    for batch in batches:
        h, w = max(sizes[i][0] for i in batch), max(sizes[i][1] for i in batch)
        real += sum(sizes[i][0] * sizes[i][1] for i in batch)
        total += len(batch) * h * w
    return 1.0 - real / total if total else 0.0
