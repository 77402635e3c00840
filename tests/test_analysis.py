"""Evaluation that explains (detr_ft.analysis): confusion matrix, PR curves and thresholds,
TIDE-style error breakdown, bootstrap intervals — on random and hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest

from detr_ft.analysis.bootstrap import bootstrap_intervals
from detr_ft.analysis.confusion import confusion_matrix
from detr_ft.analysis.matching import per_image
from detr_ft.analysis.pr import class_curves
from detr_ft.analysis.tide import ERROR_TYPES, error_breakdown
from detr_ft.metrics import coco_metrics
from detr_ft.types import Categories

CATS = Categories((3, 7, 9), ("a", "b", "c"))  # non-contiguous ids, as real datasets have


def random_case(rng: np.random.Generator, images: int, categories: Categories = CATS) -> tuple[dict, list[dict]]:
    """A COCO gt document and results: boxes near the truth (some of another class, some badly
    placed), duplicates, and detections on the background; all scores distinct."""
    gt = {"images": [], "annotations": [], "categories": [{"id": i, "name": n} for i, n in
                                                          zip(categories.ids, categories.names)]}
    results = []
    for image_id in range(1, images + 1):
        gt["images"].append({"id": image_id, "width": 200, "height": 200})
        for _ in range(rng.integers(0, 6)):
            x, y = rng.uniform(0, 150, 2)
            w, h = rng.uniform(10, 50, 2)
            c = int(rng.choice(categories.ids))
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": image_id, "category_id": c,
                                      "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
            for _ in range(rng.choice([0, 1, 1, 2])):  # found, sometimes twice, sometimes not
                jitter = rng.normal(0, 0.15 * min(w, h), 4)
                dc = c if rng.random() < 0.8 else int(rng.choice(categories.ids))
                results.append({"image_id": image_id, "category_id": dc, "score": 0.0,
                                "bbox": [x + jitter[0], y + jitter[1], max(2, w + jitter[2]), max(2, h + jitter[3])]})
        for _ in range(rng.integers(0, 3)):  # background
            x, y = rng.uniform(0, 170, 2)
            results.append({"image_id": image_id, "category_id": int(rng.choice(categories.ids)), "score": 0.0,
                            "bbox": [x, y, 20.0, 20.0]})
    for r, s in zip(results, rng.permutation(len(results))):
        r["score"] = float((s + 1) / (len(results) + 1))
    return gt, results


def plain_iou(a, b) -> float:
    """IoU of two [x, y, w, h] boxes, the schoolbook way."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def brute_force_confusion(gt: dict, results: list[dict], thresholds: dict[int, float]) -> np.ndarray:
    """The rule as the README states it, by repeated search: over and over take the remaining
    (box, detection) pair of highest IoU >= 0.5; what is left over goes to background."""
    ids = list(CATS.ids)
    n = len(ids)
    cm = np.zeros((n + 1, n + 1), dtype=int)
    for im in gt["images"]:
        boxes = [a for a in gt["annotations"] if a["image_id"] == im["id"]]
        dets = [r for r in results if r["image_id"] == im["id"] and r["score"] >= thresholds.get(r["category_id"], .5)]
        free_b, free_d = set(range(len(boxes))), set(range(len(dets)))
        while True:
            pairs = [(plain_iou(boxes[i]["bbox"], dets[j]["bbox"]), i, j) for i in free_b for j in free_d]
            pairs = [p for p in pairs if p[0] >= 0.5]
            if not pairs:
                break
            _, i, j = max(pairs)
            cm[ids.index(boxes[i]["category_id"]), ids.index(dets[j]["category_id"])] += 1
            free_b.discard(i)
            free_d.discard(j)
        for i in free_b:
            cm[ids.index(boxes[i]["category_id"]), n] += 1
        for j in free_d:
            cm[n, ids.index(dets[j]["category_id"])] += 1
    return cm


@pytest.mark.parametrize("seed", range(4))
def test_confusion_matrix_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    gt, results = random_case(rng, 12)
    thresholds = {c: float(t) for c, t in zip(CATS.ids, rng.uniform(0.0, 0.6, 3))}
    counts, _ = confusion_matrix(per_image(gt, results), list(CATS.ids), thresholds, 0.5)
    assert counts.tolist() == brute_force_confusion(gt, results, thresholds).tolist()
    truth = [sum(a["category_id"] == c for a in gt["annotations"]) for c in CATS.ids]
    assert counts.sum(axis=1)[:-1].tolist() == truth  # every ground-truth box counted once
    kept = [sum(r["category_id"] == c and r["score"] >= thresholds[c] for r in results) for c in CATS.ids]
    assert counts.sum(axis=0)[:-1].tolist() == kept  # every kept detection counted once


