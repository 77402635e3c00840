"""COCO detection index: built from the annotation JSON, with no image decoding.

CPPE-5's layout: ``DATA/images/<file_name>`` and ``DATA/annotations/<split>.json``.
Classes come from the JSON's ``categories``; their ids may be anything and are
mapped to contiguous indices ``0..C-1`` (sorted by id) for the model, and back
to the original ids in every output a user sees.

Opening a split also checks every image file, cheaply (``check_image_file`` in
data/image_check.py): inside the images folder, recognised, complete; nothing decoded.
Records are checked and boxes cleaned as every reader does (data/validation.py).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from detr_ft.data.image_check import check_image_file
from detr_ft.data.validation import DataReport, clean_boxes, is_id, is_number, show
from detr_ft.errors import UserError
from detr_ft.threads import in_threads
from detr_ft.types import Categories, DatasetIndex, ImageRecord

log = logging.getLogger("detr_ft")


@dataclass
class CocoIndex(DatasetIndex):
    """A split read from a COCO folder: pixels from the files under ``images_dir``."""

    def load_image(self, record: ImageRecord):
        """The record's decoded RGB image (EXIF applied): here a file under ``images_dir``;
        ``HfIndex`` (data/hf_dataset.py) reads a 🤗 datasets table."""
        from detr_ft.data.transforms import load_image

        return load_image(self.image_path(record))

    def coco_annotations(self) -> list:
        return read_json(self.annotation_file).get("annotations", [])


def annotation_path(data_dir: Path, split: str) -> Path:
    return Path(data_dir) / "annotations" / f"{split}.json"


def read_json(path: Path) -> dict:
    """Parse a JSON file; syntax errors become a UserError naming file and line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read ({e})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None


def _safe_relative(file_name) -> bool:
    """A file_name must stay inside the images folder."""
    if not isinstance(file_name, str) or not file_name:
        return False
    p = Path(file_name)
    return not p.is_absolute() and ".." not in p.parts and not file_name.startswith(("/", "\\"))


def parse_categories(doc: dict, path: Path) -> Categories:
    cats = doc.get("categories")
    if not isinstance(cats, list) or not cats:
        raise UserError(f"{path}: no 'categories' list; a COCO detection file needs at least one category")
    seen: dict[int, str] = {}
    for c in cats:
        if not isinstance(c, dict) or not is_id(c.get("id")):
            raise UserError(f"{path}: category {show(c)} needs an integer 'id'")
        if c["id"] in seen:
            raise UserError(f"{path}: duplicate category id {c['id']}")
        seen[c["id"]] = str(c.get("name", c["id"]))
    ids = tuple(sorted(seen))
    return Categories(ids, tuple(seen[i] for i in ids))


def load_index(data_dir: Path, split: str, on_bad_data: str = "error",
               categories: Categories | None = None) -> CocoIndex:
    """Read ``DATA/annotations/<split>.json`` into a ``CocoIndex``.

    Structural problems (bad records) raise ``UserError`` under
    ``on_bad_data="error"`` and are left out and counted under ``"skip"``.
    Geometric problems of single boxes (beyond the image, degenerate, NaN) are
    clipped or dropped and counted either way. ``categories`` forces a class
    list (e.g. the training split's when reading the test split).
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"data directory {data_dir} does not exist; pass --data-dir or make one with "
                        f"'detr-ft data synthetic --out {data_dir}'")
    path = annotation_path(data_dir, split)
    if not path.is_file():
        raise UserError(f"{path}: annotation file not found; expected DATA/annotations/{split}.json "
                        f"(CPPE-5 layout) — check --data-dir and --split")
    images_dir = data_dir / "images"
    if not images_dir.is_dir():
        raise UserError(f"{images_dir}: images folder not found; expected DATA/images/ next to DATA/annotations/")
    doc = read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list) or not isinstance(
            doc.get("annotations", []), list):
        raise UserError(f"{path}: not a COCO detection file (needs 'images' and 'annotations' lists)")
    file_cats = parse_categories(doc, path)
    cats = categories or file_cats
    if categories is not None and set(file_cats.ids) - set(categories.ids):
        extra = sorted(set(file_cats.ids) - set(categories.ids))
        raise UserError(f"{path}: categories {extra} are not in the training split's categories")
    report = DataReport()
    bad: list[str] = []

    images: dict[int, dict] = {}
    for i, img in enumerate(doc["images"]):
        problem = None
        if not isinstance(img, dict):
            problem = f"images[{i}] is not an object"
        elif not is_id(img.get("id")):
            problem = f"images[{i}] has no integer 'id'"
        elif img["id"] in images:
            problem = f"images[{i}]: duplicate image id {img['id']}"
        elif not _safe_relative(img.get("file_name")):
            problem = (f"images[{i}] (id {img['id']}): file_name {show(img.get('file_name'))} "
                       f"leaves the images folder")
        elif not all(is_number(img.get(k)) and 1 <= img.get(k) < 1e6 for k in ("width", "height")):
            problem = f"images[{i}] (id {img['id']}): 'width' and 'height' must be positive numbers of pixels"
        if problem:
            bad.append(problem)
            continue
        images[img["id"]] = img
    if not images and not bad:
        raise UserError(f"{path}: no images listed")

    per_image: dict[int, list[tuple[list[float], int]]] = {i: [] for i in images}
    cat_index = {c: k for k, c in enumerate(cats.ids)}
    for i, ann in enumerate(doc.get("annotations", [])):
        problem = None
        if not isinstance(ann, dict):
            problem = f"annotations[{i}] is not an object"
        elif not is_id(ann.get("image_id")) or ann["image_id"] not in images:
            problem = f"annotations[{i}]: image_id {show(ann.get('image_id'))} is not in 'images'"
        elif not is_id(ann.get("category_id")) or ann["category_id"] not in cat_index:
            problem = f"annotations[{i}]: category_id {show(ann.get('category_id'))} is not in 'categories'"
        elif not (isinstance(ann.get("bbox"), list) and len(ann["bbox"]) == 4 and all(
                is_number(v) for v in ann["bbox"])):
            problem = f"annotations[{i}]: bbox {show(ann.get('bbox'))} is not four numbers [x, y, w, h]"
        if problem:
            bad.append(problem)
            continue
        if ann.get("iscrowd", 0):
            continue  # crowd regions are not objects to detect (as COCO evaluation treats them)
        per_image[ann["image_id"]].append((ann["bbox"], cat_index[ann["category_id"]]))

    # The files of the structurally sound images: missing, not images, truncated, links out.
    ids = list(images)
    root = os.path.realpath(images_dir)

    file_problems = in_threads(lambda i: check_image_file(images_dir, images[i]["file_name"], root), ids)
    for image_id, problem in zip(ids, file_problems):
        if problem:
            bad.append(f"image id {image_id} ({show(images[image_id]['file_name'])}): {problem}")
            report.skipped_objects += len(per_image.pop(image_id))
            del images[image_id]

    report.settle_bad(str(path), bad, "record", on_bad_data)

    records = []
    for image_id, img in images.items():
        boxes, labels = clean_boxes(per_image[image_id], float(img["width"]), float(img["height"]), report)
        records.append(ImageRecord(image_id, img["file_name"], int(img["width"]), int(img["height"]), boxes, labels))
    if not records:
        raise UserError(f"{path}: no usable images left")
    if report.dropped_boxes or report.clipped_boxes:
        log.warning("%s: %d box(es) clipped to their image, %d degenerate or NaN box(es) dropped",
                    path, report.clipped_boxes, report.dropped_boxes)
    return CocoIndex(images_dir, path, cats, records, report)
