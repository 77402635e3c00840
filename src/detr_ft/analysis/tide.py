"""Error breakdown in the manner of TIDE (Bolya et al., ECCV 2020): the AP50 points each kind
of error costs.

Every detection that is not a true positive under COCO's rule at IoU 0.5 gets one error type,
from its IoU with the image's ground truth (foreground 0.5, background 0.1, as TIDE):

- duplicate: a box of its class at IoU >= 0.5 exists, but a higher-scoring detection took it;
- classification: a box of another class at IoU >= 0.5;
- localisation: a box of its class at 0.1 <= IoU < 0.5;
- both: a box of another class at 0.1 <= IoU < 0.5;
- background: IoU < 0.1 with every box.

A ground-truth box that no detection finds and no classification or localisation error
points at is missed. Each type is then fixed alone (a classification error takes the
class of its box, a localisation error the box itself, unless a detection already found
that box, when it is dropped, as are duplicates, "both" and background errors; missed
boxes leave the ground truth) and mAP50 recomputed by the project's COCO evaluator
(``metrics.coco_metrics``). The cost of a type is that mAP50's gain, in AP points (x100).
"""

from __future__ import annotations

import numpy as np

from detr_ft.analysis.matching import IOU_MATCH, ImageBoxes, box_iou, coco_matches

IOU_BACKGROUND = 0.1
ERROR_TYPES = ("classification", "localisation", "both", "duplicate", "background", "missed")


def classify_errors(images: dict[int, ImageBoxes]) -> dict:
    """Per image: ``dets`` [(results index, type, target gt index or -1)] for the false positives,
    ``missed`` [gt indices]."""
    out = {}
    for image_id, im in images.items():
        matched = coco_matches(im)
        iou = box_iou(im.det_boxes, im.gt_boxes)
        found = set(matched[matched >= 0].tolist())
        dets, pointed = [], set()
        for d in np.nonzero(matched < 0)[0]:
            same = im.gt_classes == im.det_classes[d]
            row = iou[d] if len(im.gt_classes) else np.zeros(0)
            best_same = float(row[same].max()) if same.any() else 0.0
            best_other = float(row[~same].max()) if (~same).any() else 0.0
            if best_same >= IOU_MATCH:
                kind, target = "duplicate", -1
            elif best_other >= IOU_MATCH:
                kind, target = "classification", int(np.argmax(np.where(~same, row, -1)))
            elif best_same >= IOU_BACKGROUND:
                kind, target = "localisation", int(np.argmax(np.where(same, row, -1)))
            elif best_other >= IOU_BACKGROUND:
                kind, target = "both", -1
            else:
                kind, target = "background", -1
            if target >= 0:
                pointed.add(target)
            dets.append((int(im.det_index[d]), kind, target))
        missed = [g for g in range(len(im.gt_classes)) if g not in found and g not in pointed]
        out[image_id] = {"dets": dets, "missed": missed, "found": found}
    return out


def fixed(gt: dict, results: list[dict], images: dict[int, ImageBoxes], errors: dict, kind: str):
    """(gt, results) with every error of ``kind`` fixed."""
    if kind == "missed":
        drop = {(image_id, g) for image_id, e in errors.items() for g in e["missed"]}
        counter: dict[int, int] = {}
        keep = []
        for a in gt["annotations"]:  # the g-th annotation of its image is box g of ImageBoxes
            g = counter.get(a["image_id"], 0)
            counter[a["image_id"]] = g + 1
            if (a["image_id"], g) not in drop:
                keep.append(a)
        return {**gt, "annotations": keep}, results
    results = [dict(r) for r in results]
    removed = set()
    for image_id, e in errors.items():
        im, taken = images[image_id], set(e["found"])
        for i, k, target in e["dets"]:  # by descending score
            if k != kind:
                continue
            if target < 0 or target in taken:
                removed.add(i)
                continue
            taken.add(target)
            if k == "classification":
                results[i]["category_id"] = int(im.gt_classes[target])
            else:
                results[i]["bbox"] = [float(v) for v in im.gt_boxes[target]]
    return gt, [r for i, r in enumerate(results) if i not in removed]


def error_breakdown(gt: dict, results: list[dict], images: dict[int, ImageBoxes], categories) -> dict:
    """{"metric": "map_50", "base": mAP50, "delta_ap": {type: AP points gained by fixing it},
    "counts": {type: how many}} (mAP50 on COCO's 0-1 scale, gains x100)."""
    from detr_ft.metrics import coco_metrics

    errors = classify_errors(images)
    base = coco_metrics(gt, results, categories)["map_50"]
    counts = {k: 0 for k in ERROR_TYPES}
    for e in errors.values():
        counts["missed"] += len(e["missed"])
        for _, k, _ in e["dets"]:
            counts[k] += 1
    delta = {}
    for kind in ERROR_TYPES:
        if not counts[kind]:
            delta[kind] = 0.0
            continue
        g, r = fixed(gt, results, images, errors, kind)
        delta[kind] = round(100 * (coco_metrics(g, r, categories)["map_50"] - base), 3)
    return {"metric": "map_50", "base": base, "delta_ap": delta, "counts": counts}


def plot_breakdown(breakdown: dict, out_png) -> None:
    """Bars: AP50 points each error type costs, with its count."""
    from detr_ft.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    kinds = list(ERROR_TYPES)
    values = [breakdown["delta_ap"][k] for k in kinds]
    bars = ax.bar(kinds, values, color=["#EE6677", "#CCBB44", "#AA3377", "#66CCEE", "#4477AA", "#228833"])
    for bar, k in zip(bars, kinds):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(),
                f"{bar.get_height():.1f}\n(n={breakdown['counts'][k]})", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("mAP50 points gained by fixing")
    ax.set_ylim(0, max(values + [1.0]) * 1.3)
    ax.set_title(f"error breakdown (TIDE-style); mAP50 = {100 * breakdown['base']:.1f}")
    ax.grid(axis="y", alpha=0.3)
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.1, top=0.9)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