@pytest.mark.parametrize("seed", range(3))
def test_pr_curve_area_is_the_coco_ap50(seed):
    gt, results = random_case(np.random.default_rng(10 + seed), 15)
    curves = class_curves(per_image(gt, results), list(CATS.ids))
    coco = coco_metrics(gt, results, CATS)["per_class_50"]
    for cid, name in zip(CATS.ids, CATS.names):
        assert curves[cid].ap101() == pytest.approx(coco[name], abs=1e-9)  # COCO's 101 recall points
        # the exact area differs from the 101-point sum by at most one sampling step and 1/101
        assert abs(curves[cid].area() - coco[name]) <= 1 / 100 + 1 / 101
        best = curves[cid].best_f1()
        kept = [r for r in results if r["category_id"] == cid and r["score"] >= best["threshold"]]
        assert len(kept) == pytest.approx(best["recall"] * curves[cid].num_gt / best["precision"])


def case(boxes: list[tuple], dets: list[tuple]) -> tuple[dict, list[dict]]:
    """One image: boxes (category id, [x, y, w, h]), detections (category id, [x, y, w, h], score)."""
    gt = {"images": [{"id": 1, "width": 100, "height": 100}],
          "categories": [{"id": i, "name": n} for i, n in zip(CATS.ids, CATS.names)],
          "annotations": [{"id": k + 1, "image_id": 1, "category_id": c, "bbox": list(b), "area": b[2] * b[3],
                           "iscrowd": 0} for k, (c, b) in enumerate(boxes)]}
    return gt, [{"image_id": 1, "category_id": c, "bbox": list(b), "score": s} for c, b, s in dets]


A, B = (10, 10, 20, 20), (60, 60, 20, 20)
A_NEAR = (11, 11, 20, 20)  # IoU 0.82 with A
A_OFF = (20, 10, 20, 20)  # IoU 1/3 with A
FAR = (70, 5, 20, 20)  # touches nothing
AP_ONE_OF_TWO_FIRST = 51 / 101  # recall 0.5 at precision 1, nothing after: COCO's 101-point AP
AP_TP_FP_TP = (51 + 50 * 2 / 3) / 101  # precision 1 up to recall 0.5, then 2/3 up to recall 1
AP_FP_TP = 0.5  # one box, found by the second detection: precision 1/2 at every recall

TIDE_CASES = {  # name: (boxes, detections, the one error type, its count, mAP50 before fixing)
    "localisation": ([(3, A)], [(3, A_OFF, 0.9)], "localisation", 1, 0.0),
    "duplicate": ([(3, A), (3, B)], [(3, A, 0.9), (3, A_NEAR, 0.8), (3, B, 0.7)], "duplicate", 1, AP_TP_FP_TP),
    "classification": ([(3, A), (7, B)], [(7, A, 0.9), (7, B, 0.8)], "classification", 1, (0 + AP_FP_TP) / 2),
    "missed": ([(3, A), (3, B)], [(3, A, 0.9)], "missed", 1, AP_ONE_OF_TWO_FIRST),
    "background": ([(3, A)], [(3, FAR, 0.9), (3, A, 0.8)], "background", 1, AP_FP_TP),
}


@pytest.mark.parametrize("name", TIDE_CASES)
def test_error_breakdown_hand_made_cases(name):
    """Each case has exactly one error; fixing it makes the detections perfect (mAP50 1), so
    its cost is 100 x (1 - mAP50 before), and every other type costs nothing."""
    boxes, dets, kind, count, before = TIDE_CASES[name]
    gt, results = case(boxes, dets)
    b = error_breakdown(gt, results, per_image(gt, results), CATS)
    assert b["base"] == pytest.approx(before, abs=1e-9)
    assert b["counts"] == {k: (count if k == kind else 0) for k in ERROR_TYPES}
    assert b["delta_ap"][kind] == pytest.approx(100 * (1 - before), abs=1e-3)
    assert all(v == 0 for k, v in b["delta_ap"].items() if k != kind)


