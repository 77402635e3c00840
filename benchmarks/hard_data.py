"""A harder learning benchmark than the demo's shapes: small asymmetric glyphs on textured scenes.

Writes detr-ft's dataset layout (``OUT/images/``, ``OUT/annotations/train.json`` and
``test.json``, COCO detection JSON), offline, from numpy and Pillow only:

- 12 classes that a mirror changes: the letters and digits F G J L P R 2 4 7 (Pillow's
  own font, drawn bold), an arrow to the right, an arrow to the left (each other's mirror
  image, so a horizontal flip turns one into the other) and a flag (pole on the left);
- objects 8-50 px on their long side (log-uniform; a pixel less at times), 0-10 per image,
  never overlapping and never clipped by the border, turned at most 15 degrees (an arrow
  still points its way), in random colours chosen to stand out from the background under
  them, shaded;
- textured backgrounds with a few distractor shapes, uneven lighting, sensor noise, JPEG;
  the **training and test backgrounds come from different families** (train: multi-octave
  value noise, wavy stripes; test: soft blobs, gradients, turned checkerboards), so the
  held-out figure measures generalisation to new scenes, not memory of the old ones;
- landscape, portrait and square images, 160-320 px on the long side.

Each image records its background family in the JSON (``images[i]["background"]``).
Every box is the tight box of the object's painted pixels (exact before JPEG).
Each image is drawn from its own generator seeded by ``(seed, split, index)``: the same
seed gives the same files (with the same numpy and Pillow versions).

    PYTHONPATH=src python benchmarks/hard_data.py --out DIR --train 1000 --test 300 --seed 0
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from detr_ft.data.synthetic import _save, _write_json
from detr_ft.errors import UserError

GLYPHS = ("F", "G", "J", "L", "P", "R", "2", "4", "7")
POLYGONS = ("arrow_right", "arrow_left", "flag")
CATEGORIES: tuple[tuple[int, str], ...] = tuple(enumerate(GLYPHS + POLYGONS, start=1))

SPLITS = ("train", "test")
BACKGROUNDS = {"train": ("noise", "stripes"), "test": ("blobs", "gradient", "checker")}

LONG_SIDES = (160, 320)  # image long side, pixels (uniform)
ASPECTS = (1.0, 4 / 3, 3 / 4, 3 / 2, 2 / 3, 16 / 9, 9 / 16)  # width / height
OBJECT_PX = (8, 50)  # object long side, pixels (log-uniform)
MAX_OBJECTS = 10  # per image, count uniform in 0..MAX_OBJECTS
MAX_TURN_DEG = 15.0
GAP_PX = 2  # free pixels kept between two objects' boxes
PLACEMENT_TRIES = 30
RENDER_PX = 96  # glyphs are drawn this large, turned, then shrunk
MIN_CONTRAST = 90.0  # RGB distance wanted between an object's colour and most of its background
COLOUR_TRIES = 24
IMAGE_FORMAT = "jpg"


# --- objects ---------------------------------------------------------------------------


def _draw_shape(name: str) -> Image.Image:
    """The class's shape, white on black, upright, on a square ``2 * RENDER_PX`` canvas."""
    side = 2 * RENDER_PX
    canvas = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(canvas)
    c, r = side / 2, RENDER_PX / 2
    if name in GLYPHS:
        try:
            font = ImageFont.load_default(size=RENDER_PX)
        except TypeError:  # Pillow < 10.1 has no scalable default font
            raise UserError("benchmarks/hard_data.py needs Pillow >= 10.1; pip install -U pillow") from None
        draw.text((c, c), name, fill=255, font=font, anchor="mm", stroke_width=RENDER_PX // 14, stroke_fill=255)
    elif name in ("arrow_right", "arrow_left"):
        # Shaft then head, pointing to +x; mirrored for the left arrow.
        pts = [(-1, -0.18), (0.2, -0.18), (0.2, -0.55), (1, 0), (0.2, 0.55), (0.2, 0.18), (-1, 0.18)]
        sign = 1 if name == "arrow_right" else -1
        draw.polygon([(c + sign * x * r, c + y * r) for x, y in pts], fill=255)
    elif name == "flag":
        # A pole on the left, a pennant from its top to the right.
        pts = [(-0.6, -1), (0.9, -0.62), (-0.42, -0.22), (-0.42, 1), (-0.6, 1)]
        draw.polygon([(c + x * r, c + y * r) for x, y in pts], fill=255)
    else:
        raise ValueError(f"unknown shape {name!r}")
    return canvas


def object_mask(name: str, long_side: int, turn_deg: float) -> np.ndarray:
    """A tight boolean mask [h, w] of the shape turned by ``turn_deg`` (counter-clockwise),
    shrunk so that its long side is about ``long_side`` pixels."""
    big = _draw_shape(name).rotate(turn_deg, resample=Image.BILINEAR, expand=True)
    big = big.crop(big.getbbox())
    scale = long_side / max(big.size)
    small = big.resize((max(2, round(big.width * scale)), max(2, round(big.height * scale))), Image.BOX)
    mask = np.asarray(small) >= 40
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _place(rng: np.random.Generator, mask: np.ndarray, taken: list[tuple[int, int, int, int]],
           width: int, height: int) -> tuple[int, int] | None:
    """Top-left (x, y) for ``mask`` inside the image, clear of the boxes in ``taken``, or None."""
    h, w = mask.shape
    if w > width or h > height:
        return None
    for _ in range(PLACEMENT_TRIES):
        x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        if all(x + w + GAP_PX <= bx or bx + bw + GAP_PX <= x or y + h + GAP_PX <= by or by + bh + GAP_PX <= y
               for bx, by, bw, bh in taken):
            return x, y
    return None


def _pick_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A colour that most of the background pixels ``under`` it ([n, 3]) differ from.

    Scores each try by the 10th percentile of its distances to those pixels; keeps the
    first that reaches ``MIN_CONTRAST``, else the best.
    """
    tries = rng.integers(0, 256, (COLOUR_TRIES, 3)).astype(np.float32)
    sample = under[:: max(1, len(under) // 256)]
    dist = np.linalg.norm(tries[:, None, :] - sample[None, :, :], axis=2)
    score = np.percentile(dist, 10, axis=1)
    good = np.flatnonzero(score >= MIN_CONTRAST)
    return tries[good[0] if len(good) else int(np.argmax(score))]


def _paint(rng: np.random.Generator, pixels: np.ndarray, mask: np.ndarray, x: int, y: int) -> None:
    """Fill the mask's pixels at (x, y) with a contrasting colour, shaded along a random direction."""
    h, w = mask.shape
    region = pixels[y : y + h, x : x + w]
    colour = _pick_colour(rng, region[mask])
    ys, xs = np.nonzero(mask)
    angle = rng.uniform(0, 2 * math.pi)
    along = (xs - xs.mean()) * math.cos(angle) + (ys - ys.mean()) * math.sin(angle)
    light = 1 + rng.uniform(0, 0.2) * along / max(float(np.abs(along).max()), 1.0)
    region[mask] = colour * light[:, None].astype(np.float32)


# --- backgrounds ---------------------------------------------------------------------------


def _palette(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, (n, 3)).astype(np.float32)


def _ramp(t: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Map ``t`` [H, W] in [0, 1] piecewise-linearly through ``colours`` [k, 3] -> [H, W, 3]."""
    k = len(colours) - 1
    pos = np.clip(t, 0, 1) * k
    i = np.minimum(pos.astype(np.int64), k - 1)
    f = (pos - i)[..., None]
    return colours[i] * (1 - f) + colours[i + 1] * f


def _value_noise(rng: np.random.Generator, width: int, height: int, octaves: int, cells: float) -> np.ndarray:
    """Multi-octave value noise [H, W] in [0, 1]: random grids, upsampled bicubically, halving amplitudes."""
    total = np.zeros((height, width), np.float32)
    for k in range(octaves):
        gx = max(2, round(cells * 2**k * width / max(width, height)))
        gy = max(2, round(cells * 2**k * height / max(width, height)))
        grid = Image.fromarray(rng.random((gy, gx), dtype=np.float32), "F")
        total += 0.5**k * np.asarray(grid.resize((width, height), Image.BICUBIC))
    lo, hi = float(total.min()), float(total.max())
    return (total - lo) / max(hi - lo, 1e-6)


def _coords(width: int, height: int, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates turned by ``angle`` (radians): (along, across), each [H, W]."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return xs * math.cos(angle) + ys * math.sin(angle), -xs * math.sin(angle) + ys * math.cos(angle)


def _bg_noise(rng, width, height):
    t = _value_noise(rng, width, height, octaves=int(rng.integers(3, 6)), cells=rng.uniform(2, 6))
    return _ramp(t, _palette(rng, 3))


def _bg_stripes(rng, width, height):
    along, _ = _coords(width, height, rng.uniform(0, math.pi))
    wobble = _value_noise(rng, width, height, octaves=2, cells=3) * rng.uniform(0, 25)
    t = 0.5 + 0.5 * np.sin((along + wobble) * (2 * math.pi / rng.uniform(6, 30)))
    shade = 0.8 + 0.4 * _value_noise(rng, width, height, octaves=3, cells=3)
    return _ramp(t, _palette(rng, 2)) * shade[..., None]


def _bg_blobs(rng, width, height):
    pixels = np.broadcast_to(_palette(rng, 1)[0], (height, width, 3)).astype(np.float32)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    for _ in range(int(rng.integers(5, 16))):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        sx, sy = rng.uniform(0.05, 0.4) * width, rng.uniform(0.05, 0.4) * height
        weight = np.exp(-(((xs - cx) / sx) ** 2 + ((ys - cy) / sy) ** 2))[..., None]
        pixels = pixels * (1 - weight) + _palette(rng, 1)[0] * weight
    return pixels


def _bg_gradient(rng, width, height):
    if rng.random() < 0.5:
        along, _ = _coords(width, height, rng.uniform(0, 2 * math.pi))
    else:  # radial, from a random centre
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        along = np.hypot(xs - rng.uniform(0, width), ys - rng.uniform(0, height))
    t = (along - along.min()) / max(float(np.ptp(along)), 1.0)
    return _ramp(t, _palette(rng, int(rng.integers(2, 4))))


def _bg_checker(rng, width, height):
    along, across = _coords(width, height, rng.uniform(0, math.pi / 2))
    cell = rng.uniform(8, 40)
    t = ((np.floor(along / cell) + np.floor(across / cell)) % 2).astype(np.float32)
    a = _palette(rng, 1)[0]
    b = np.clip(a + rng.uniform(-100, 100, 3), 0, 255).astype(np.float32)
    return _ramp(t, np.stack([a, b]))


BACKGROUND_MAKERS = {"noise": _bg_noise, "stripes": _bg_stripes, "blobs": _bg_blobs,
                     "gradient": _bg_gradient, "checker": _bg_checker}


def _distractors(rng: np.random.Generator, image: Image.Image) -> None:
    """0-4 clutter shapes that are no class (ellipses, bars, thick lines), drawn in place."""
    draw = ImageDraw.Draw(image)
    w, h = image.size
    for _ in range(int(rng.integers(0, 5))):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        x1, y1 = x0 + rng.uniform(6, 60) * rng.choice([-1, 1]), y0 + rng.uniform(6, 60) * rng.choice([-1, 1])
        box = [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]
        kind = rng.integers(3)
        if kind == 0:
            draw.ellipse(box, fill=colour)
        elif kind == 1:
            draw.rectangle(box, fill=colour)
        else:
            draw.line([(x0, y0), (x1, y1)], fill=colour, width=int(rng.integers(1, 5)))


def background(rng: np.random.Generator, family: str, width: int, height: int) -> np.ndarray:
    """A float32 [H, W, 3] scene of ``family`` with a few distractor shapes on it."""
    pixels = np.clip(BACKGROUND_MAKERS[family](rng, width, height), 0, 255)
    scene = Image.fromarray(pixels.astype(np.uint8), "RGB")
    _distractors(rng, scene)
    return np.asarray(scene, dtype=np.float32).copy()


# --- images and files --------------------------------------------------------------------


def image_size(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height): long side uniform in ``LONG_SIDES``, aspect one of ``ASPECTS``."""
    long_side = int(rng.integers(LONG_SIDES[0], LONG_SIDES[1] + 1))
    aspect = ASPECTS[int(rng.integers(len(ASPECTS)))]
    if aspect >= 1:
        return long_side, round(long_side / aspect)
    return round(long_side * aspect), long_side


def make_image(seed: int, split: str, index: int) -> tuple[Image.Image, list[dict], str]:
    """Draw one image: (RGB image, objects ``{"category_id", "bbox": [x, y, w, h]}``, background family).

    Each box is the tight box of its object's painted pixels. Depends only on its arguments.
    """
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    width, height = image_size(rng)
    families = BACKGROUNDS[split]
    family = families[int(rng.integers(len(families)))]
    pixels = background(rng, family, width, height)

    objects: list[dict] = []
    for _ in range(int(rng.integers(0, MAX_OBJECTS + 1))):
        category_id, name = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
        long_side = round(math.exp(rng.uniform(math.log(OBJECT_PX[0]), math.log(OBJECT_PX[1]))))
        mask = object_mask(name, long_side, rng.uniform(-MAX_TURN_DEG, MAX_TURN_DEG))
        spot = _place(rng, mask, [o["bbox"] for o in objects], width, height)
        if spot is None:
            continue
        _paint(rng, pixels, mask, *spot)
        objects.append({"category_id": category_id, "bbox": [spot[0], spot[1], mask.shape[1], mask.shape[0]]})

    # Uneven lighting and sensor noise over the whole scene, objects included.
    light = 0.75 + 0.5 * _value_noise(rng, width, height, octaves=2, cells=2)
    pixels = pixels * light[..., None] + rng.standard_normal(pixels.shape, dtype=np.float32) * rng.uniform(2, 7)
    image = Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), "RGB")
    return image, objects, family


