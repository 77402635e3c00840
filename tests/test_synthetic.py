"""Tests of the synthetic shapes dataset (detr_ft.data.synthetic)."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detr_ft.data.synthetic import CATEGORIES, SyntheticSpec, generate, make_image
from detr_ft.errors import UserError

SMALL = SyntheticSpec(size=64)
PLAIN_SINGLE = SyntheticSpec(size=96, min_objects=1, max_objects=1, textured=False)


def _load(out: Path, split: str) -> dict:
    return json.loads((out / "annotations" / f"{split}.json").read_text())


def _pixels(out: Path, file_name: str) -> np.ndarray:
    with Image.open(out / "images" / file_name) as im:
        return np.asarray(im.convert("RGB"))


def _images(n: int, spec: SyntheticSpec, seed: int = 0):
    return [make_image(seed, "train", i, spec) for i in range(n)]


# --- determinism -----------------------------------------------------------------


def test_same_seed_gives_identical_files(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    generate(a, train=6, val=3, seed=3, spec=SMALL)
    generate(b, train=6, val=3, seed=3, spec=SMALL)
    for split in ("train", "test"):
        name = f"annotations/{split}.json"
        assert (a / name).read_bytes() == (b / name).read_bytes()
        for im in _load(a, split)["images"]:
            assert np.array_equal(_pixels(a, im["file_name"]), _pixels(b, im["file_name"]))


def test_different_seed_gives_different_data(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    generate(a, train=6, val=2, seed=0, spec=SMALL)
    generate(b, train=6, val=2, seed=1, spec=SMALL)
    assert _load(a, "train")["annotations"] != _load(b, "train")["annotations"]
    names = [im["file_name"] for im in _load(a, "train")["images"]]
    assert any(
        _pixels(a, n).shape != _pixels(b, n).shape or not np.array_equal(_pixels(a, n), _pixels(b, n))
        for n in names
    )


def test_images_do_not_depend_on_split_sizes():
    """Per-image generators: image i is the same whatever else is generated."""
    im1, objs1 = make_image(5, "test", 2, SMALL)
    im2, objs2 = make_image(5, "test", 2, SMALL)
    assert objs1 == objs2 and np.array_equal(np.asarray(im1), np.asarray(im2))
    im3, _ = make_image(5, "train", 2, SMALL)
    assert im3.size != im1.size or not np.array_equal(np.asarray(im3), np.asarray(im1))


# --- layout and schema -------------------------------------------------------------


def test_layout_and_coco_schema(tmp_path):
    summary = generate(tmp_path, train=12, val=4, seed=0, spec=SyntheticSpec(size=96))
    assert summary["path"] == str(tmp_path)
    assert (tmp_path / "images").is_dir()

    image_ids, ann_ids = set(), set()
    for split, n_images in (("train", 12), ("test", 4)):
        coco = _load(tmp_path, split)
        assert coco["categories"] == [
            {"id": cid, "name": name, "supercategory": "shape"} for cid, name in CATEGORIES
        ]
        assert len(coco["images"]) == n_images
        assert summary[split] == {
            "images": n_images,
            "objects": len(coco["annotations"]),
            "empty": n_images - len({a["image_id"] for a in coco["annotations"]}),
        }
        images = {}
        for im in coco["images"]:
            assert set(im) == {"id", "file_name", "width", "height"}
            assert im["id"] not in image_ids
            image_ids.add(im["id"])
            images[im["id"]] = im
            with Image.open(tmp_path / "images" / im["file_name"]) as f:
                assert f.format == "PNG" and f.size == (im["width"], im["height"])
            assert max(im["width"], im["height"]) == 96
        category_ids = {c["id"] for c in coco["categories"]}
        for ann in coco["annotations"]:
            assert set(ann) == {"id", "image_id", "category_id", "bbox", "area", "iscrowd"}
            assert ann["id"] not in ann_ids
            ann_ids.add(ann["id"])
            assert ann["image_id"] in images and ann["category_id"] in category_ids
            x, y, w, h = ann["bbox"]
            assert all(isinstance(v, int) for v in ann["bbox"])
            im = images[ann["image_id"]]
            assert w > 0 and h > 0 and x >= 0 and y >= 0
            assert x + w <= im["width"] and y + h <= im["height"]
            assert ann["area"] == w * h  # box area, as in CPPE-5
            assert ann["iscrowd"] == 0


def test_category_ids_are_non_contiguous_and_named():
    ids = [cid for cid, _ in CATEGORIES]
    assert len(ids) == 5 and ids != list(range(ids[0], ids[0] + 5))
    assert [name for _, name in CATEGORIES] == ["circle", "square", "triangle", "cross", "star"]


def test_jpeg_format(tmp_path):
    generate(tmp_path, train=2, val=1, spec=SyntheticSpec(size=64, image_format="jpg"))
    for split in ("train", "test"):
        for im in _load(tmp_path, split)["images"]:
            assert im["file_name"].endswith(".jpg")
            with Image.open(tmp_path / "images" / im["file_name"]) as f:
                assert f.format == "JPEG"


def test_overwrites_dataset_and_keeps_other_files(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "images" / "photo.png").write_bytes(b"not ours")
    generate(tmp_path, train=4, val=2, seed=0, spec=SMALL)
    first = _load(tmp_path, "train")
    summary = generate(tmp_path, train=3, val=1, seed=1, spec=SMALL)
    second = _load(tmp_path, "train")
    assert len(second["images"]) == 3 and second != first
    assert summary["train"]["images"] == 3 and summary["test"]["images"] == 1
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert (tmp_path / "images" / "photo.png").read_bytes() == b"not ours"
    assert not list((tmp_path / "annotations").glob("*.tmp"))


# --- content -----------------------------------------------------------------------


def test_object_count_range():
    spec = SyntheticSpec(size=64, min_objects=2, max_objects=4)
    counts = [len(objs) for _, objs in _images(20, spec)]
    assert all(2 <= c <= 4 for c in counts)
    assert len(set(counts)) > 1


def test_empty_images_when_asked():
    with_empty = [len(o) for _, o in _images(30, SyntheticSpec(size=64, empty_fraction=0.5))]
    assert 0 < with_empty.count(0) < 30
    without = [len(o) for _, o in _images(30, SyntheticSpec(size=64, empty_fraction=0.0))]
    assert 0 not in without


def test_variety_over_forty_images():
    """Mixed orientations, all classes, some border-cut and some overlapping objects."""
    images = _images(40, SyntheticSpec(size=64))
    sizes = [im.size for im, _ in images]
    assert any(w > h for w, h in sizes) and any(w < h for w, h in sizes) and any(w == h for w, h in sizes)
    assert {o["category_id"] for _, objs in images for o in objs} == {cid for cid, _ in CATEGORIES}

    cut = overlapping = 0
    for im, objs in images:
        boxes = [o["bbox"] for o in objs]
        cut += sum(x == 0 or y == 0 or x + w == im.width or y + h == im.height for x, y, w, h in boxes)
        for (ax, ay, aw, ah), (bx, by, bw, bh) in combinations(boxes, 2):
            overlapping += min(ax + aw, bx + bw) > max(ax, bx) and min(ay + ah, by + bh) > max(ay, by)
    assert cut > 0 and overlapping > 0


def _foreground_box(pixels: np.ndarray, threshold: int) -> list[int]:
    """Box [x, y, w, h] of the pixels that differ from the most common colour."""
    flat = pixels.reshape(-1, 3).astype(np.int32)
    colours, counts = np.unique(flat, axis=0, return_counts=True)
    background = colours[counts.argmax()]
    fg = (np.abs(pixels.astype(np.int32) - background).max(axis=2) > threshold)
    rows, cols = np.flatnonzero(fg.any(axis=1)), np.flatnonzero(fg.any(axis=0))
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def _corners(box):
    x, y, w, h = box
    return np.array([x, y, x + w, y + h])


@pytest.mark.parametrize("image_format, threshold, tolerance", [("png", 0, 1), ("jpg", 40, 2)])
def test_bbox_is_tight_around_the_drawn_pixels(tmp_path, image_format, threshold, tolerance):
    spec = SyntheticSpec(size=96, min_objects=1, max_objects=1, textured=False, image_format=image_format)
    generate(tmp_path, train=10, val=0, seed=7, spec=spec)
    coco = _load(tmp_path, "train")
    boxes = {a["image_id"]: a["bbox"] for a in coco["annotations"]}
    assert len(boxes) == 10
    for im in coco["images"]:
        found = _foreground_box(_pixels(tmp_path, im["file_name"]), threshold)
        assert np.abs(_corners(found) - _corners(boxes[im["id"]])).max() <= tolerance, im["file_name"]


def test_border_cut_boxes_are_clipped_and_tight():
    """Single objects that touch the border: box clipped to the visible part."""
    checked = 0
    for im, objs in _images(60, PLAIN_SINGLE, seed=11):
        (obj,) = objs
        x, y, w, h = obj["bbox"]
        if x == 0 or y == 0 or x + w == im.width or y + h == im.height:
            assert _foreground_box(np.asarray(im), 0) == obj["bbox"]
            checked += 1
    assert checked > 0


# --- invalid arguments ---------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"size": 31},
        {"size": 64.0},
        {"min_objects": -1},
        {"min_objects": 3, "max_objects": 2},
        {"min_side_frac": 0},
        {"max_side_frac": 1.5},
        {"min_side_frac": 0.5, "max_side_frac": 0.2},
        {"empty_fraction": 1.5},
        {"aspect_ratios": ()},
        {"aspect_ratios": (10.0,)},
        {"image_format": "gif"},
    ],
)
def test_invalid_spec_raises_user_error(kwargs):
    with pytest.raises(UserError) as err:
        SyntheticSpec(**kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "kwargs",
    [{"train": -1}, {"val": -2}, {"seed": -1}, {"train": 1.5}, {"spec": "easy"}],
)
def test_invalid_generate_args_raise_user_error(tmp_path, kwargs):
    with pytest.raises(UserError) as err:
        generate(tmp_path / "out", **kwargs)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_output_path_that_is_a_file_raises_user_error(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(UserError):
        generate(target, train=1, val=0, spec=SMALL)


def test_unknown_split_raises_user_error():
    with pytest.raises(UserError):
        make_image(0, "val", 0, SMALL)
