"""COCO detection metrics through faster-coco-eval (a C++ COCOeval, pycocotools-equivalent).

Detections are collected per batch as compact COCO result records (never the
raw model outputs), so memory grows with the number of kept detections only.
Following COCO, a metric with no ground truth to measure against is -1.
"""

from __future__ import annotations

import contextlib
import io

from detr_ft.types import Categories, ImageRecord

METRIC_NAMES = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_1", "mar_10", "mar_100")


def ground_truth(records: list[ImageRecord], categories: Categories) -> dict:
    """A COCO ground-truth document from index records (original category ids)."""
    images, annotations = [], []
    for r in records:
        images.append({"id": r.image_id, "width": r.width, "height": r.height, "file_name": r.file_name})
        for (x, y, w, h), label in zip(r.boxes.tolist(), r.labels.tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": r.image_id,
                                "category_id": categories.ids[label], "bbox": [x, y, w, h],
                                "area": w * h, "iscrowd": 0})
    cats = [{"id": i, "name": n} for i, n in zip(categories.ids, categories.names)]
    return {"images": images, "annotations": annotations, "categories": cats}


def coco_metrics(gt: dict, results: list[dict], categories: Categories) -> dict:
    """COCO bbox metrics of ``results`` (COCO results format) against ``gt``.

    Returns ``METRIC_NAMES``, ``per_class`` ({name: AP@[.5:.95]}) and ``per_class_50`` ({name: AP50}).
    """
    from faster_coco_eval import COCO, COCOeval_faster

    empty = {k: (0.0 if gt["annotations"] else -1.0) for k in METRIC_NAMES}
    empty["per_class"] = {n: empty["map"] for n in categories.names}
    empty["per_class_50"] = dict(empty["per_class"])
    if not results or not gt["annotations"]:
        return empty
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(gt)
        coco_dt = coco_gt.loadRes([dict(r) for r in results])  # loadRes adds keys to the records it gets
        ev = COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=lambda *a, **k: None)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [float(s) for s in ev.stats]
    metrics = dict(zip(("map", "map_50", "map_75", "map_small", "map_medium", "map_large",
                        "mar_1", "mar_10", "mar_100"), stats[:9]))
    precision = ev.eval["precision"]  # [iou T, recall R, class K, area A, max dets M]
    cat_order = list(ev.params.catIds)
    per_class, per_class_50 = {}, {}
    for cid, name in zip(categories.ids, categories.names):
        p = precision[:, :, cat_order.index(cid), 0, -1]
        p50 = p[0][p[0] > -1]  # IoU thresholds start at 0.5
        p = p[p > -1]
        per_class[name] = float(p.mean()) if p.size else -1.0
        per_class_50[name] = float(p50.mean()) if p50.size else -1.0
    metrics["per_class"] = per_class
    metrics["per_class_50"] = per_class_50
    return metrics


def format_table(metrics: dict) -> str:
    """A plain-text table of the summary metrics and per-class AP."""
    boot = metrics.get("bootstrap") or {}
    lines = [f"{'metric':<14}{'value':>8}" + (f"  {int(100 * boot['level'])} % interval (bootstrap)" if boot else "")]
    for k in METRIC_NAMES:
        if k in metrics:
            interval = f"  [{boot[k][0]:.4f}, {boot[k][1]:.4f}]" if boot.get(k) else ""
            lines.append(f"{k:<14}{metrics[k]:>8.4f}{interval}")
    if metrics.get("per_class"):
        lines.append("")
        lines.append(f"{'class':<14}{'AP':>8}")
        for name, ap in metrics["per_class"].items():
            lines.append(f"{name:<14}{ap:>8.4f}")
    return "\n".join(lines)