def generate(out_dir: str | Path, train: int, test: int, seed: int = 0) -> dict:
    """Write ``train`` + ``test`` images and their COCO annotations under ``out_dir``.

    Returns per split the number of images, objects and empty images, and the families drawn.
    """
    for name, value in (("--train", train), ("--test", test), ("--seed", seed)):
        if value < 0:
            raise UserError(f"{name} must be at least 0, got {value}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder; pick another --out")
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": cid, "name": name, "supercategory": "glyph"} for cid, name in CATEGORIES]
    summary: dict = {"path": str(out)}
    image_id = ann_id = 0
    for split, count in zip(SPLITS, (train, test)):
        images, annotations = [], []
        for index in range(count):
            image, objects, family = make_image(seed, split, index)
            image_id += 1
            file_name = f"hard_{split}_{index:05d}.{IMAGE_FORMAT}"
            _save(image, out / "images" / file_name, IMAGE_FORMAT)
            images.append({"id": image_id, "file_name": file_name, "width": image.width,
                           "height": image.height, "background": family})
            for obj in objects:
                ann_id += 1
                x, y, w, h = obj["bbox"]
                annotations.append({"id": ann_id, "image_id": image_id, "category_id": obj["category_id"],
                                    "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
        info = {"description": "detr-ft hard benchmark (benchmarks/hard_data.py)", "seed": seed,
                "backgrounds": list(BACKGROUNDS[split])}
        _write_json(out / "annotations" / f"{split}.json",
                    {"info": info, "images": images, "annotations": annotations, "categories": categories})
        with_objects = {a["image_id"] for a in annotations}
        summary[split] = {"images": len(images), "objects": len(annotations),
                          "empty": sum(im["id"] not in with_objects for im in images),
                          "backgrounds": list(BACKGROUNDS[split])}
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="dataset folder (images/, annotations/{train,test}.json)")
    p.add_argument("--train", type=int, default=1000, help="training images (default 1000)")
    p.add_argument("--test", type=int, default=300, help="held-out images, other backgrounds (default 300)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        summary = generate(args.out, args.train, args.test, args.seed)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
