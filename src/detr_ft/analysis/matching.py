"""Per-image detections and ground truth as arrays, box IoU, and COCO's matching rule.

Everything in ``detr_ft.analysis`` reads the same two documents the COCO evaluator
reads: a COCO ground-truth dict (``metrics.ground_truth``) and a list of COCO result
records (``image_id, category_id, bbox [x, y, w, h], score``), original category ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IOU_MATCH = 0.5  # the IoU at which a detection hits a ground-truth box (COCO's AP50)


@dataclass
class ImageBoxes:
    """One image's ground truth and detections. Boxes [N, 4] x, y, w, h pixels; classes [N]
    original category ids; det_scores [M]; det_index [M] positions in the results list;
    detections sorted by descending score."""

    gt_boxes: np.ndarray
    gt_classes: np.ndarray
    det_boxes: np.ndarray
    det_classes: np.ndarray
    det_scores: np.ndarray
    det_index: np.ndarray


def per_image(gt: dict, results: list[dict]) -> dict[int, ImageBoxes]:
    """``ImageBoxes`` for every image of ``gt`` (images without detections or objects included)."""
    gts: dict[int, list] = {im["id"]: [] for im in gt["images"]}
    dets: dict[int, list] = {im["id"]: [] for im in gt["images"]}
    for a in gt["annotations"]:
        gts[a["image_id"]].append((a["bbox"], a["category_id"]))
    for i, r in enumerate(results):
        dets.setdefault(r["image_id"], []).append((r["bbox"], r["category_id"], r["score"], i))
    out = {}
    for image_id in gts:
        g = gts[image_id]
        d = sorted(dets.get(image_id, []), key=lambda t: -t[2])  # stable: ties keep the results' order
        out[image_id] = ImageBoxes(
            np.array([b for b, _ in g], dtype=float).reshape(-1, 4), np.array([c for _, c in g], dtype=int),
            np.array([t[0] for t in d], dtype=float).reshape(-1, 4), np.array([t[1] for t in d], dtype=int),
            np.array([t[2] for t in d], dtype=float), np.array([t[3] for t in d], dtype=int))
    return out


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes a [N, 4] and b [M, 4] (x, y, w, h): [N, M]."""
    a = np.asarray(a, dtype=float).reshape(-1, 4)
    b = np.asarray(b, dtype=float).reshape(-1, 4)
    ax1, ay1 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3]
    bx1, by1 = b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax1[:, None], bx1[None]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(ay1[:, None], by1[None]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def coco_matches(im: ImageBoxes, iou_threshold: float = IOU_MATCH) -> np.ndarray:
    """COCO's rule, per class: by descending score, each detection takes the unmatched
    ground-truth box of its class with the highest IoU >= ``iou_threshold``.
    Returns [M] the matched ground-truth index per detection, -1 where none (a false positive)."""
    matched = np.full(len(im.det_scores), -1, dtype=int)
    if not len(im.gt_classes) or not len(im.det_scores):
        return matched
    iou = box_iou(im.det_boxes, im.gt_boxes)
    taken = np.zeros(len(im.gt_classes), dtype=bool)
    for d in range(len(im.det_scores)):  # already by descending score
        ok = (im.gt_classes == im.det_classes[d]) & ~taken & (iou[d] >= min(iou_threshold, 1 - 1e-10))
        if ok.any():
            g = int(np.argmax(np.where(ok, iou[d], -1.0)))
            matched[d] = g
            taken[g] = True
    return matched
