"""Precision-recall curves per class at IoU 0.5 and the F1-optimal score threshold of each.

A detection is a true positive by COCO's own rule (``matching.coco_matches``), so the
curve is the one COCO's AP50 integrates: its area, sampled at COCO's 101 recall points,
is the class's AP50 (tested against the evaluator).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detr_ft.analysis.matching import ImageBoxes, coco_matches

RECALL_POINTS = np.linspace(0.0, 1.0, 101)  # COCO's


@dataclass
class ClassCurve:
    """One class's curve: scores, precision and recall [D] after each detection, by descending score;
    ``num_gt`` ground-truth boxes."""

    scores: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    num_gt: int

    def area(self) -> float:
        """Area under the interpolated curve (precision made non-increasing), every point counted."""
        if not self.num_gt or not len(self.recall):
            return 0.0
        p = envelope(self.precision)
        r = np.concatenate([[0.0], self.recall])
        return float(np.sum((r[1:] - r[:-1]) * p))

    def ap101(self) -> float:
        """COCO's 101-point interpolated AP of this curve (precision at the first recall >= r)."""
        if not self.num_gt or not len(self.recall):
            return 0.0
        p = envelope(self.precision)
        at = np.searchsorted(self.recall, RECALL_POINTS, side="left")
        return float(np.where(at < len(p), p[np.minimum(at, len(p) - 1)], 0.0).mean())

    def best_f1(self) -> dict | None:
        """The score threshold of highest F1 (keep detections with score >= it), or None
        where the class has no true positive."""
        if not len(self.scores):
            return None
        f1 = 2 * self.precision * self.recall / np.maximum(self.precision + self.recall, 1e-12)
        # among equal scores only the last position is reachable by a threshold
        last = np.append(self.scores[1:] != self.scores[:-1], True)
        f1 = np.where(last, f1, -1.0)
        i = int(np.argmax(f1))
        if f1[i] <= 0:
            return None
        return {"threshold": float(self.scores[i]), "f1": float(f1[i]), "precision": float(self.precision[i]),
                "recall": float(self.recall[i])}


def envelope(precision: np.ndarray) -> np.ndarray:
    """Precision made non-increasing along recall (the highest precision at any larger recall)."""
    return np.maximum.accumulate(precision[::-1])[::-1]


def class_curves(images: dict[int, ImageBoxes], category_ids: list[int]) -> dict[int, ClassCurve]:
    """The curve of every category id over all images."""
    scores: dict[int, list] = {c: [] for c in category_ids}
    hits: dict[int, list] = {c: [] for c in category_ids}
    num_gt = {c: 0 for c in category_ids}
    for im in images.values():
        matched = coco_matches(im)
        for c in im.gt_classes.tolist():
            num_gt[c] = num_gt.get(c, 0) + 1
        for c, s, m in zip(im.det_classes.tolist(), im.det_scores.tolist(), matched.tolist()):
            if c in scores:
                scores[c].append(s)
                hits[c].append(m >= 0)
    curves = {}
    for c in category_ids:
        s = np.asarray(scores[c], dtype=float)
        order = np.argsort(-s, kind="mergesort")  # as COCO orders them
        tp = np.cumsum(np.asarray(hits[c], dtype=float)[order])
        fp = np.cumsum(1.0 - np.asarray(hits[c], dtype=float)[order])
        precision = tp / np.maximum(tp + fp, 1e-12)
        recall = tp / num_gt[c] if num_gt[c] else np.zeros_like(tp)
        curves[c] = ClassCurve(s[order], precision, recall, num_gt[c])
    return curves


def thresholds_from_curves(curves: dict[int, ClassCurve]) -> dict[int, dict]:
    """{category id: best_f1 dict} for the classes that have one."""
    best = {c: curve.best_f1() for c, curve in curves.items()}
    return {c: b for c, b in best.items() if b is not None}


def plot_pr_curves(curves: dict[int, ClassCurve], names: dict[int, str], out_png, thresholds: dict[int, dict]):
    """One panel: each class's interpolated curve, its AP50 in the legend, its F1-optimal point marked."""
    from detr_ft.draw import class_colour
    from detr_ft.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5.5))
    for k, (c, curve) in enumerate(curves.items()):
        colour = class_colour(k)
        label = f"{names[c]} (AP50 {curve.ap101():.3f})" if curve.num_gt else f"{names[c]} (no ground truth)"
        if len(curve.recall) and curve.num_gt:
            ax.step(np.concatenate([[0], curve.recall]), np.concatenate([[envelope(curve.precision)[0]],
                    envelope(curve.precision)]), where="pre", color=colour, label=label)
        else:
            ax.plot([], [], color=colour, label=label)
        if c in thresholds:
            t = thresholds[c]
            ax.plot(t["recall"], t["precision"], "o", color=colour, markeredgecolor="black")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("precision-recall at IoU 0.5 (dot: F1-optimal threshold)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.1, top=0.93)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