def test_error_breakdown_both_and_mixed():
    """A detection of the wrong class, badly placed, is "both"; with a missed box beside it,
    each is counted once and fixing "both" alone (dropping it) gains nothing here."""
    gt, results = case([(3, A), (3, B)], [(7, A_OFF, 0.9), (3, B, 0.8)])
    b = error_breakdown(gt, results, per_image(gt, results), CATS)
    assert b["counts"]["both"] == 1 and b["counts"]["missed"] == 1
    assert b["delta_ap"]["missed"] == pytest.approx(100 * (1 - AP_ONE_OF_TWO_FIRST), abs=1e-3)


def test_bootstrap_contains_the_estimate_and_shrinks_with_more_images():
    widths = []
    for images in (12, 120):
        gt, results = random_case(np.random.default_rng(5), images)
        point = coco_metrics(gt, results, CATS)
        iv = bootstrap_intervals(gt, results, CATS, resamples=40, seed=1)
        for k in ("map", "map_50"):
            assert iv[k][0] <= point[k] <= iv[k][1]
        widths.append(iv["map_50"][1] - iv["map_50"][0])
    assert widths[1] < 0.6 * widths[0]  # ~ 1/sqrt(10) in theory
    assert bootstrap_intervals(gt, results, CATS, resamples=0) is None


def test_bootstrap_default_is_on_for_small_sets_and_bounded():
    from detr_ft.analysis.bootstrap import default_resamples

    assert default_resamples(29) == 200 and default_resamples(100) == 200
    assert default_resamples(200) == 100 and default_resamples(499) == 50  # fewer where each costs more
    assert default_resamples(500) == 0 and default_resamples(5000) == 0


def test_load_thresholds_finds_them_where_eval_train_and_export_put_them(tmp_path):
    import json

    from detr_ft.errors import UserError
    from detr_ft.thresholds import load_thresholds

    run = tmp_path / "run"
    run.mkdir()
    (run / "last.ckpt").write_bytes(b"")
    assert load_thresholds(run / "last.ckpt") is None  # nothing beside it
    (run / "metrics.json").write_text(json.dumps({"thresholds": {"7": {"threshold": 0.3, "name": "b"}}}))
    assert load_thresholds(run / "last.ckpt") == {7: 0.3}  # train's metrics.json beside the checkpoint
    export = tmp_path / "export"
    export.mkdir()
    (export / "config.json").write_text(json.dumps({"detr_ft_thresholds": {"3": 0.25, "9": 0.6}}))
    assert load_thresholds(export) == {3: 0.25, 9: 0.6}  # an exported model directory
    assert load_thresholds(export, run / "metrics.json") == {7: 0.3}  # an explicit file wins
    (tmp_path / "other.json").write_text(json.dumps({"map": 0.5}))
    with pytest.raises(UserError, match="no per-class thresholds"):
        load_thresholds(export, tmp_path / "other.json")
    (tmp_path / "broken.json").write_text(json.dumps({"thresholds": {"x": {}}}))
    with pytest.raises(UserError, match="malformed"):
        load_thresholds(export, tmp_path / "broken.json")


@pytest.mark.parametrize("seed", range(3))
def test_bootstrap_drops_only_detections_no_resample_can_see(seed):
    """Each resample scores the same with and without the trailing false positives."""
    from detr_ft.analysis.bootstrap import resample, without_trailing_false_positives

    rng = np.random.default_rng(20 + seed)
    gt, results = random_case(rng, 10)
    for r in results[::3]:  # many low-scoring detections, as real models give
        results.append({**r, "bbox": [v + 1.5 for v in r["bbox"]], "score": r["score"] / 7})
    kept = without_trailing_false_positives(gt, results)
    assert 0 < len(kept) < len(results)
    full, pruned = {}, {}
    for r in results:
        full.setdefault(r["image_id"], []).append(r)
    for r in kept:
        pruned.setdefault(r["image_id"], []).append(r)
    for _ in range(5):
        draw = rng.integers(0, len(gt["images"]), len(gt["images"]))
        a = coco_metrics(*resample(gt, full, draw), CATS)
        b = coco_metrics(*resample(gt, pruned, draw), CATS)
        assert (a["map"], a["map_50"]) == pytest.approx((b["map"], b["map_50"]), abs=1e-12)
