"""COCO detection index: built from the annotation JSON, with no image decoding.

CPPE-5's layout: ``DATA/images/<file_name>`` and ``DATA/annotations/<split>.json``.
Classes come from the JSON's ``categories``; their ids may be anything and are
mapped to contiguous indices ``0..C-1`` (sorted by id) for the model, and back
to the original ids in every output a user sees.

Opening a split also checks every image file, cheaply (see ``check_image_file``):
it must exist inside the images folder (no link out of it), be a format Pillow
recognises from its header, and be complete (PNG: every chunk's CRC up to
IEND; JPEG: an end-of-image marker after the image data; other formats: a full
decode). Nothing is decoded for PNG and JPEG, so the check costs about the time
to read each file once (benchmarks/README.md, "Measurements behind the code").
Pixel data that is damaged inside a complete file is caught when the image is
first decoded.
"""

from __future__ import annotations

import json
import logging
import math
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from detr_ft.errors import UserError, first_line

MAX_LISTED_PROBLEMS = 10
CHECK_THREADS = 4  # image checks are mostly file reads: threads overlap their waits
CHECK_THREADS_FROM = 1000  # files; below this the checks run in the calling thread

log = logging.getLogger("detr_ft")


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

    @property
    def aspect(self) -> float:
        """Height / width as displayed (> 1: portrait), from the JSON: no image decoded."""
        return self.height / self.width


