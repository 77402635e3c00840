"""Confusion matrix at IoU 0.5 over the classes plus background.

The matching rule (ultralytics' ``ConfusionMatrix``): per image, the detections whose
score reaches their class's threshold are matched to the ground-truth boxes regardless
of class; all (box, detection) pairs with IoU >= 0.5 are taken by descending IoU, each
box and each detection at most once. A matched pair counts at (true class, detected
class), right or wrong; a box left unmatched at (class, background), a missed object;
a detection left unmatched at (background, class). So row c sums to the number of
ground-truth boxes of class c, and column c to the kept detections of class c.
"""

from __future__ import annotations

import numpy as np

from detr_ft.analysis.matching import IOU_MATCH, ImageBoxes, box_iou


def kept(im: ImageBoxes, thresholds: dict[int, float], default: float) -> np.ndarray:
    """[M] bool: the detections whose score reaches their class's threshold."""
    t = np.array([thresholds.get(int(c), default) for c in im.det_classes], dtype=float)
    return im.det_scores >= t


def greedy_pairs(iou: np.ndarray, iou_threshold: float = IOU_MATCH) -> list[tuple[int, int]]:
    """(gt, det) index pairs of IoU >= ``iou_threshold``, taken by descending IoU, each index once."""
    g, d = np.nonzero(iou >= iou_threshold)
    order = np.argsort(-iou[g, d], kind="mergesort")
    pairs, used_g, used_d = [], set(), set()
    for i in order:
        if g[i] not in used_g and d[i] not in used_d:
            pairs.append((int(g[i]), int(d[i])))
            used_g.add(g[i])
            used_d.add(d[i])
    return pairs


def image_confusion(im: ImageBoxes, index: dict[int, int], thresholds: dict[int, float],
                    default: float = 0.5) -> np.ndarray:
    """[C+1, C+1] counts of one image; ``index`` maps category id -> row/column, C is background."""
    n = len(index)
    cm = np.zeros((n + 1, n + 1), dtype=np.int64)
    keep = kept(im, thresholds, default)
    det_boxes, det_classes = im.det_boxes[keep], im.det_classes[keep]
    pairs = greedy_pairs(box_iou(im.gt_boxes, det_boxes))
    for g, d in pairs:
        cm[index[int(im.gt_classes[g])], index[int(det_classes[d])]] += 1
    matched_g = {g for g, _ in pairs}
    matched_d = {d for _, d in pairs}
    for g, c in enumerate(im.gt_classes.tolist()):
        if g not in matched_g:
            cm[index[c], n] += 1
    for d, c in enumerate(det_classes.tolist()):
        if d not in matched_d:
            cm[n, index[c]] += 1
    return cm


def confusion_matrix(images: dict[int, ImageBoxes], category_ids: list[int], thresholds: dict[int, float],
                     default: float = 0.5) -> tuple[np.ndarray, dict[int, int]]:
    """Counts [C+1, C+1] summed over images (rows: truth, columns: detection, last: background),
    and the per-image errors (off-diagonal counts) for finding the worst images."""
    index = {c: i for i, c in enumerate(category_ids)}
    total = np.zeros((len(index) + 1,) * 2, dtype=np.int64)
    errors = {}
    for image_id, im in images.items():
        cm = image_confusion(im, index, thresholds, default)
        total += cm
        errors[image_id] = int(cm.sum() - np.trace(cm[:-1, :-1]))
    return total, errors


def row_normalised(counts: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (rows without any count stay 0)."""
    sums = counts.sum(axis=1, keepdims=True)
    return np.where(sums > 0, counts / np.maximum(sums, 1), 0.0)


def plot_confusion(counts: np.ndarray, labels: list[str], out_png, note: str = "") -> None:
    """Two panels: counts, and rows normalised to 1 (what fraction of each true class went where)."""
    from detr_ft.plots import _pyplot

    plt = _pyplot()
    n = len(labels)
    side = max(4.5, 0.6 * n + 2.5)
    fig, axes = plt.subplots(1, 2, figsize=(2 * side, side))
    for ax, values, title, fmt in ((axes[0], counts, "counts", "{:.0f}"),
                                   (axes[1], row_normalised(counts), "row-normalised", "{:.2f}")):
        top = values.max() or 1
        ax.imshow(values, cmap="Blues", vmin=0, vmax=top)
        for i in range(n):
            for j in range(n):
                if values[i, j]:
                    ax.text(j, i, fmt.format(values[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if values[i, j] > 0.6 * top else "black")
        ax.set_xticks(range(n), labels, rotation=45, ha="right")
        ax.set_yticks(range(n), labels)
        ax.set_xlabel("detected")
        ax.set_ylabel("true")
        ax.set_title(f"confusion at IoU 0.5, {title}")
    if note:
        fig.suptitle(note, fontsize=9)
    # fixed margins: tight_layout costs a second
    fig.subplots_adjust(left=0.12, right=0.98, bottom=0.2, top=0.86, wspace=0.35)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
