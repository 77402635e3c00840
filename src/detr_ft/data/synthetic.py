"""A deterministic synthetic detection dataset of coloured shapes, in CPPE-5's layout.

``generate(OUT)`` writes ``OUT/images/<file_name>`` and ``OUT/annotations/train.json``
and ``OUT/annotations/test.json`` (COCO detection JSON). Five shape classes, told
apart by outline (colours are random and shared across classes), with
non-contiguous category ids on purpose, to exercise id mapping downstream.

Each box is tight (exact, before any JPEG compression) around the object's
visible pixels: clipped by the image border and by the objects drawn on top of
it. ``area`` is the box area ``w * h``, as in CPPE-5. Placement keeps at least
half of each object visible.

Every image is drawn from its own generator seeded by ``(seed, split, index)``,
so the same seed and spec give identical files, and any image can be
regenerated alone with ``make_image``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from detr_ft.errors import UserError

# (category id, name); ids are non-contiguous on purpose.
CATEGORIES: tuple[tuple[int, str], ...] = (
    (1, "circle"),
    (2, "square"),
    (4, "triangle"),
    (7, "cross"),
    (9, "star"),
)

SPLITS: tuple[str, ...] = ("train", "test")  # annotation file names; ``val`` -> test

MIN_OBJECT_PX = 6  # smallest drawn object diameter, in pixels
MIN_VISIBLE_FRACTION = 0.5  # of each object's pixels, after border and overlaps
PLACEMENT_TRIES = 40
BORDER_SPILL = 0.35  # how far (x object size) a centre may sit past the fitting area
BG_CONTRAST = 80.0  # min RGB distance of an object colour from background colours
OBJECT_CONTRAST = 50.0  # ... and from the other objects' colours
JPEG_QUALITY = 90


@dataclass(frozen=True)
class SyntheticSpec:
    """Knobs of the synthetic dataset.

    size:           long side of every image, in pixels.
    min_objects, max_objects: objects per image, drawn uniformly in that range
                    (fewer only if an image is too crowded to place them).
    min_side_frac, max_side_frac: object diameter relative to the image's short
                    side, drawn log-uniformly in that range.
    empty_fraction: probability of an image with no objects; only used when
                    ``min_objects == 0`` (then the count is otherwise >= 1).
    aspect_ratios:  width / height choices, one drawn per image.
    textured:       textured backgrounds, shaded objects and sensor noise; False
                    gives flat backgrounds and flat-coloured objects.
    image_format:   'png' or 'jpg' ('jpeg' is taken as 'jpg').
    classes:        names of the shape classes drawn (a subset of ``CATEGORIES``, at
                    least one); the annotation files list these categories only.
    """

    size: int = 256
    min_objects: int = 0
    max_objects: int = 8
    min_side_frac: float = 0.1
    max_side_frac: float = 0.5
    empty_fraction: float = 0.08
    aspect_ratios: tuple[float, ...] = (4 / 3, 3 / 4, 1.0, 16 / 9, 9 / 16)
    textured: bool = True
    image_format: str = "png"
    classes: tuple[str, ...] = tuple(name for _, name in CATEGORIES)

    def __post_init__(self) -> None:
        object.__setattr__(self, "aspect_ratios", tuple(float(a) for a in self.aspect_ratios))
        image_format = str(self.image_format).lower()
        object.__setattr__(self, "image_format", "jpg" if image_format == "jpeg" else image_format)
        _check_int("size", self.size, 32)
        if self.size > 8192:
            raise UserError(f"synthetic size must be at most 8192 px, got {self.size}")
        _check_int("min_objects", self.min_objects, 0)
        _check_int("max_objects", self.max_objects, 0)
        if self.max_objects < self.min_objects:
            raise UserError(
                f"synthetic max_objects ({self.max_objects}) is below min_objects ({self.min_objects})"
            )
        if not 0 < self.min_side_frac <= self.max_side_frac <= 1:
            raise UserError(
                "synthetic object sizes need 0 < min_side_frac <= max_side_frac <= 1, got "
                f"{self.min_side_frac} and {self.max_side_frac}"
            )
        if not 0 <= self.empty_fraction <= 1:
            raise UserError(f"synthetic empty_fraction must be in [0, 1], got {self.empty_fraction}")
        if not self.aspect_ratios:
            raise UserError("synthetic aspect_ratios is empty; give at least one width/height ratio")
        for a in self.aspect_ratios:
            if not 0.25 <= a <= 4:
                raise UserError(f"synthetic aspect ratio {a} is outside [0.25, 4] (width / height)")
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        known = [name for _, name in CATEGORIES]
        unknown = [c for c in self.classes if c not in known]
        if unknown or not self.classes or len(set(self.classes)) != len(self.classes):
            raise UserError(f"synthetic classes must be distinct names among {', '.join(known)}, "
                            f"got {list(self.classes)}")
        if self.image_format not in ("png", "jpg"):
            raise UserError(f"synthetic image_format must be 'png' or 'jpg', got {self.image_format!r}")

    @property
    def categories(self) -> tuple[tuple[int, str], ...]:
        """(category id, name) of the classes drawn, in ``CATEGORIES`` order."""
        return tuple((cid, name) for cid, name in CATEGORIES if name in self.classes)

    def image_size(self, aspect: float) -> tuple[int, int]:
        """(width, height) of an image with this width/height ratio."""
        if aspect >= 1:
            return self.size, max(1, round(self.size / aspect))
        return max(1, round(self.size * aspect)), self.size


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise UserError(f"synthetic {name} must be an integer, got {value!r}")
    if value < minimum:
        raise UserError(f"synthetic {name} must be at least {minimum}, got {value}")


def generate(
    out_dir: str | os.PathLike,
    train: int = 200,
    val: int = 50,
    seed: int = 0,
    spec: SyntheticSpec | None = None,
) -> dict:
    """Write ``train`` + ``val`` images and their COCO annotations under ``out_dir``.

    The ``val`` images go to ``annotations/test.json``, as in CPPE-5. Existing
    files of the same names are overwritten; other files are left alone.
    Returns ``{"path", "categories", "train": {...}, "test": {...}}`` with the
    number of images, objects and empty images per split.
    """
    spec = SyntheticSpec() if spec is None else spec
    if not isinstance(spec, SyntheticSpec):
        raise UserError(f"synthetic spec must be a SyntheticSpec, got {type(spec).__name__}")
    _check_int("train", train, 0)
    _check_int("val", val, 0)
    _check_int("seed", seed, 0)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder; pick another output path")
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)

    categories = [{"id": cid, "name": name, "supercategory": "shape"} for cid, name in spec.categories]
    summary: dict = {"path": str(out), "categories": dict(spec.categories)}
    image_id = ann_id = 0
    for split, count in zip(SPLITS, (train, val)):
        images, annotations = [], []
        for index in range(count):
            image, objects = make_image(seed, split, index, spec)
            image_id += 1
            file_name = f"{split}_{index:05d}.{spec.image_format}"
            _save(image, out / "images" / file_name, spec.image_format)
            images.append(
                {"id": image_id, "file_name": file_name, "width": image.width, "height": image.height}
            )
            for obj in objects:
                ann_id += 1
                x, y, w, h = obj["bbox"]
                annotations.append(
                    {
                        "id": ann_id,
                        "image_id": image_id,
                        "category_id": obj["category_id"],
                        "bbox": [x, y, w, h],
                        "area": w * h,
                        "iscrowd": 0,
                    }
                )
        coco = {
            "info": {"description": "detr-ft synthetic shapes", "seed": seed},
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        _write_json(out / "annotations" / f"{split}.json", coco)
        with_objects = {a["image_id"] for a in annotations}
        summary[split] = {
            "images": len(images),
            "objects": len(annotations),
            "empty": sum(im["id"] not in with_objects for im in images),
        }
    return summary


def make_image(seed: int, split: str, index: int, spec: SyntheticSpec) -> tuple[Image.Image, list[dict]]:
    """Draw one image; returns it (RGB) and its objects ``{"category_id", "bbox"}``.

    ``bbox`` is ``[x, y, w, h]`` in integer pixels, tight around the visible pixels.
    Depends only on its arguments.
    """
    if split not in SPLITS:
        raise UserError(f"synthetic split must be one of {', '.join(SPLITS)}, got {split!r}")
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    width, height = spec.image_size(spec.aspect_ratios[rng.integers(len(spec.aspect_ratios))])
    pixels, palette = _background(rng, width, height, spec.textured)

    if spec.min_objects == 0 and (spec.max_objects == 0 or rng.random() < spec.empty_fraction):
        n_objects = 0
    else:
        n_objects = int(rng.integers(max(spec.min_objects, 1), spec.max_objects + 1))

    owner = np.full((height, width), -1, dtype=np.int16)  # index of the top object per pixel
    placed: list[dict] = []
    for _ in range(n_objects):
        obj = _place(rng, owner, placed, spec)
        if obj is None:
            continue
        colour = _pick_colour(rng, palette, [o["colour"] for o in placed])
        _paint(rng, pixels, obj, colour, spec.textured)
        obj["colour"] = colour
        placed.append(obj)

    if spec.textured:
        pixels += rng.standard_normal(pixels.shape, dtype=np.float32) * 3.0
    image = Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), "RGB")

    objects = []
    for k, obj in enumerate(placed):
        y0, y1, x0, x1 = obj["region"]
        mine = owner[y0:y1, x0:x1] == k
        rows, cols = np.flatnonzero(mine.any(axis=1)), np.flatnonzero(mine.any(axis=0))
        bx, by = x0 + int(cols[0]), y0 + int(rows[0])
        bw, bh = int(cols[-1] - cols[0]) + 1, int(rows[-1] - rows[0]) + 1
        objects.append({"category_id": obj["category_id"], "bbox": [bx, by, bw, bh]})
    return image, objects


# --- backgrounds ---------------------------------------------------------------


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, 3).astype(np.float32)


def _background(rng: np.random.Generator, width: int, height: int, textured: bool):
    """A float32 [H, W, 3] background and the list of colours it is made of."""
    c1 = _random_colour(rng)
    if not textured:
        return np.broadcast_to(c1, (height, width, 3)).copy(), [c1]
    # A second colour near the first, so the texture stays a background.
    c2 = np.clip(c1 + rng.uniform(-90, 90, 3), 0, 255).astype(np.float32)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, math.pi)
    along = xs * math.cos(angle) + ys * math.sin(angle)
    kind = rng.integers(4)
    if kind == 0:  # linear gradient
        t = (along - along.min()) / max(float(np.ptp(along)), 1.0)
    elif kind == 1:  # soft stripes
        t = 0.5 + 0.5 * np.sin(along * (2 * math.pi / rng.uniform(6, 40)))
    elif kind == 2:  # smooth blobs: low-resolution noise, upsampled
        grid = rng.integers(0, 256, (int(rng.integers(2, 7)), int(rng.integers(2, 7))), dtype=np.uint8)
        t = np.asarray(Image.fromarray(grid).resize((width, height), Image.BILINEAR), np.float32) / 255
    else:  # checkerboard
        cell = int(rng.integers(6, 33))
        t = ((xs // cell + ys // cell) % 2).astype(np.float32)
    pixels = c1 * (1 - t[..., None]) + c2 * t[..., None]
    return pixels.astype(np.float32), [c1, c2]


# --- objects -------------------------------------------------------------------


def _shape_mask(rng: np.random.Generator, category_id: int, diameter: float) -> np.ndarray:
    """A boolean square patch with the shape drawn centred, fitting in ``diameter``."""
    side = math.ceil(diameter) + 3
    c, r = side / 2, diameter / 2
    patch = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(patch)

    def polygon(radii, angles):
        draw.polygon([(c + q * math.cos(a), c + q * math.sin(a)) for q, a in zip(radii, angles)], fill=255)

    if category_id == 1:  # circle
        draw.ellipse([c - r, c - r, c + r, c + r], fill=255)
    elif category_id == 2:  # square, tilted a little
        turn = math.radians(45 + rng.uniform(-20, 20))
        polygon([r] * 4, [turn + k * math.pi / 2 for k in range(4)])
    elif category_id == 4:  # equilateral triangle, any rotation
        turn = rng.uniform(0, 2 * math.pi)
        polygon([r] * 3, [turn + k * 2 * math.pi / 3 for k in range(3)])
    elif category_id == 7:  # plus-shaped cross, tilted a little
        arm, half = 0.95 * r, 0.3 * r
        corners = [(arm, half), (half, half), (half, arm)]  # one quadrant, as (x, y)
        turn = math.radians(rng.uniform(-25, 25))
        radii = [math.hypot(x, y) for x, y in corners] * 4
        angles = [math.atan2(y, x) + turn + k * math.pi / 2 for k in range(4) for x, y in corners]
        polygon(radii, angles)
    else:  # five-pointed star
        turn = rng.uniform(0, 2 * math.pi)
        radii = [r if k % 2 == 0 else 0.42 * r for k in range(10)]
        polygon(radii, [turn + k * math.pi / 5 for k in range(10)])
    return np.asarray(patch) > 0


def _place(rng: np.random.Generator, owner: np.ndarray, placed: list[dict], spec: SyntheticSpec):
    """Find a spot for one new object on top of ``placed``; updates ``owner``.

    Rejects spots that leave less than half of this or an earlier object visible.
    Shrinks the object after repeated failures. Returns None if nothing fits.
    """
    height, width = owner.shape
    short = min(width, height)
    drawn = spec.categories
    category_id = drawn[rng.integers(len(drawn))][0]
    lo = max(spec.min_side_frac * short, MIN_OBJECT_PX)
    hi = max(spec.max_side_frac * short, lo)
    diameter = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    for attempt in range(PLACEMENT_TRIES):
        if attempt and attempt % 10 == 0:
            diameter = max(diameter * 0.6, MIN_OBJECT_PX)
        mask = _shape_mask(rng, category_id, diameter)
        side = mask.shape[0]
        spill = BORDER_SPILL * diameter
        cx = rng.uniform(diameter / 2 - spill, width - diameter / 2 + spill)
        cy = rng.uniform(diameter / 2 - spill, height - diameter / 2 + spill)
        ox, oy = round(cx - side / 2), round(cy - side / 2)
        x0, x1, y0, y1 = max(ox, 0), min(ox + side, width), max(oy, 0), min(oy + side, height)
        if x1 <= x0 or y1 <= y0:
            continue
        inside = mask[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
        n_inside = int(inside.sum())
        if n_inside < MIN_VISIBLE_FRACTION * mask.sum() or n_inside < 4:
            continue
        under = owner[y0:y1, x0:x1][inside]
        covered = np.bincount(under + 1, minlength=len(placed) + 1)[1:]
        if any(o["visible"] - n < MIN_VISIBLE_FRACTION * o["pixels"] for o, n in zip(placed, covered)):
            continue
        for o, n in zip(placed, covered):
            o["visible"] -= int(n)
        owner[y0:y1, x0:x1][inside] = len(placed)
        return {
            "category_id": category_id,
            "region": (y0, y1, x0, x1),
            "mask": inside,
            "pixels": n_inside,
            "visible": n_inside,
        }
    return None


def _pick_colour(
    rng: np.random.Generator, background: list[np.ndarray], objects: list[np.ndarray]
) -> np.ndarray:
    """A random colour far from the background's colours and the other objects' colours.

    Falls back to the best of a few tries when no colour meets both margins.
    """
    best, best_score = None, -math.inf
    for _ in range(30):
        colour = _random_colour(rng)
        to_bg = min(float(np.linalg.norm(colour - c)) for c in background)
        to_objects = min((float(np.linalg.norm(colour - c)) for c in objects), default=math.inf)
        score = min(to_bg / BG_CONTRAST, to_objects / OBJECT_CONTRAST)
        if score > best_score:
            best, best_score = colour, score
        if score >= 1:
            break
    return best


def _paint(rng: np.random.Generator, pixels: np.ndarray, obj: dict, colour: np.ndarray, shaded: bool) -> None:
    """Fill the object's pixels with its colour, with a soft linear shading if ``shaded``."""
    y0, y1, x0, x1 = obj["region"]
    mask = obj["mask"]
    if not shaded:
        pixels[y0:y1, x0:x1][mask] = colour
        return
    ys, xs = np.nonzero(mask)
    angle = rng.uniform(0, 2 * math.pi)
    along = (xs - xs.mean()) * math.cos(angle) + (ys - ys.mean()) * math.sin(angle)
    scale = max(float(np.abs(along).max()), 1.0)
    light = 1 + rng.uniform(0, 0.25) * along / scale
    pixels[y0:y1, x0:x1][mask] = colour * light[:, None].astype(np.float32)


# --- files ---------------------------------------------------------------------


def _save(image: Image.Image, path: Path, image_format: str) -> None:
    if image_format == "jpg":
        image.save(path, format="JPEG", quality=JPEG_QUALITY)
    else:
        image.save(path, format="PNG", compress_level=1)


def _write_json(path: Path, data: dict) -> None:
    """Write ``data`` as compact JSON, replacing ``path`` in one step."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    os.replace(tmp, path)
