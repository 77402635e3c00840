"""🤗 datasets detection data (CPPE-5's hub schema) -> a ``DatasetIndex``, as the COCO reader's.

The schema (``cppe-5`` on the Hugging Face hub)::

    image     Image()                       the picture
    image_id  int                           (optional; the row number otherwise)
    width, height  int                      (optional; read from the image header otherwise)
    objects   {id, area, bbox [x, y, w, h] in pixels, category: ClassLabel}
              (a dict of lists, or a list of dicts)

``--hf-dataset NAME_OR_PATH`` opens a folder written by ``DatasetDict.save_to_disk``
(``datasets.load_from_disk``) or, for anything else, a hub dataset
(``datasets.load_dataset``). Splits: ``train``, and ``test`` (or ``validation``).
Class names come from the ``category`` ClassLabel; its indices are the category
ids a user sees (in ``detections.json``).

Building the index reads the small columns only; images are decoded one row at a
time, when the data loader asks for them (``HfIndex.load_image``). Everything
downstream (``DetectionDataset``, ``Sample``, ``Batch``, metrics) is the COCO path.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from detr_ft.data.transforms import decode_image, displayed_size
from detr_ft.data.validation import DataReport, clean_boxes, is_id, is_number
from detr_ft.errors import UserError, first_line
from detr_ft.types import Categories, DatasetIndex, ImageRecord

INSTALL_HINT = "pip install 'detr-ft[hub]'"
# Our split name -> the names a 🤗 dataset may use for it, in order of preference.
SPLIT_NAMES = {"train": ("train",), "test": ("test", "validation", "val", "valid")}


def import_datasets():
    """The ``datasets`` module, or a one-line UserError saying how to install it."""
    try:
        import datasets
    except ImportError:
        raise UserError(f"--hf-dataset needs the 🤗 datasets library: {INSTALL_HINT}") from None
    return datasets


def open_dataset(name_or_path: str):
    """A ``DatasetDict`` from a ``save_to_disk`` folder or the hub."""
    datasets = import_datasets()
    local = Path(name_or_path).expanduser()
    if local.exists():
        try:
            loaded = datasets.load_from_disk(str(local))
        except (FileNotFoundError, ValueError, OSError) as e:
            raise UserError(f"--hf-dataset {name_or_path}: not a folder written by save_to_disk "
                            f"({first_line(e)})") from None
    else:
        try:
            loaded = datasets.load_dataset(name_or_path)
        except Exception as e:  # noqa: BLE001  (offline, unknown id, no access: all mean "cannot open")
            raise UserError(f"--hf-dataset {name_or_path}: cannot load it from the Hugging Face hub "
                            f"({first_line(e)}); "
                            f"pass a hub dataset id or a folder written by DatasetDict.save_to_disk") from None
    if not isinstance(loaded, datasets.DatasetDict):
        raise UserError(f"--hf-dataset {name_or_path}: holds a single split; save a DatasetDict with "
                        f"'train' and 'test' (or 'validation') splits")
    return loaded


def pick_split(dataset_dict, split: str, name: str):
    """(Dataset, split name used) for our ``split`` ('train' or 'test')."""
    for candidate in SPLIT_NAMES.get(split, (split,)):
        if candidate in dataset_dict:
            return dataset_dict[candidate], candidate
    first, *others = SPLIT_NAMES.get(split, (split,))
    nor = f" (nor {', '.join(map(repr, others))})" if others else ""
    raise UserError(f"--hf-dataset {name}: no {first!r} split{nor}; it has {', '.join(map(repr, dataset_dict))}")


def _category_feature(objects_feature):
    """The feature of ``objects.category`` (a ClassLabel or a plain Value), or None when
    ``objects`` lacks ``bbox`` or ``category``.

    ``objects`` is a dict of lists (CPPE-5: ``{"category": List(ClassLabel), ...}``) or a
    list of dicts (``List({"category": ClassLabel, ...})``).
    """
    if isinstance(objects_feature, dict):
        fields, nested = objects_feature, True
    else:
        fields, nested = getattr(objects_feature, "feature", None), False
    if not isinstance(fields, dict) or "bbox" not in fields or "category" not in fields:
        return None
    category = fields["category"]
    return getattr(category, "feature", category) if nested else category


def categories_of(dataset, name: str) -> tuple[Categories, bool]:
    """(categories, named): the ClassLabel's ids and names (named), or the sorted
    integer values seen, named by their id (not named)."""
    for column in ("image", "objects"):
        if column not in dataset.column_names:
            raise UserError(f"--hf-dataset {name}: no '{column}' column; expected CPPE-5's schema "
                            f"(image, objects {{bbox, category}})")
    category = _category_feature(dataset.features["objects"])
    if category is None:
        raise UserError(f"--hf-dataset {name}: 'objects' needs 'bbox' and 'category' fields")
    if type(category).__name__ == "ClassLabel":
        return Categories(tuple(range(category.num_classes)), tuple(category.names)), True
    seen = sorted({int(c) for objects in dataset["objects"] for c in _objects(objects)[1]})
    if not seen:
        raise UserError(f"--hf-dataset {name}: no objects, and 'category' is not a ClassLabel to name classes")
    return Categories(tuple(seen), tuple(str(c) for c in seen)), False


def _objects(objects) -> tuple[list, list]:
    """(bboxes, categories) from a dict of lists or a list of dicts."""
    if objects is None:
        return [], []
    if isinstance(objects, dict):
        return list(objects.get("bbox") or []), list(objects.get("category") or [])
    return [o.get("bbox") for o in objects], [o.get("category") for o in objects]


@dataclass
class HfIndex(DatasetIndex):
    """A ``DatasetIndex`` whose pixels come from a 🤗 datasets split, one row at a time.

    ``image_path`` is a name for outputs (annotated file names, ``file_name`` in
    detections.json), not a file.
    """

    images: Any = None  # the split with the image column only
    rows: dict[int, int] = field(default_factory=dict)  # image_id -> row

    def load_image(self, record: ImageRecord) -> Image.Image:
        item = self.images[self.rows[record.image_id]]["image"]
        return decode_image(_image_source(item), f"--hf-dataset image of image_id {record.image_id}")

    def image_bytes(self, record: ImageRecord) -> bytes:
        """The encoded bytes of the row's image cell (or of the file it names)."""
        item = self.images[self.rows[record.image_id]]["image"]
        return item.get("bytes") or Path(item["path"]).read_bytes()


