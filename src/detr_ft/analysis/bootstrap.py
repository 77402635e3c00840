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


def bootstrap_intervals(gt: dict, results: list[dict], categories, resamples: int, seed: int = 0,
                        level: float = 0.95) -> dict | None:
    """{"resamples", "level", "seed", "seconds", "map": [lo, hi], "map_50": [lo, hi]}; None when ``resamples`` is 0
    or there are no images."""
    from detr_ft.metrics import coco_metrics

    n = len(gt["images"])
    if resamples <= 0 or n == 0:
        return None
    by_image: dict[int, list[dict]] = {}
    for r in results:
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
