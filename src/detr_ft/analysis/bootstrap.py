"""Bootstrap intervals for mAP and mAP50: the images resampled with replacement.

Each resample is a new COCO document whose images (each drawn image a fresh copy, with
its boxes and detections) are scored by the project's evaluator; the interval is the
2.5th and 97.5th percentile of the resampled metrics (the percentile bootstrap).
"""

from __future__ import annotations

import time

import numpy as np

DEFAULT_RESAMPLES = 200
AUTO_BELOW_IMAGES = 500  # --bootstrap's default is on for test sets smaller than this
IMAGE_BUDGET = 20_000  # images evaluated over all resamples by default (about a minute on 2 CPU cores)
MIN_RESAMPLES = 50


def default_resamples(num_images: int) -> int:
    """--bootstrap's default: off (0) from AUTO_BELOW_IMAGES images up; below, DEFAULT_RESAMPLES,
    fewer (not under MIN_RESAMPLES) where they would evaluate more than IMAGE_BUDGET images
    (200 resamples up to 100 images, 100 at 200, 50 from 400)."""
    if num_images >= AUTO_BELOW_IMAGES:
        return 0
    return max(MIN_RESAMPLES, min(DEFAULT_RESAMPLES, IMAGE_BUDGET // max(1, num_images)))


def resample(gt: dict, by_image: dict[int, list[dict]], draw: np.ndarray) -> tuple[dict, list[dict]]:
    """The (gt, results) of the images at positions ``draw`` of ``gt["images"]``, renumbered 1..n."""
    anns_of: dict[int, list] = {}
    for a in gt["annotations"]:
        anns_of.setdefault(a["image_id"], []).append(a)
    images, annotations, results = [], [], []
    for new_id, k in enumerate(draw.tolist(), start=1):
        im = gt["images"][k]
        images.append({**im, "id": new_id})
        for a in anns_of.get(im["id"], []):
            annotations.append({**a, "id": len(annotations) + 1, "image_id": new_id})
        results += [{**r, "image_id": new_id} for r in by_image.get(im["id"], [])]
    return {**gt, "images": images, "annotations": annotations}, results


def without_trailing_false_positives(gt: dict, results: list[dict]) -> list[dict]:
    """``results`` less the detections that no resample's mAP or mAP50 can see: those scored below
    every detection of their class that overlaps a box of that class at IoU >= 0.5 (the only ones
    that can be true positives, at any COCO IoU threshold). Each ranks below all true positives of
    its class in every resample (a detection's match depends on its own image only), where COCO's
    interpolated precision never looks; results are already capped per image, so no other detection
    moves into the top 100. The bootstrap's main cost is these detections."""
    from detr_ft.analysis.matching import box_iou, per_image

    floor: dict[int, float] = {}
    for im in per_image(gt, results).values():
        if not len(im.det_scores) or not len(im.gt_classes):
            continue
        iou = box_iou(im.det_boxes, im.gt_boxes)
        hit = ((iou >= 0.5) & (im.det_classes[:, None] == im.gt_classes[None])).any(axis=1)
        for c, s in zip(im.det_classes[hit].tolist(), im.det_scores[hit].tolist()):
            floor[c] = min(floor.get(c, s), s)
    return [r for r in results if r["score"] >= floor.get(r["category_id"], float("inf"))]


def bootstrap_intervals(gt: dict, results: list[dict], categories, resamples: int, seed: int = 0,
                        level: float = 0.95) -> dict | None:
    """{"resamples", "level", "seed", "seconds", "map": [lo, hi], "map_50": [lo, hi]}; None when ``resamples`` is 0
    or there are no images."""
    from detr_ft.metrics import coco_metrics

    n = len(gt["images"])
    if resamples <= 0 or n == 0:
        return None
    by_image: dict[int, list[dict]] = {}
    for r in without_trailing_false_positives(gt, results):
        by_image.setdefault(r["image_id"], []).append(r)
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    values = {"map": [], "map_50": []}
    for _ in range(resamples):
        m = coco_metrics(*resample(gt, by_image, rng.integers(0, n, n)), categories)
        for k in values:
            values[k].append(m[k])
    tail = 100 * (1 - level) / 2
    out = {"resamples": resamples, "level": level, "seed": seed, "seconds": round(time.perf_counter() - started, 2)}
    for k, v in values.items():
        v = np.asarray(v, dtype=float)
        v = v[v >= 0]  # a resample without any ground truth has no mAP (-1)
        out[k] = [float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))] if v.size else None
    return out
