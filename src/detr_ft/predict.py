"""``detr-ft predict``: annotated images and detections.json (COCO results format)."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
from PIL import Image

from detr_ft.data.image_check import image_file_problem
from detr_ft.data.shape_plan import ShapePlan
from detr_ft.data.source import read_split
from detr_ft.data.transforms import load_image
from detr_ft.data.validation import DataReport
from detr_ft.detector import Detector, aspect_ratio
from detr_ft.devices import say_if_slow_bf16
from detr_ft.draw import draw_boxes, side_by_side
from detr_ft.errors import UserError
from detr_ft.model.postprocess import to_coco_results
from detr_ft.thresholds import check_threshold, load_thresholds
from detr_ft.threads import in_threads
from detr_ft.types import DatasetIndex

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def collect_images(paths: list[str], on_bad_data: str = "error", limit: int = 0) -> list[Path]:
    """Files as given, and image files found in folders (recursively, sorted), the first
    ``limit`` of them (0: all); checked before any is used (``image_file_problem``): an
    unusable one is a ``UserError`` naming it under ``on_bad_data="error"``, and is left out
    with a warning under ``"skip"``."""
    found = []
    for p in map(Path, paths):
        p = p.expanduser()
        if p.is_dir():
            found += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES and q.is_file())
        elif p.is_file():
            found.append(p)
        else:
            raise UserError(f"--images {p}: no such file or folder")
    if not found:
        raise UserError(f"--images {' '.join(paths)}: no image files found")
    found = found[:limit] if limit else found
    problems = in_threads(image_file_problem, found)
    DataReport().settle_bad("--images", [f"{p}: {why}" for p, why in zip(found, problems) if why], "image",
                            on_bad_data)
    usable = [p for p, why in zip(found, problems) if not why]
    if not usable:
        raise UserError(f"--images {' '.join(paths)}: none of the {len(found)} files is a usable image")
    return usable


class Item(NamedTuple):
    """One image to run: where it is, its id, its ground truth (boxes x0 y0 x1 y1, labels) or
    None, how to decode it, and its height / width (for batches of like shape)."""

    path: Path
    image_id: int
    truth: tuple[np.ndarray, np.ndarray] | None
    load: Callable[[], Image.Image]
    aspect: float


def run_predict(ckpt_path: str, out_dir: Path, images: list[str] | None = None, data_dir: str | None = None,
                split: str = "test", threshold: float = 0.5, max_inf_frames: int = 0, batch_size: int = 8,
                device: str = "auto", pad: bool = False, detector: Detector | None = None,
                hf_dataset: str | None = None, cuda_graphs: bool = False, channels_last: bool = True,
                autocast: bool = False, on_bad_data: str = "error", index: DatasetIndex | None = None,
                image_size=None, thresholds_file: str | None = None) -> dict:
    """Run the detector over images, a dataset split (``data_dir``, or ``hf_dataset``) or an
    ``index`` already read (training's validation split); returns a summary. ``threshold``
    "auto": the per-class thresholds (``thresholds_file``, else found beside the checkpoint)."""
    check_threshold(threshold)
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1 (got {batch_size})")
    if cuda_graphs and not pad:
        raise UserError("--cuda-graphs needs static shapes: add --pad")
    if detector is None:
        detector = Detector.load(ckpt_path, device=device, channels_last=channels_last, autocast=autocast,
                                 image_size=image_size)
        say_if_slow_bf16(detector.device, autocast)
    if thresholds_file is not None:
        detector.thresholds = load_thresholds(ckpt_path, thresholds_file)
    if threshold == "auto":
        detector.class_thresholds()  # none: the error before any image is read
    if pad:  # static shapes: every batch on the largest canvas the resize produces, full batches
        detector.use_shapes(ShapePlan.for_inference(detector.resize, pad=True, batch_size=batch_size))
    if cuda_graphs or detector.device.type == "hpu":
        from detr_ft.devices import accelerate_inference

        detector.model = accelerate_inference(detector.model, detector.device, cuda_graphs)
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    items: list[Item] = []
    if images:
        items = [Item(p, i + 1, None, partial(load_image, p), aspect_ratio(p))
                 for i, p in enumerate(collect_images(images, on_bad_data, max_inf_frames))]
    else:
        if index is None:
            index = read_split(data_dir, split, on_bad_data, categories=detector.categories, hf_dataset=hf_dataset)
        for r in index.records:
            xyxy = np.concatenate([r.boxes[:, :2], r.boxes[:, :2] + r.boxes[:, 2:]], axis=1)
            items.append(Item(index.image_path(r), r.image_id, (xyxy, r.labels), partial(index.load_image, r),
                              r.aspect))
    if max_inf_frames:
        items = items[:max_inf_frames]
    names = detector.categories.names
    found, written = [None] * len(items), [None] * len(items)
    for ids in detector.shapes.inference_batches([item.aspect for item in items], batch_size):  # the order given kept below
        pil = [items[i].load() for i in ids]
        dets = detector.detect_samples([detector.sample(im, items[i].image_id) for im, i in zip(pil, ids)],
                                       threshold)
        for im, i, d in zip(pil, ids, dets):
            path, image_id, gt, *_ = items[i]
            found[i] = [{**r, "file_name": str(path)} for r in to_coco_results(d, image_id)]
            pred = draw_boxes(im, d.boxes.tolist(), d.labels.tolist(), names, d.scores.tolist())
            if gt is not None:
                rule = "per-class thresholds" if threshold == "auto" else f"score > {threshold:g}"
                titles = (f"ground truth: {len(gt[1])}", f"prediction: {len(d.scores)} with {rule}")
                pred = side_by_side(draw_boxes(im, gt[0].tolist(), gt[1].tolist(), names), pred, titles)
            target = out_dir / "images" / f"{image_id:06d}_{path.stem}.jpg"
            pred.save(target, quality=90)
            written[i] = str(target)
    results = [r for records in found for r in records]
    (out_dir / "detections.json").write_text(json.dumps(results, indent=1))
    return {"images": len(items), "detections": len(results), "annotated": str(out_dir / "images"),
            "detections_json": str(out_dir / "detections.json"), "files": written}
