"""Padding samples into one static-shape ``Batch``.

Every mode (``--pad`` or not, ``--num-buckets K`` or 0) produces the same
dataclass of padded tensors; the criterion reads ``valid`` to know which
objects are real, so padding changes nothing by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

# A padded object slot holds this box: finite and non-degenerate, so that any
# cost or loss computed on it stays finite (it is masked out afterwards anyway).
PAD_BOX = (0.5, 0.5, 1.0, 1.0)


@dataclass
class Batch:
    """A batch of B images padded to H x W, and their objects padded to T.

    pixel_values: [B, 3, H, W] float, normalised image, zeros where padded.
    pixel_mask:   [B, H, W] long, 1 on real pixels, 0 on padding.
    labels:       [B, T] long, contiguous class index in [0, num_classes).
    boxes:        [B, T, 4] float, (cx, cy, w, h) normalised by the real
                  (resized, unpadded) image size.
    valid:        [B, T] bool, True for real objects, False for padding.
    image_ids:    [B] long, the dataset's image ids.
    orig_sizes:   [B, 2] long, (height, width) of the original image.
    """

    pixel_values: torch.Tensor
    pixel_mask: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor
    valid: torch.Tensor
    image_ids: torch.Tensor
    orig_sizes: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        return Batch(**{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)})

    def pin_memory(self) -> "Batch":
        return Batch(**{f.name: getattr(self, f.name).pin_memory() for f in fields(self)})

    def __len__(self) -> int:
        return self.pixel_values.shape[0]

    def targets(self) -> list[dict[str, torch.Tensor]]:
        """The real objects as transformers' list-of-dicts ``labels`` format."""
        return [
            {"class_labels": self.labels[i][self.valid[i]], "boxes": self.boxes[i][self.valid[i]]}
            for i in range(len(self))
        ]
