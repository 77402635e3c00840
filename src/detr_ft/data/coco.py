"""COCO detection index: built from the annotation JSON alone, no image decoding.

CPPE-5's layout: ``DATA/images/<file_name>`` and ``DATA/annotations/<split>.json``.
Classes come from the JSON's ``categories``; their ids may be anything and are
mapped to contiguous indices ``0..C-1`` (sorted by id) for the model, and back
to the original ids in every output a user sees.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detr_ft.errors import UserError

MAX_LISTED_PROBLEMS = 10


@dataclass(frozen=True)
class Categories:
    """The dataset's classes: original ids and names, in contiguous-index order."""

    ids: tuple[int, ...]
    names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.ids)

    def index_of(self, category_id: int) -> int:
        return self.ids.index(category_id)

    @property
    def id2label(self) -> dict[int, str]:
        """Contiguous index -> name, as transformers configs store it."""
        return dict(enumerate(self.names))

    def to_dict(self) -> dict:
        return {"ids": list(self.ids), "names": list(self.names)}

    @classmethod
    def from_dict(cls, d: dict) -> "Categories":
        return cls(tuple(int(i) for i in d["ids"]), tuple(str(n) for n in d["names"]))


@dataclass
class ImageRecord:
    """One image and its objects.

    boxes:  [N, 4] float32, (x, y, w, h) in pixels of the image as displayed
            (EXIF orientation applied), as COCO stores them.
    labels: [N] int64, contiguous class indices.
    """

    image_id: int
    file_name: str
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray

    @property
    def num_objects(self) -> int:
        return len(self.labels)


@dataclass
class DataReport:
    """What the reader left out or repaired, for the log and metrics.json."""

    skipped_records: int = 0
    dropped_boxes: int = 0
    clipped_boxes: int = 0
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "skipped_records": self.skipped_records,
            "dropped_boxes": self.dropped_boxes,
            "clipped_boxes": self.clipped_boxes,
        }


@dataclass
class CocoIndex:
    """All images of one split with their objects, and the categories."""

    images_dir: Path
    annotation_file: Path
    categories: Categories
    records: list[ImageRecord]
    report: DataReport

    def __len__(self) -> int:
        return len(self.records)

    def object_counts(self) -> np.ndarray:
        return np.array([r.num_objects for r in self.records], dtype=np.int64)

    def image_path(self, record: ImageRecord) -> Path:
        return self.images_dir / record.file_name


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


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


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
        if not isinstance(c, dict) or not isinstance(c.get("id"), int) or isinstance(c.get("id"), bool):
            raise UserError(f"{path}: category {c!r} needs an integer 'id'")
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
        elif not isinstance(img.get("id"), int) or isinstance(img.get("id"), bool):
            problem = f"images[{i}] has no integer 'id'"
        elif img["id"] in images:
            problem = f"images[{i}]: duplicate image id {img['id']}"
        elif not _safe_relative(img.get("file_name")):
            problem = f"images[{i}] (id {img['id']}): file_name {img.get('file_name')!r} leaves the images folder"
        elif not all(_is_number(img.get(k)) and img.get(k) > 0 for k in ("width", "height")):
            problem = f"images[{i}] (id {img['id']}): 'width' and 'height' must be positive numbers"
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
        elif ann.get("image_id") not in images:
            problem = f"annotations[{i}]: image_id {ann.get('image_id')!r} is not in 'images'"
        elif ann.get("category_id") not in cat_index:
            problem = f"annotations[{i}]: category_id {ann.get('category_id')!r} is not in 'categories'"
        elif not (isinstance(ann.get("bbox"), list) and len(ann["bbox"]) == 4 and all(
                _is_number(v) for v in ann["bbox"])):
            problem = f"annotations[{i}]: bbox {ann.get('bbox')!r} is not four numbers [x, y, w, h]"
        if problem:
            bad.append(problem)
            continue
        if ann.get("iscrowd", 0):
            continue  # crowd regions are not objects to detect (as COCO evaluation treats them)
        per_image[ann["image_id"]].append((ann["bbox"], cat_index[ann["category_id"]]))

    if bad:
        report.problems = bad
        if on_bad_data == "error":
            listed = "; ".join(bad[:MAX_LISTED_PROBLEMS])
            more = f" (and {len(bad) - MAX_LISTED_PROBLEMS} more)" if len(bad) > MAX_LISTED_PROBLEMS else ""
            raise UserError(f"{path}: {len(bad)} bad record(s): {listed}{more}; fix them or pass "
                            f"--on-bad-data skip to leave them out")
        report.skipped_records = len(bad)

    records = []
    for image_id, img in images.items():
        boxes, labels = _clean_boxes(per_image[image_id], float(img["width"]), float(img["height"]), report)
        records.append(ImageRecord(image_id, img["file_name"], int(img["width"]), int(img["height"]), boxes, labels))
    if not records:
        raise UserError(f"{path}: no usable images left")
    return CocoIndex(images_dir, path, cats, records, report)


def _clean_boxes(objects, width: float, height: float, report: DataReport):
    """Clip boxes to the image, drop NaN and degenerate ones; count both."""
    boxes, labels = [], []
    for (x, y, w, h), label in objects:
        if not all(math.isfinite(v) for v in (x, y, w, h)):
            report.dropped_boxes += 1
            continue
        x0, y0 = max(0.0, x), max(0.0, y)
        x1, y1 = min(width, x + w), min(height, y + h)
        if x1 - x0 < 1e-3 or y1 - y0 < 1e-3:
            report.dropped_boxes += 1
            continue
        if (x0, y0, x1, y1) != (x, y, x + w, y + h):
            report.clipped_boxes += 1
        boxes.append((x0, y0, x1 - x0, y1 - y0))
        labels.append(label)
    return (np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(labels, dtype=np.int64))
