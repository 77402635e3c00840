"""Fuzz: randomly mangled COCO documents and image bytes never escape the reader as anything but UserError.

Bounded and reproducible (``derandomize``): 100 examples per test, no example
database, small files.
"""

from __future__ import annotations

import copy
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from detr_ft.data.coco import load_index
from detr_ft.data.image_check import check_image_file
from detr_ft.data.transforms import load_image
from detr_ft.errors import UserError

FUZZ = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

BASE_DOC = {
    "images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
               {"id": 2, "file_name": "sub/b.jpg", "width": 30, "height": 40},
               {"id": 5, "file_name": "c.png", "width": 40, "height": 30}],
    "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 2, 10, 5], "iscrowd": 0},
                    {"id": 2, "image_id": 2, "category_id": 7, "bbox": [5, 5, 4, 4]},
                    {"id": 3, "image_id": 2, "category_id": 3, "bbox": [0, 0, 30, 40], "area": 1200}],
    "categories": [{"id": 3, "name": "mask"}, {"id": 7, "name": "gloves"}],
}

INTERESTING = st.sampled_from([0, -1, 1, 2**31, 2**63, 2**64, 10**400, 1e308, -1e308, float("nan"),
                               float("inf"), 0.5, True, False, None, "", "a.png", "../a.png", "/etc/passwd",
                               "sub", ".", "a.png\x00", "x" * 300, [], {}, [1, 2, 3, 4], [1, 2, "3", 4],
                               [float("nan")] * 4, {"id": 1}])
LEAVES = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=12)
          | INTERESTING)
JSON_VALUES = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8) | st.sampled_from(["id", "bbox", "image_id"]),
                                             inner, max_size=4), max_leaves=8)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """The images BASE_DOC names; each example writes its own annotations/train.json."""
    root = tmp_path_factory.mktemp("fuzz-data")
    (root / "images" / "sub").mkdir(parents=True)
    (root / "annotations").mkdir()
    Image.new("RGB", (40, 30), "red").save(root / "images" / "a.png")
    Image.new("L", (30, 40), 128).save(root / "images" / "sub" / "b.jpg")
    Image.new("RGBA", (40, 30)).save(root / "images" / "c.png")
    return root


def mutate(doc, data) -> object:
    """Walk from the root to a random spot (mostly a leaf: a field of one record), then replace,
    delete or insert something there."""
    if not isinstance(doc, (dict, list)) or not doc or data.draw(st.integers(0, 7)) == 0:
        return data.draw(INTERESTING | JSON_VALUES)
    keys = list(doc) if isinstance(doc, dict) else list(range(len(doc)))
    key = data.draw(st.sampled_from(keys))
    action = data.draw(st.sampled_from(["descend"] * 6 + ["delete", "insert"]))
    if action == "delete":
        del doc[key]
    elif action == "insert":
        if isinstance(doc, dict):
            doc[data.draw(st.text(max_size=8) | st.sampled_from(["id", "width", "file_name"]))] = data.draw(JSON_VALUES)
        else:
            doc.insert(key, data.draw(JSON_VALUES))
    else:
        doc[key] = mutate(doc[key], data)
    return doc


def read_or_user_error(root: Path):
    """load_index's result, or None when it raised UserError; any other exception fails the test."""
    try:
        index = load_index(root, "train", on_bad_data="skip")
    except UserError as e:
        assert "\n" not in str(e)
        return None
    for r in index.records:  # what comes out is usable
        assert r.boxes.dtype == np.float32 and np.isfinite(r.boxes).all()
        assert (r.boxes[:, 2:] > 0).all() and (r.boxes[:, 0] + r.boxes[:, 2] <= r.width + 1e-3).all()
        assert ((r.labels >= 0) & (r.labels < len(index.categories))).all()
    return index


@FUZZ
@given(data=st.data())
def test_mangled_documents_only_raise_user_error(dataset, data):
    doc = copy.deepcopy(BASE_DOC)
    for _ in range(data.draw(st.integers(1, 4))):
        doc = mutate(doc, data)
    (dataset / "annotations" / "train.json").write_text(json.dumps(doc))
    read_or_user_error(dataset)


@FUZZ
@given(data=st.data())
def test_mangled_json_text_only_raises_user_error(dataset, data):
    text = bytearray(json.dumps(BASE_DOC).encode())
    for _ in range(data.draw(st.integers(1, 6))):
        at = data.draw(st.integers(0, len(text)))
        op = data.draw(st.sampled_from(["delete", "insert", "replace", "truncate"]))
        byte = data.draw(st.sampled_from(list(b'{}[],:"0-.eE \n\\\x00\xff') + [data.draw(st.integers(0, 255))]))
        if op == "delete":
            del text[at:at + 1]
        elif op == "insert":
            text[at:at] = bytes([byte])
        elif op == "replace" and at < len(text):
            text[at] = byte
        elif op == "truncate":
            del text[at:]
    (dataset / "annotations" / "train.json").write_bytes(bytes(text))
    read_or_user_error(dataset)


def encoded(fmt: str, mode: str) -> bytes:
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


SAMPLES = {(fmt, mode): encoded(fmt, mode) for fmt, mode in [
    ("PNG", "RGB"), ("PNG", "P"), ("PNG", "LA"), ("PNG", "I;16"), ("JPEG", "RGB"), ("JPEG", "L"),
    ("JPEG", "CMYK"), ("GIF", "P"), ("BMP", "RGB"), ("TIFF", "RGB"), ("TIFF", "CMYK"), ("WEBP", "RGBA")]}


@FUZZ
@given(data=st.data())
def test_mangled_image_bytes_only_raise_user_error(tmp_path_factory, data):
    kind = data.draw(st.sampled_from(sorted(SAMPLES) + [("random", "")]))
    raw = bytearray(SAMPLES[kind] if kind[0] != "random" else data.draw(st.binary(max_size=600)))
    for _ in range(data.draw(st.integers(0, 4))):
        at = data.draw(st.integers(0, max(0, len(raw) - 1)))
        op = data.draw(st.sampled_from(["flip", "truncate", "zero", "insert"]))
        if op == "flip" and raw:
            raw[at] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "truncate":
            del raw[at:]
        elif op == "zero":
            raw[at:at + data.draw(st.integers(1, 16))] = b"\x00" * 4
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=8))
    folder = tmp_path_factory.mktemp("img")
    path = folder / f"x.{kind[0].lower()}"
    path.write_bytes(bytes(raw))
    problem = check_image_file(folder, path.name)  # never raises: a reason or None
    assert problem is None or (isinstance(problem, str) and "\n" not in problem)
    try:
        image = load_image(path)
    except UserError as e:
        assert "\n" not in str(e)
        return
    assert image.mode == "RGB" and image.width >= 1 and image.height >= 1
    assert math.prod(image.size) <= 2 * Image.MAX_IMAGE_PIXELS
