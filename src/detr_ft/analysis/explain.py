"""What eval and train's final validation add to the COCO metrics: PR curves and per-class
thresholds, the confusion matrix, the error breakdown, bootstrap intervals, their charts,
and ``report.html``."""

from __future__ import annotations

from pathlib import Path

from detr_ft.analysis.bootstrap import bootstrap_intervals
from detr_ft.analysis.confusion import confusion_matrix, plot_confusion, row_normalised
from detr_ft.analysis.matching import per_image
from detr_ft.analysis.pr import class_curves, plot_pr_curves, thresholds_from_curves
from detr_ft.analysis.tide import error_breakdown, plot_breakdown
from detr_ft.thresholds import FALLBACK

FILES = {"confusion": "confusion_matrix.png", "pr": "pr_curves.png", "errors": "error_breakdown.png"}


def explain(out_dir: Path, gt: dict, results: list[dict], categories, bootstrap: int = 0,
            seed: int = 0) -> tuple[dict, dict[int, int]]:
    """The analysis as metrics.json entries (charts written into ``out_dir``), and the errors
    per image id (off-diagonal confusion counts) for the report's gallery."""
    out_dir = Path(out_dir)
    ids = list(categories.ids)
    names = dict(zip(ids, categories.names))
    images = per_image(gt, results)
    curves = class_curves(images, ids)
    best = thresholds_from_curves(curves)
    thresholds = {c: b["threshold"] for c, b in best.items()}
    counts, errors = confusion_matrix(images, ids, thresholds, FALLBACK)
    labels = [names[c] for c in ids] + ["background"]
    breakdown = error_breakdown(gt, results, images, categories)
    intervals = bootstrap_intervals(gt, results, categories, bootstrap, seed=seed)
    plot_pr_curves(curves, names, out_dir / FILES["pr"], best)
    plot_confusion(counts, labels, out_dir / FILES["confusion"],
                   note="detections kept at each class's F1-optimal threshold (0.5 where it has none)")
    plot_breakdown(breakdown, out_dir / FILES["errors"])
    analysis = {
        "thresholds": {str(c): {"name": names[c], **b} for c, b in best.items()},
        "pr_curves": {names[c]: {"category_id": c, "ap50": round(curve.ap101(), 6), "ground_truth": curve.num_gt,
                                 "detections": int(len(curve.scores))} for c, curve in curves.items()},
        "confusion_matrix": {"iou": 0.5, "score_thresholds": "per-class F1-optimal (metrics 'thresholds'), "
                                                             f"{FALLBACK} for a class without one",
                             "labels": labels, "counts": counts.tolist(),
                             "normalized": [[round(v, 4) for v in row] for row in row_normalised(counts).tolist()]},
        "error_breakdown": breakdown,
        "bootstrap": intervals,
    }
    return analysis, errors
