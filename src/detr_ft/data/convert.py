"""``detr-ft data convert``: YOLO, Pascal VOC and LabelMe datasets -> detr-ft's COCO layout.

Writes ``OUT/images/<path in the source>`` (copies) and ``OUT/annotations/{train,test}.json``.
Boxes become COCO ``[x, y, w, h]`` in pixels of the image as displayed (EXIF applied):

- YOLO: ``class cx cy w h`` normalised by the image size -> ``x = (cx - w/2) * W`` ... exactly.
- Pascal VOC: ``xmin ymin xmax ymax`` are 1-based pixel indices, both corners inside the
  box (VOC's devkit convention) -> ``x = xmin - 1, y = ymin - 1, w = xmax - xmin + 1,
  h = ymax - ymin + 1``: a box of one pixel at the top-left corner is ``1 1 1 1`` in VOC
  and ``[0, 0, 1, 1]`` in COCO.
- LabelMe: rectangle shapes' two corner points are continuous pixel coordinates ->
  ``x = min(x1, x2), w = |x2 - x1|`` (other shape types are counted and left out).

Class names are kept (YOLO: ``classes.txt``, ``obj.names`` or a YAML's ``names``, in that
order; VOC and LabelMe: the names used, sorted); category ids are 1..C in that order.
A source with train and val/test splits (folders ``train``/``val``/``valid``/``test``, or
VOC's ``ImageSets/Main/*.txt``) keeps them (val and test both become ``test``); a single set
is split by ``--split`` (seeded, class-stratified: data/split.py). Bad records (a label line
that is not a box, an unknown class, an unreadable image) follow ``--on-bad-data`` as the
COCO reader's do: one line naming them, or left out and counted.
"""

from __future__ import annotations

import json
import math
import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from detr_ft.data.image_check import image_file_problem
from detr_ft.data.split import check_fraction, stratified_split, write_json
from detr_ft.data.transforms import displayed_size
from detr_ft.data.validation import DataReport
from detr_ft.errors import UserError, first_line

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
SPLIT_FOLDERS = {"train": "train", "training": "train", "val": "test", "valid": "test", "validation": "test",
                 "test": "test"}
FORMATS = ("yolo", "voc", "labelme")


@dataclass
class SourceImage:
    """One image of the source: its file, its name in the output, its split if the source has one,
    and its objects as (class name, x, y, w, h) in pixels."""

    path: Path
    name: str
    split: str | None
    width: int = 0
    height: int = 0
    objects: list[tuple[str, float, float, float, float]] = field(default_factory=list)


@dataclass
class Source:
    """What a reader found: images, class names in category-id order, bad records, notes."""

    images: list[SourceImage]
    classes: list[str]
    bad: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _split_of(rel: Path) -> str | None:
    """The split a source path's folders name (``images/train/x.jpg`` -> train), or None."""
    for part in rel.parts[:-1]:
        if part.lower() in SPLIT_FOLDERS:
            return SPLIT_FOLDERS[part.lower()]
    return None


def _number(text) -> float | None:
    """A finite float from text, or None."""
    try:
        v = float(text)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _image_files(src: Path) -> list[Path]:
    return sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _open_image(path: Path, src: Path, image: SourceImage, bad: list[str]) -> bool:
    """Check the image file and read its displayed size into ``image``; False (and a bad record) if unusable."""
    problem = image_file_problem(path)
    if problem is None:
        try:
            image.width, image.height = displayed_size(path)
        except Exception as e:  # noqa: BLE001  (a header Pillow cannot read: unusable)
            problem = f"unreadable ({first_line(e)})"
    if problem:
        bad.append(f"{path.relative_to(src) if path.is_relative_to(src) else path}: {problem}")
    return problem is None


# ---- YOLO ----------------------------------------------------------------------------------------

