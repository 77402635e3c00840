"""Hungarian matching of DETR queries to padded targets.

The cost of every (query, target slot) pair is built for the whole batch (and
for every decoder layer at once, when given stacked layers) on the device, in
float32, then copied to the host with a single ``.cpu()``; scipy's
``linear_sum_assignment`` runs per image on that image's valid columns only.
The matching is returned as static-shape [..., B, T] tensors, so the losses
built from it have the same shapes whatever the object count.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from transformers.image_transforms import center_to_corners_format

from detr_ft.model.box_ops import pairwise_generalized_box_iou


def autocast_disabled(device_type: str) -> contextlib.AbstractContextManager:
    """``torch.autocast(device_type, enabled=False)``, or a no-op where the device has no autocast."""
    try:
        return torch.autocast(device_type, enabled=False)
    except RuntimeError:
        return contextlib.nullcontext()


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to real targets, as in DETR.

    cost = class_cost * (-p[target class]) + bbox_cost * L1(cxcywh) + giou_cost * (-GIoU)
    """

    def __init__(self, class_cost: float = 1.0, bbox_cost: float = 5.0, giou_cost: float = 2.0):
        super().__init__()
        if class_cost == 0 and bbox_cost == 0 and giou_cost == 0:
            raise ValueError("all costs of the matcher can't be 0")
        self.class_cost = class_cost
        self.bbox_cost = bbox_cost
        self.giou_cost = giou_cost

    def class_cost_per_class(self, logits: Tensor) -> Tensor:
        """Classification cost of each query for each class: -softmax(logits), [..., Q, C+1]."""
        return -logits.softmax(-1)

    @torch.no_grad()
    def cost_matrix(self, logits: Tensor, pred_boxes: Tensor, labels: Tensor, boxes: Tensor, valid: Tensor) -> Tensor:
        """The matching cost, on the device.

        logits:     [..., B, Q, C+1] class logits, the last class is no-object
                    ([..., B, Q, C] for the sigmoid ``FocalHungarianMatcher``).
        pred_boxes: [..., B, Q, 4] predicted (cx, cy, w, h), normalised.
        labels:     [B, T] long; boxes: [B, T, 4] cxcywh; valid: [B, T] bool.
        Leading dims ``...`` (e.g. decoder layers) are optional.

        Returns [..., B, Q, T] float32 (even under autocast). NaN and +-inf costs
        become the largest finite float32, so a broken prediction is matched
        only when nothing else is left; padded columns (valid False) are +inf.
        """
        with autocast_disabled(logits.device.type):
            class_cost_per_class = self.class_cost_per_class(logits.float())  # [..., B, Q, C(+1)]
            out_boxes = pred_boxes.float()
            tgt_boxes = boxes.float().expand(*out_boxes.shape[:-2], -1, -1)  # [..., B, T, 4]

            # Pick the target's class for every (query, slot) pair.
            index = labels[..., None, :].expand(*class_cost_per_class.shape[:-1], -1)  # [..., B, Q, T]
            class_cost = class_cost_per_class.gather(-1, index)
            bbox_cost = (out_boxes[..., :, None, :] - tgt_boxes[..., None, :, :]).abs().sum(-1)
            giou_cost = -pairwise_generalized_box_iou(
                center_to_corners_format(out_boxes), center_to_corners_format(tgt_boxes)
            )
            cost = self.class_cost * class_cost + self.bbox_cost * bbox_cost + self.giou_cost * giou_cost
            big = torch.finfo(cost.dtype).max
            cost = torch.nan_to_num(cost, nan=big, posinf=big, neginf=big)
            return cost.masked_fill(~valid[..., None, :], float("inf"))

    @torch.no_grad()
    def forward(
        self, logits: Tensor, pred_boxes: Tensor, labels: Tensor, boxes: Tensor, valid: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Match queries to target slots (shapes as in ``cost_matrix``).

        Returns, on the device of ``logits``:
          src_idx: [..., B, T] long, the query matched to target slot t (0 where unmatched).
          matched: [..., B, T] bool, True where slot t got a query; equals ``valid``
                   unless an image has more objects than queries.
        """
        cost = self.cost_matrix(logits, pred_boxes, labels, boxes, valid)
        lead, num_slots = cost.shape[:-2], cost.shape[-1]
        cost = cost.cpu().flatten(0, -3).numpy()  # [N, Q, T]: the one device-to-host copy

        src_idx = np.zeros((len(cost), num_slots), dtype=np.int64)  # [N, T], N = prod(...) * B
        matched = np.zeros((len(cost), num_slots), dtype=bool)
        for n, image_cost in enumerate(cost):
            columns = np.flatnonzero(np.isfinite(image_cost[0]))  # the valid slots (only they are finite)
            if columns.size == 0:
                continue
            rows, cols = linear_sum_assignment(image_cost[:, columns])
            src_idx[n, columns[cols]] = rows
            matched[n, columns[cols]] = True

        device = logits.device
        return (
            torch.from_numpy(src_idx).reshape(*lead, num_slots).to(device),
            torch.from_numpy(matched).reshape(*lead, num_slots).to(device),
        )


class FocalHungarianMatcher(HungarianMatcher):
    """The matcher of Conditional / Deformable DETR: a sigmoid focal class cost, no no-object class.

    The cost's alpha = 0.25 and gamma = 2 are fixed, as in those models (``focal_alpha``
    of the config only weights the loss).
    """

    alpha, gamma = 0.25, 2.0

    def class_cost_per_class(self, logits: Tensor) -> Tensor:
        """Focal cost of each query for each class, [..., Q, C]."""
        prob = logits.sigmoid()
        neg = (1 - self.alpha) * prob**self.gamma * -(1 - prob + 1e-8).log()
        pos = self.alpha * (1 - prob) ** self.gamma * -(prob + 1e-8).log()
        return pos - neg
