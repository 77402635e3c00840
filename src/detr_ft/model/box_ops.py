"""Generalized IoU on broadcastable box tensors.

transformers' ``generalized_box_iou`` (``transformers.loss.loss_for_object_detection``,
the same in 4.57 and 5.x) is pairwise on 2-D inputs only, and it validates its
inputs with a data-dependent ``if`` (one device-to-host sync per call) that
raises on NaN boxes. The criterion needs a batched pairwise form for the
[B, Q, T] cost and an element-wise form for matched pairs, without syncs, so
this module holds the same formula written on broadcastable shapes. Box format
conversion stays transformers' ``center_to_corners_format``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Element-wise GIoU of corner-format (x0, y0, x1, y1) boxes.

    boxes1: [..., 4] and boxes2: [..., 4], broadcastable; returns [...].
    Identical to the usual formula wherever the union and enclosing areas
    exceed ``eps``; they are clamped to ``eps`` so that degenerate pairs give
    finite values instead of 0 / 0. NaN boxes give NaN, never an error.
    """
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])

    inter_wh = (torch.min(boxes1[..., 2:], boxes2[..., 2:]) - torch.max(boxes1[..., :2], boxes2[..., :2])).clamp(min=0)
    inter = inter_wh[..., 0] * inter_wh[..., 1]
    union = area1 + area2 - inter

    hull_wh = (torch.max(boxes1[..., 2:], boxes2[..., 2:]) - torch.min(boxes1[..., :2], boxes2[..., :2])).clamp(min=0)
    hull = hull_wh[..., 0] * hull_wh[..., 1]

    iou = inter / union.clamp(min=eps)
    return iou - (hull - union) / hull.clamp(min=eps)


def pairwise_generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """GIoU of every box in boxes1 [..., N, 4] with every box in boxes2 [..., M, 4] -> [..., N, M]."""
    return generalized_box_iou(boxes1[..., :, None, :], boxes2[..., None, :, :])