def yolo_classes(src: Path) -> list[str]:
    """Class names, index order: ``classes.txt`` / ``obj.names``, else a YAML's ``names`` (list or dict)."""
    for name in ("classes.txt", "obj.names"):
        path = src / name
        if path.is_file():
            return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for path in sorted(src.glob("*.yaml")) + sorted(src.glob("*.yml")):
        import yaml

        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise UserError(f"{path}: not valid YAML ({first_line(e)})") from None
        names = doc.get("names") if isinstance(doc, dict) else None
        if isinstance(names, dict) and all(isinstance(k, int) for k in names):
            if sorted(names) != list(range(len(names))):
                raise UserError(f"{path}: 'names' keys must be 0..{len(names) - 1}")
            return [str(names[k]) for k in sorted(names)]
        if isinstance(names, list):
            return [str(n) for n in names]
    raise UserError(f"--from yolo {src}: no class names; put classes.txt (one name a line) or a data.yaml "
                    f"with 'names' in {src}")


def _yolo_label_file(image: Path) -> Path:
    """``.../images/<rest>/x.jpg`` -> ``.../labels/<rest>/x.txt``; else ``x.txt`` beside the image."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            candidate = Path(*parts[:i], "labels", *parts[i + 1:]).with_suffix(".txt")
            if candidate.is_file():
                return candidate
    return image.with_suffix(".txt")


def read_yolo(src: Path) -> Source:
    classes = yolo_classes(src)
    source = Source([], classes)
    for path in _image_files(src):
        rel = path.relative_to(src)
        image = SourceImage(path, rel.as_posix(), _split_of(rel))
        if not _open_image(path, src, image, source.bad):
            continue
        label_file = _yolo_label_file(path)
        if label_file.is_file():
            lines = label_file.read_text(encoding="utf-8", errors="replace").splitlines()
            for n, line in enumerate(lines, 1):
                if line.strip():
                    _yolo_object(line, f"{label_file.relative_to(src)} line {n}", image, classes, source.bad)
        source.images.append(image)
    return source


def _yolo_object(line: str, where: str, image: SourceImage, classes: list[str], bad: list[str]) -> None:
    """One ``class cx cy w h`` line into ``image.objects`` (pixels), or a bad record."""
    fields = line.split()
    values = [_number(v) for v in fields[1:]]
    if len(fields) != 5 or any(v is None for v in values):
        bad.append(f"{where}: {line.strip()[:60]!r} is not 'class cx cy w h' (five numbers)")
        return
    if not fields[0].isdigit() or int(fields[0]) >= len(classes):
        bad.append(f"{where}: class {fields[0]!r} is not an index into the {len(classes)} class names "
                   f"(0..{len(classes) - 1})")
        return
    cx, cy, w, h = values
    W, H = image.width, image.height
    image.objects.append((classes[int(fields[0])], (cx - w / 2) * W, (cy - h / 2) * H, w * W, h * H))


# ---- Pascal VOC ----------------------------------------------------------------------------------

def _voc_split_lists(src: Path) -> dict[str, str]:
    """Image stem -> split, from ``ImageSets/Main/{train,trainval,val,test}.txt`` when train and val/test exist."""
    main = src / "ImageSets" / "Main"
    lists = {name: main / f"{name}.txt" for name in ("train", "trainval", "val", "test")}
    if not (lists["train"].is_file() or lists["trainval"].is_file()) or not (
            lists["val"].is_file() or lists["test"].is_file()):
        return {}
    splits: dict[str, str] = {}
    for name in ("train", "trainval", "val", "test"):  # later lists win: an image in val is a test image
        if lists[name].is_file():
            for line in lists[name].read_text(encoding="utf-8").split("\n"):
                if line.split():
                    splits[line.split()[0]] = SPLIT_FOLDERS.get(name, "train")
    return splits


def _voc_image(xml_file: Path, filename: str | None, src: Path) -> Path:
    """The image a VOC XML names: ``JPEGImages/<filename>``, else beside the XML (same stem if unnamed)."""
    candidates = []
    if filename:
        candidates += [src / "JPEGImages" / filename, xml_file.parent / filename]
    candidates += [xml_file.with_suffix(s) for s in IMAGE_SUFFIXES]
    candidates += [src / "JPEGImages" / (xml_file.stem + s) for s in IMAGE_SUFFIXES]
    return next((c for c in candidates if c.is_file()), candidates[0])


def read_voc(src: Path) -> Source:
    source = Source([], [])
    root = src / "Annotations" if (src / "Annotations").is_dir() else src
    splits = _voc_split_lists(src)
    for xml_file in sorted(root.rglob("*.xml")):
        where = xml_file.relative_to(src)
        try:
            doc = ET.parse(xml_file).getroot()
        except (ET.ParseError, OSError) as e:
            source.bad.append(f"{where}: not readable XML ({first_line(e)})")
            continue
        path = _voc_image(xml_file, (doc.findtext("filename") or "").strip() or None, src)
        rel = path.relative_to(src) if path.is_relative_to(src) else Path(path.name)
        image = SourceImage(path, rel.as_posix(), splits.get(xml_file.stem) if splits else _split_of(where))
        if not _open_image(path, src, image, source.bad):
            continue
        for k, obj in enumerate(doc.iter("object")):
            _voc_object(obj, f"{where} object {k + 1}", image, source.bad)
        source.images.append(image)
    source.classes = sorted({o[0] for im in source.images for o in im.objects})
    return source


def _voc_object(obj, where: str, image: SourceImage, bad: list[str]) -> None:
    """One VOC ``<object>`` into ``image.objects`` (1-based inclusive corners -> COCO pixels), or a bad record."""
    name = (obj.findtext("name") or "").strip()
    box = obj.find("bndbox")
    corners = [_number(box.findtext(k)) if box is not None else None for k in ("xmin", "ymin", "xmax", "ymax")]
    if not name:
        bad.append(f"{where}: no <name>")
    elif any(v is None for v in corners):
        bad.append(f"{where}: <bndbox> needs numeric xmin, ymin, xmax, ymax")
    else:
        xmin, ymin, xmax, ymax = corners
        image.objects.append((name, xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1))


# ---- LabelMe -------------------------------------------------------------------------------------

def read_labelme(src: Path) -> Source:
    source = Source([], [])
    ignored: dict[str, int] = {}
    for json_file in sorted(src.rglob("*.json")):
        where = json_file.relative_to(src)
        try:
            doc = json.loads(json_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
            source.bad.append(f"{where}: not readable JSON ({first_line(e)})")
            continue
        if not isinstance(doc, dict) or not isinstance(doc.get("shapes"), list) or not isinstance(
                doc.get("imagePath"), str):
            source.bad.append(f"{where}: not a LabelMe file (needs 'imagePath' and a 'shapes' list)")
            continue
        path = json_file.parent / doc["imagePath"].replace("\\", "/")
        if not path.is_file():
            path = json_file.parent / Path(doc["imagePath"].replace("\\", "/")).name
        rel = path.resolve().relative_to(src.resolve()) if path.resolve().is_relative_to(src.resolve()) else Path(
            path.name)
        image = SourceImage(path, rel.as_posix(), _split_of(where))
        if not _open_image(path, src, image, source.bad):
            continue
        for k, shape in enumerate(doc["shapes"]):
            kind = shape.get("shape_type", "polygon") if isinstance(shape, dict) else None
            if kind != "rectangle":
                ignored[str(kind)] = ignored.get(str(kind), 0) + 1
                continue
            _labelme_rectangle(shape, f"{where} shapes[{k}]", image, source.bad)
        source.images.append(image)
    if ignored:
        source.notes.append("left out non-rectangle shapes: "
                            + ", ".join(f"{n} {k}" for k, n in sorted(ignored.items())))
    source.classes = sorted({o[0] for im in source.images for o in im.objects})
    return source


def _labelme_rectangle(shape: dict, where: str, image: SourceImage, bad: list[str]) -> None:
    label, points = shape.get("label"), shape.get("points")
    if not isinstance(label, str) or not label.strip():
        bad.append(f"{where}: no 'label'")
        return
    if not (isinstance(points, list) and len(points) == 2 and all(
            isinstance(p, list) and len(p) == 2 and all(_number(v) is not None for v in p) for p in points)):
        bad.append(f"{where}: a rectangle needs 'points' [[x1, y1], [x2, y2]]")
        return
    (x1, y1), (x2, y2) = [[float(v) for v in p] for p in points]
    image.objects.append((label.strip(), min(x1, x2), min(y1, y2), abs(x2 - x1), abs(y2 - y1)))


READERS = {"yolo": read_yolo, "voc": read_voc, "labelme": read_labelme}


# ---- writing -------------------------------------------------------------------------------------

def assign_splits(images: list[SourceImage], classes: list[str], fraction: float, seed: int) -> tuple[list, list]:
    """(train, test) images: the source's own splits when it has both, else a stratified split of all."""
    kinds = {im.split for im in images}
    if {"train", "test"} <= kinds:
        return [im for im in images if im.split != "test"], [im for im in images if im.split == "test"]
    keyed = {k: {o[0] for o in im.objects} for k, im in enumerate(images)}
    train, test = stratified_split(keyed, fraction, seed)
    return [images[k] for k in train], [images[k] for k in test]


