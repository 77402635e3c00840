"""Evaluation that explains: confusion matrix, PR curves and per-class thresholds, TIDE-style
error breakdown, bootstrap intervals, and ``report.html`` (see README, "Evaluation")."""

from __future__ import annotations

from pathlib import Path


def analyse(out_dir: Path, gt: dict, results: list[dict], categories, metrics: dict, index=None,
            bootstrap: int = 0, title: str = "detr-ft evaluation") -> dict:
    """``metrics`` with the analysis added; writes the charts, the gallery (images from ``index``,
    when given) and ``report.html`` into ``out_dir``."""
    from detr_ft.analysis.explain import explain
    from detr_ft.analysis.report import write_gallery, write_report

    analysis, errors = explain(out_dir, gt, results, categories, bootstrap=bootstrap)
    metrics = {**metrics, **analysis}
    thresholds = {int(c): v["threshold"] for c, v in analysis["thresholds"].items()}
    gallery = write_gallery(Path(out_dir), index, results, thresholds, errors) if index is not None else []
    write_report(out_dir, metrics, title, gallery)
    return metrics
