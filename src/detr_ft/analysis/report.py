"""``report.html``: one self-contained page in the output dir.

Images are files beside it (relative links), styles inline, no server, no network. A small
inline script marks ``<body data-images>`` "ok" once every image has loaded, or logs a console
error naming the ones that did not (what the browser test checks).
"""

from __future__ import annotations

import html
from pathlib import Path

from detr_ft.analysis.explain import FILES
from detr_ft.metrics import METRIC_NAMES

GALLERY_DIR = "report_files"
GALLERY_SIZE = 6

STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 9px;text-align:right}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #ddd}
.note{color:#666;font-size:.9em}.gallery figure{margin:1em 0}"""

CHECK_IMAGES = """window.addEventListener("load", function () {
  var bad = Array.prototype.filter.call(document.images, function (im) {
    return !(im.complete && im.naturalWidth > 0); });
  if (bad.length) { console.error("images that did not load: " + bad.map(function (im) { return im.src; }).join(" ")); }
  document.body.setAttribute("data-images", bad.length ? "failed" : "ok");
});"""


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) else "–"


def metrics_table(metrics: dict) -> str:
    boot = metrics.get("bootstrap") or {}
    rows = []
    for k in METRIC_NAMES:
        if k in metrics:
            iv = boot.get(k)
            rows.append([k, _fmt(metrics[k]), f"[{iv[0]:.4f}, {iv[1]:.4f}]" if iv else ""])
    note = (f"<p class=note>{int(100 * boot['level'])} % intervals: percentile bootstrap over images, "
            f"{boot['resamples']} resamples.</p>" if boot else "<p class=note>No bootstrap (--bootstrap 0).</p>")
    return _table(["metric", "value", "95 % interval"], rows) + note


def per_class_table(metrics: dict) -> str:
    pr = metrics.get("pr_curves", {})
    thresholds = {v["name"]: v for v in metrics.get("thresholds", {}).values()}
    rows = []
    for name, ap in metrics.get("per_class", {}).items():
        t = thresholds.get(name)
        rows.append([name, _fmt(ap), _fmt(pr.get(name, {}).get("ap50")), pr.get(name, {}).get("ground_truth", ""),
                     _fmt(t["threshold"]) if t else "none", _fmt(t["f1"]) if t else ""])
    return _table(["class", "AP@[.5:.95]", "AP50", "objects", "F1-optimal threshold", "F1"], rows)


def breakdown_table(metrics: dict) -> str:
    b = metrics.get("error_breakdown")
    if not b:
        return ""
    return _table(["error", "count", "mAP50 points lost"],
                  [[k, b["counts"][k], f"{v:.2f}"] for k, v in b["delta_ap"].items()])


def _figure(src: str, caption: str) -> str:
    return f'<figure><img src="{html.escape(src)}" alt="{html.escape(caption)}"><figcaption>' \
           f"{html.escape(caption)}</figcaption></figure>"


def write_gallery(out_dir: Path, index, results: list[dict], thresholds: dict[int, float], errors: dict[int, int],
                  size: int = GALLERY_SIZE) -> list[tuple[str, str]]:
    """Ground truth beside the detections kept at the per-class thresholds, for the ``size``
    images with the most errors; [(relative path, caption)]."""
    import numpy as np

    from detr_ft.draw import draw_boxes, side_by_side
    from detr_ft.thresholds import FALLBACK

    worst = [i for i in sorted(errors, key=lambda i: -errors[i]) if errors[i] > 0][:size]
    if not worst:
        return []
    records = {r.image_id: r for r in index.records}
    names = index.categories.names
    folder = Path(out_dir) / GALLERY_DIR
    folder.mkdir(exist_ok=True)
    shown = []
    for rank, image_id in enumerate(worst):
        record = records[image_id]
        image = index.load_image(record)
        dets = [r for r in results if r["image_id"] == image_id
                and r["score"] >= thresholds.get(r["category_id"], FALLBACK)]
        gt_xyxy = np.concatenate([record.boxes[:, :2], record.boxes[:, :2] + record.boxes[:, 2:]], axis=1)
        truth = draw_boxes(image, gt_xyxy.tolist(), record.labels.tolist(), names)
        pred = draw_boxes(image, [[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in dets)],
                          [index.categories.index_of(d["category_id"]) for d in dets], names,
                          [d["score"] for d in dets])
        name = f"{GALLERY_DIR}/{rank:02d}_{image_id}.jpg"
        side_by_side(truth, pred, (f"ground truth: {len(record.labels)}",
                                   f"prediction: {len(dets)} (per-class thresholds)")).save(out_dir / name, quality=88)
        shown.append((name, f"{record.file_name}: {errors[image_id]} errors"))
    return shown


def write_report(out_dir: Path, metrics: dict, title: str, gallery: list[tuple[str, str]]) -> Path:
    """``out_dir/report.html`` from metrics.json's content and the charts already in ``out_dir``."""
    out_dir = Path(out_dir)
    source = html.escape(str(metrics.get("checkpoint", metrics.get("model", ""))))
    parts = [f"<h1>{html.escape(title)}</h1>", f"<p class=note>{metrics.get('images', '')} images; model {source}</p>",
             "<h2>Metrics</h2>", metrics_table(metrics), "<h2>Per class</h2>", per_class_table(metrics)]
    if (out_dir / "curves.png").is_file():
        parts += ["<h2>Training</h2>", _figure("curves.png", "training loss and validation mAP")]
    parts += ["<h2>Confusion matrix</h2>", _figure(FILES["confusion"], "rows: true class, columns: detected class"),
              "<h2>Precision-recall</h2>", _figure(FILES["pr"], "per class at IoU 0.5"),
              "<h2>Error breakdown</h2>", breakdown_table(metrics), _figure(FILES["errors"], "TIDE-style, mAP50")]
    if gallery:
        parts += ["<h2>Images with the most errors</h2><div class=gallery>"]
        parts += [_figure(src, caption) for src, caption in gallery] + ["</div>"]
    page = (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<link rel=icon href=\"data:,\"><style>{STYLE}</style></head><body data-images=pending>\n"
            + "\n".join(parts) + f"\n<script>{CHECK_IMAGES}</script></body></html>\n")
    path = out_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