def coco_document(images: list[SourceImage], classes: list[str], first_ids: tuple[int, int]) -> dict:
    """A COCO detection dict of ``images``; image and annotation ids count on from ``first_ids``."""
    category_id = {name: k + 1 for k, name in enumerate(classes)}
    image_id, ann_id = first_ids
    doc = {"images": [], "annotations": [],
           "categories": [{"id": k + 1, "name": name} for k, name in enumerate(classes)]}
    for im in images:
        doc["images"].append({"id": image_id, "file_name": im.name, "width": im.width, "height": im.height})
        for name, x, y, w, h in im.objects:
            doc["annotations"].append({"id": ann_id, "image_id": image_id, "category_id": category_id[name],
                                       "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
            ann_id += 1
        image_id += 1
    return doc


def convert(fmt: str, src: Path, out: Path, fraction: float = 0.9, seed: int = 0,
            on_bad_data: str = "error") -> dict:
    """Convert the ``fmt`` dataset in ``src`` into detr-ft's layout in ``out``; a summary."""
    src, out = Path(src).expanduser(), Path(out).expanduser()
    if not src.is_dir():
        raise UserError(f"--from {fmt} {src}: not a folder; pass the dataset's top folder")
    if out.resolve() == src.resolve() or out.resolve().is_relative_to(src.resolve()):
        raise UserError(f"--out {out}: inside the source {src}; choose a folder outside it")
    check_fraction(fraction)
    source = READERS[fmt](src)
    DataReport().settle_bad(f"--from {fmt} {src}", source.bad, "record", on_bad_data)
    if not source.images:
        raise UserError(f"--from {fmt} {src}: no usable images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    if not source.classes:
        raise UserError(f"--from {fmt} {src}: no objects and no class names; a detection dataset needs classes")
    train, test = assign_splits(source.images, source.classes, fraction, seed)
    for im in source.images:
        target = out / "images" / im.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(im.path, target)
    train_doc = coco_document(train, source.classes, (1, 1))
    test_doc = coco_document(test, source.classes, (len(train) + 1, len(train_doc["annotations"]) + 1))
    write_json(out / "annotations" / "train.json", train_doc)
    write_json(out / "annotations" / "test.json", test_doc)
    return {"out": str(out), "classes": source.classes, "skipped_records": len(source.bad),
            "splits": "kept from the source" if {im.split for im in source.images} >= {"train", "test"}
            else f"stratified, {fraction} train, seed {seed}",
            "train": {"images": len(train), "objects": len(train_doc["annotations"])},
            "test": {"images": len(test), "objects": len(test_doc["annotations"])}, "notes": source.notes}