@dataclass
class DataReport:
    """What the reader left out or repaired, for the log and metrics.json."""

    skipped_records: int = 0  # bad image and annotation entries left out (under --on-bad-data skip)
    skipped_objects: int = 0  # valid annotations left out with their skipped image
    dropped_boxes: int = 0
    clipped_boxes: int = 0
    problems: list[str] = field(default_factory=list)

    def settle_bad(self, where: str, bad: list[str], kind: str, on_bad_data: str) -> None:
        """The bad ``kind``s (e.g. "record") found in ``where``: under ``on_bad_data="error"``
        a ``UserError`` listing the first few; under ``"skip"`` counted and logged."""
        if not bad:
            return
        self.problems = bad
        if on_bad_data == "error":
            listed = "; ".join(bad[:MAX_LISTED_PROBLEMS])
            more = f" (and {len(bad) - MAX_LISTED_PROBLEMS} more)" if len(bad) > MAX_LISTED_PROBLEMS else ""
            raise UserError(f"{where}: {len(bad)} bad {kind}(s): {listed}{more}; fix them or pass "
                            f"--on-bad-data skip to leave them out")
        self.skipped_records = len(bad)
        log.warning("%s: left out %d bad %s(s) (--on-bad-data skip), e.g. %s", where, len(bad), kind, bad[0])

    def to_dict(self) -> dict:
        return {
            "skipped_records": self.skipped_records,
            "skipped_objects": self.skipped_objects,
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

    def load_image(self, record: ImageRecord):
        """The record's decoded RGB image (EXIF applied): the one place pixels come from.

        Here a file under ``images_dir``; ``HfIndex`` (data/hf_dataset.py) reads a 🤗 datasets table.
        """
        from detr_ft.data.transforms import load_image

        return load_image(self.image_path(record))


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
    """A JSON number that converts to float (NaN and infinities included, huge integers not)."""
    return isinstance(v, float) or (isinstance(v, int) and not isinstance(v, bool) and abs(v) < 1e300)


def _show(v, limit: int = 60) -> str:
    """A value as it appears in a one-line problem report (repr, shortened)."""
    r = repr(v)
    return r if len(r) <= limit else r[:limit - 3] + "..."


def _is_id(v) -> bool:
    """COCO ids are integers (not bools, floats or strings) that fit in int64."""
    return isinstance(v, int) and not isinstance(v, bool) and -2**63 <= v < 2**63


def _jpeg_scan_start(data: bytes) -> int | None:
    """Offset of the first scan's entropy-coded data in a JPEG stream's leading bytes.

    Walks the marker segments from the start (so an EXIF thumbnail's own end
    marker is skipped over) to the first start-of-scan. -1 when the stream is
    not well formed (or ends) before it; None when ``data`` runs out first.
    """
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return -1
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        if marker == 0xD9:
            return -1
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker == 0xDA:
            return pos + 2 + length
        pos += 2 + length
    return None


def _jpeg_is_complete(data: bytes) -> bool:
    """True when a JPEG stream has an end-of-image marker after its first scan.

    Inside entropy-coded data ``FF`` is always followed by ``00`` or a restart
    marker, so ``FF D9`` after the first scan starts is found only if the file
    reaches its end marker.
    """
    scan = _jpeg_scan_start(data)
    return scan is not None and scan >= 0 and data.find(b"\xff\xd9", scan) != -1


JPEG_HEAD_BYTES = 1 << 16  # marker segments before the first scan (EXIF included) fit in this, as a rule
JPEG_TAIL_BYTES = 1 << 12


def _jpeg_file_is_complete(path: Path) -> bool:
    """``_jpeg_is_complete`` of a file, reading its head and its tail only where that settles it.

    An end marker in the tail, after the first scan, is the end marker; only a
    file with more than a few KB after it (or none) is read through.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(JPEG_HEAD_BYTES)
        scan = _jpeg_scan_start(head)
        if scan is None and size > len(head):
            f.seek(0)
            scan = _jpeg_scan_start(f.read())
        if scan is None or scan < 0:
            return False
        tail_start = max(scan, size - JPEG_TAIL_BYTES)
        f.seek(tail_start)
        if f.read().find(b"\xff\xd9") != -1:
            return True
        if tail_start == scan:
            return False
        f.seek(scan)
        return f.read().find(b"\xff\xd9") != -1


def check_image_file(images_dir: Path, file_name: str, images_root: str | None = None) -> str | None:
    """Why ``images_dir/file_name`` cannot be used as an image, or None when it can: the
    resolved path stays inside the images folder (no symlink out of it), then
    ``image_file_problem``. ``images_root`` is ``os.path.realpath(images_dir)``, computed once
    by a caller that checks many files.
    """
    path = images_dir / file_name
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as e:
        return f"unreadable ({first_line(e, limit=120)})"
    # A plain file right in the folder cannot lead out of it; anything else is resolved.
    if mode is None or stat.S_ISLNK(mode) or "/" in file_name or "\\" in file_name:
        root = images_root or os.path.realpath(images_dir)
        if not Path(os.path.realpath(path)).is_relative_to(Path(root)):
            return "is a link that leaves the images folder"
    return image_file_problem(path)


def image_file_problem(path: Path) -> str | None:
    """Why the file at ``path`` cannot be used as an image, or None when it can: it exists and
    is a regular file, Pillow recognises it from its header, and it is complete (PNG: chunk
    CRCs up to IEND; JPEG: end marker after the scan; other formats: decoded in full)."""
    try:
        if not path.exists():
            return "image file missing"
        if not path.is_file():
            return "not a regular file"
        with Image.open(path) as im:
            fmt = im.format
            if fmt == "PNG":
                im.verify()
            elif fmt == "JPEG":
                if not _jpeg_file_is_complete(path):
                    return "truncated JPEG (no end-of-image marker)"
            else:
                im.load()
    except UnidentifiedImageError:
        return "not an image (unknown format)"
    except Image.DecompressionBombError as e:
        return f"refused: {e}"
    except Exception as e:  # noqa: BLE001  (any failure to read an untrusted file means: unusable)
        return f"unreadable or truncated ({first_line(e, limit=120)})"
    return None


def in_threads(fn, items: list) -> list:
    """``[fn(x) for x in items]``; for many items in ``CHECK_THREADS`` threads, which overlap
    the waits of files read from disk or a network (for a few hundred files, most likely
    cached, they would only contend for the GIL). One task per thread, not per item."""
    if len(items) < CHECK_THREADS_FROM:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=CHECK_THREADS) as pool:
        chunks = list(pool.map(lambda chunk: [fn(x) for x in chunk],
                               [items[k::CHECK_THREADS] for k in range(CHECK_THREADS)]))
    results = [None] * len(items)
    for k, chunk in enumerate(chunks):
        results[k::CHECK_THREADS] = chunk
    return results


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
        if not isinstance(c, dict) or not _is_id(c.get("id")):
            raise UserError(f"{path}: category {_show(c)} needs an integer 'id'")
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
        elif not _is_id(img.get("id")):
            problem = f"images[{i}] has no integer 'id'"
        elif img["id"] in images:
            problem = f"images[{i}]: duplicate image id {img['id']}"
        elif not _safe_relative(img.get("file_name")):
            problem = (f"images[{i}] (id {img['id']}): file_name {_show(img.get('file_name'))} "
                       f"leaves the images folder")
        elif not all(_is_number(img.get(k)) and 1 <= img.get(k) < 1e6 for k in ("width", "height")):
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
        elif not _is_id(ann.get("image_id")) or ann["image_id"] not in images:
            problem = f"annotations[{i}]: image_id {_show(ann.get('image_id'))} is not in 'images'"
        elif not _is_id(ann.get("category_id")) or ann["category_id"] not in cat_index:
            problem = f"annotations[{i}]: category_id {_show(ann.get('category_id'))} is not in 'categories'"
        elif not (isinstance(ann.get("bbox"), list) and len(ann["bbox"]) == 4 and all(
                _is_number(v) for v in ann["bbox"])):
            problem = f"annotations[{i}]: bbox {_show(ann.get('bbox'))} is not four numbers [x, y, w, h]"
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
            bad.append(f"image id {image_id} ({_show(images[image_id]['file_name'])}): {problem}")
            report.skipped_objects += len(per_image.pop(image_id))
            del images[image_id]

    report.settle_bad(str(path), bad, "record", on_bad_data)

    records = []
    for image_id, img in images.items():
        boxes, labels = _clean_boxes(per_image[image_id], float(img["width"]), float(img["height"]), report)
        records.append(ImageRecord(image_id, img["file_name"], int(img["width"]), int(img["height"]), boxes, labels))
    if not records:
        raise UserError(f"{path}: no usable images left")
    if report.dropped_boxes or report.clipped_boxes:
        log.warning("%s: %d box(es) clipped to their image, %d degenerate or NaN box(es) dropped",
                    path, report.clipped_boxes, report.dropped_boxes)
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