def _header_sizes(images) -> tuple[list[tuple[int | None, int | None]], dict[int, str]]:
    """(width, height) per row as displayed, from the image headers; and why, per row whose
    header cannot be read (its size is (None, None))."""
    sizes, problems = [], {}
    for row, item in enumerate(images["image"]):
        try:
            sizes.append(displayed_size(_image_source(item)))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            sizes.append((None, None))
            problems[row] = f"image not readable ({first_line(e)})"
    return sizes, problems


def _image_source(item: dict):
    """What Pillow opens for an undecoded image cell: its bytes, else its file path."""
    return io.BytesIO(item["bytes"]) if item.get("bytes") else item["path"]


def _row_problem(image_id, width, height, bboxes, labels, seen_ids, cat_index) -> str | None:
    """Why a row cannot be used, or None."""
    if not is_id(image_id):
        return "image_id is not an integer"
    if image_id in seen_ids:
        return "duplicate image_id"
    if not (is_number(width) and is_number(height) and width > 0 and height > 0):
        return "width and height must be positive numbers"
    if len(bboxes) != len(labels):
        return f"{len(bboxes)} bboxes for {len(labels)} categories"
    for box, label in zip(bboxes, labels):
        if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(is_number(v) for v in box)):
            return f"bbox {box!r} is not four numbers [x, y, w, h]"
        if label not in cat_index:
            return f"category {label!r} is not one of {list(cat_index)}"
    return None


def load_hf_index(name_or_path: str, split: str, on_bad_data: str = "error",
                  categories: Categories | None = None) -> HfIndex:
    """Read one split of a 🤗 detection dataset into an ``HfIndex``.

    Bad rows (no usable id or size, a bbox that is not four numbers, an unknown
    category) raise ``UserError`` under ``on_bad_data="error"`` and are left out
    and counted under ``"skip"``; boxes beyond the image are clipped, degenerate
    ones dropped, as the COCO reader does. ``categories`` forces the class list
    (the training split's, when reading the test split).
    """
    dataset, used = pick_split(open_dataset(name_or_path), split, name_or_path)
    where = f"--hf-dataset {name_or_path} [{used}]"
    split_cats, named = categories_of(dataset, name_or_path)
    cats = categories or split_cats
    if named and split_cats.names != cats.names:  # unnamed ids are checked row by row below
        raise UserError(f"{where}: classes {list(split_cats.names)} differ from the training split's "
                        f"{list(categories.names)}")
    # the image column undecoded ({"bytes", "path"}): headers read for sizes, pixels decoded by detr-ft
    images = dataset.select_columns(["image"]).cast_column("image", import_datasets().Image(decode=False))
    small = [c for c in ("image_id", "width", "height", "objects") if c in dataset.column_names]
    columns = dataset.select_columns(small)[:]  # no image decoded
    n = len(dataset)
    ids = columns.get("image_id") or list(range(n))
    header_problems: dict[int, str] = {}
    if "width" in columns and "height" in columns:
        sizes = list(zip(columns["width"], columns["height"]))
    else:
        sizes, header_problems = _header_sizes(images)
    cat_index = {c: k for k, c in enumerate(cats.ids)}
    report, bad, records, rows = DataReport(), [], [], {}
    for row in range(n):
        image_id, (width, height) = ids[row], sizes[row]
        bboxes, labels = _objects(columns["objects"][row])
        problem = header_problems.get(row) or _row_problem(image_id, width, height, bboxes, labels, rows,
                                                            cat_index)
        if problem:
            bad.append(f"row {row} (image_id {image_id!r}): {problem}")
            continue
        objects = [(list(map(float, box)), cat_index[label]) for box, label in zip(bboxes, labels)]
        boxes, label_idx = clean_boxes(objects, float(width), float(height), report)
        rows[image_id] = row
        records.append(ImageRecord(image_id, f"{used}-{row:06d}", int(width), int(height), boxes, label_idx))
    report.settle_bad(where, bad, "row", on_bad_data)
    if not records:
        raise UserError(f"{where}: no usable rows")
    source = Path(name_or_path)
    return HfIndex(images_dir=source / used, annotation_file=source / used, categories=cats, records=records,
                   report=report, images=images, rows=rows)
