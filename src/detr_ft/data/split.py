"""A seeded, class-stratified train/test split, and ``detr-ft data split`` on a COCO file.

Stratified by each image's rarest class: images are grouped by the class of theirs
that has the fewest images in the whole set (images without objects form their own
group), and each group, shuffled with ``seed``, gives ``round((1 - fraction) * n)``
images to test -- at least one when the group has two or more, so each group's class is
in both splits (rare classes first: a class common enough to have no group of its own is
in both anyway, as a rule). ``data convert`` uses the same function.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np

from detr_ft.data.coco import read_json
from detr_ft.data.validation import is_id
from detr_ft.errors import UserError

NO_OBJECTS = object()  # the group of images without objects


def check_fraction(fraction: float) -> None:
    """``--split`` is the share of images for training: strictly between 0 and 1."""
    if not (0.0 < fraction < 1.0):
        raise UserError(f"--split {fraction}: the training share must be between 0 and 1 (e.g. 0.9)")


def stratified_split(image_classes: dict, fraction: float, seed: int) -> tuple[list, list]:
    """(train keys, test keys) from ``{image key: set of its classes}``, each in the input order.

    ``fraction`` of every rarest-class group goes to train (see the module docstring).
    """
    check_fraction(fraction)
    images_per_class = Counter(c for classes in image_classes.values() for c in set(classes))
    groups: dict = {}
    for key, classes in image_classes.items():
        rarest = min(classes, key=lambda c: (images_per_class[c], str(c))) if classes else NO_OBJECTS
        groups.setdefault(rarest, []).append(key)
    rng = np.random.default_rng(seed)
    test: set = set()
    for rarest in sorted(groups, key=lambda c: (c is NO_OBJECTS, str(c))):
        members = groups[rarest]
        n_test = int(round((1.0 - fraction) * len(members)))
        if len(members) >= 2:
            n_test = min(max(n_test, 1), len(members) - 1)
        order = rng.permutation(len(members))
        test.update(members[i] for i in order[:n_test])
    return [k for k in image_classes if k not in test], [k for k in image_classes if k in test]


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` as JSON, replacing ``path`` in one step (folders made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    os.replace(tmp, path)


def _coco_parts(doc, path: Path) -> tuple[list, list]:
    """(images, annotations) of a COCO file, each checked just enough to split it by image id."""
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list) or not isinstance(
            doc.get("annotations", []), list):
        raise UserError(f"{path}: not a COCO detection file (needs 'images' and 'annotations' lists)")
    images, ids = doc["images"], set()
    for i, img in enumerate(images):
        if not isinstance(img, dict) or not is_id(img.get("id")) or img["id"] in ids:
            raise UserError(f"{path}: images[{i}] needs a unique integer 'id' to be split by")
        ids.add(img["id"])
    annotations = doc.get("annotations", [])
    for i, ann in enumerate(annotations):
        if not isinstance(ann, dict) or ann.get("image_id") not in ids:
            raise UserError(f"{path}: annotations[{i}]: image_id is not in 'images'; fix it before splitting")
    if not images:
        raise UserError(f"{path}: no images listed")
    return images, annotations


def split_coco(annotations: Path, out: Path, fraction: float, seed: int) -> dict:
    """Write ``out/annotations/{train,test}.json`` from one COCO file, stratified and seeded.

    Every id (images, annotations, categories) and every other key is kept. When ``out``
    has no ``images/`` folder and the COCO file sits in ``X/annotations/`` beside ``X/images/``,
    ``out/images`` becomes a link to it, so ``out`` is a dataset detr-ft reads.
    """
    check_fraction(fraction)
    annotations = Path(annotations).expanduser()
    doc = read_json(annotations)
    images, anns = _coco_parts(doc, annotations)
    classes: dict = {img["id"]: set() for img in images}
    for ann in anns:
        classes[ann["image_id"]].add(ann.get("category_id"))
    train, test = stratified_split(classes, fraction, seed)
    out = Path(out).expanduser()
    summary = {"out": str(out), "seed": seed, "fraction": fraction}
    for split, keys in (("train", set(train)), ("test", set(test))):
        part = dict(doc)
        part["images"] = [img for img in images if img["id"] in keys]
        part["annotations"] = [a for a in anns if a["image_id"] in keys]
        write_json(out / "annotations" / f"{split}.json", part)
        summary[split] = {"images": len(part["images"]), "objects": len(part["annotations"])}
    source_images = annotations.parent.parent / "images"
    if (not (out / "images").exists() and source_images.is_dir()
            and source_images.resolve() != (out / "images").resolve()):
        (out / "images").symlink_to(source_images.resolve(), target_is_directory=True)
        summary["images_link"] = str(source_images.resolve())
    return summary
