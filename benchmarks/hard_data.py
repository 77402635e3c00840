"""A harder learning benchmark than the demo's shapes (issue 20): offline and reproducible.

Ten classes of glyphs that are not mirror-symmetric (F G J L P R 2 3 4 7, Pillow's built-in
font), 8-50 px tall, rotated a little, on procedural textures; the training backgrounds
(fractal value noise with stripes) are drawn differently from the test ones (Voronoi cells with
blobs), with other palettes, and both splits carry distractor clutter (strokes and circles of
no class). The same seed writes the same bytes.

    PYTHONPATH=src python benchmarks/hard_data.py --out DIR [--train 400] [--test 100] [--seed 0]

Writes DIR/images and DIR/annotations/{train,test}.json (CPPE-5 layout, ``detr-ft train --data-dir DIR``).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CLASSES = ("F", "G", "J", "L", "P", "R", "2", "3", "4", "7")
SIZE = (256, 192)  # width, height
OBJECT_PX = (8, 50)  # glyph height range
GLYPH_RENDER = 96  # glyphs are drawn at this size once, then scaled


def value_noise(rng: np.random.Generator, h: int, w: int, octaves: int = 4) -> np.ndarray:
    """[h, w] in [0, 1]: fractal value noise (bilinear upsampled random grids, halving amplitude)."""
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        cells = 2 ** (o + 2)
        grid = (rng.random((cells + 1, cells + 1)) * 255).astype(np.uint8)
        out += amp * np.asarray(Image.fromarray(grid).resize((w, h), Image.BILINEAR), np.float32) / 255
        total += amp
        amp /= 2
    return out / total


def voronoi(rng: np.random.Generator, h: int, w: int, cells: int = 24) -> np.ndarray:
    """[h, w] in [0, 1]: the distance to the nearest of ``cells`` random points, and a value per cell."""
    pts = rng.random((cells, 2)) * [h, w]
    values = rng.random(cells)
    ys, xs = np.mgrid[0:h, 0:w]
    d = (ys[None] - pts[:, 0, None, None]) ** 2 + (xs[None] - pts[:, 1, None, None]) ** 2
    nearest = d.argmin(0)
    dist = np.sqrt(d.min(0))
    return (0.6 * values[nearest] + 0.4 * np.clip(dist / dist.max(), 0, 1)).astype(np.float32)


def palette_map(t: np.ndarray, rng: np.random.Generator, train: bool) -> np.ndarray:
    """[h, w] in [0, 1] -> [h, w, 3] uint8 between two random colours (earthy for train, vivid for test)."""
    if train:
        a, b = rng.uniform(20, 140, 3), rng.uniform(100, 230, 3)
    else:
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    return (a + t[..., None] * (b - a)).clip(0, 255).astype(np.uint8)


def background(rng: np.random.Generator, train: bool) -> np.ndarray:
    w, h = SIZE
    if train:  # noise with stripes
        t = value_noise(rng, h, w)
        ys, xs = np.mgrid[0:h, 0:w]
        angle, period = rng.uniform(0, np.pi), rng.uniform(6, 30)
        t = 0.75 * t + 0.25 * (0.5 + 0.5 * np.sin((xs * np.cos(angle) + ys * np.sin(angle)) / period * 2 * np.pi))
    else:  # cells with blobs
        t = 0.7 * voronoi(rng, h, w) + 0.3 * value_noise(rng, h, w, octaves=2)
    return palette_map(t.astype(np.float32), rng, train)


def glyph_mask(font, char: str, height: int, angle: float) -> np.ndarray:
    """[h, w] bool: ``char`` drawn large, cropped to its ink, rotated and scaled to ``height`` px."""
    canvas = Image.new("L", (GLYPH_RENDER * 2, GLYPH_RENDER * 2), 0)
    ImageDraw.Draw(canvas).text((GLYPH_RENDER // 2, GLYPH_RENDER // 4), char, fill=255, font=font)
    canvas = canvas.rotate(angle, resample=Image.BILINEAR, expand=True)
    canvas = canvas.crop(canvas.getbbox())
    width = max(3, int(round(canvas.width * height / canvas.height)))
    return np.asarray(canvas.resize((width, height), Image.BILINEAR)) > 96


def clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    """Strokes and circles of no class, in random colours."""
    w, h = SIZE
    for _ in range(int(rng.integers(2, 7))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        if rng.random() < 0.5:
            draw.line([(x, y), (x + rng.uniform(-40, 40), y + rng.uniform(-40, 40))], fill=colour,
                      width=int(rng.integers(1, 4)))
        else:
            r = rng.uniform(3, 14)
            draw.ellipse([x - r, y - r, x + r, y + r], outline=colour, width=int(rng.integers(1, 3)))


def make_image(seed: int, split: str, index: int, font) -> tuple[Image.Image, list[dict]]:
    """One image and its objects ({"category_id", "bbox": [x, y, w, h]}), from (seed, split, index) only."""
    rng = np.random.default_rng((seed, split == "train", index))
    pixels = background(rng, split == "train")
    image = Image.fromarray(pixels)
    clutter(ImageDraw.Draw(image), rng)
    pixels = np.array(image)
    taken = np.zeros(pixels.shape[:2], bool)
    objects = []
    for _ in range(int(rng.integers(2, 9))):
        cls = int(rng.integers(len(CLASSES)))
        height = int(round(np.exp(rng.uniform(np.log(OBJECT_PX[0]), np.log(OBJECT_PX[1])))))
        mask = glyph_mask(font, CLASSES[cls], height, rng.uniform(-15, 15))
        mh, mw = mask.shape
        if mw >= SIZE[0] or mh >= SIZE[1]:
            continue
        x, y = int(rng.integers(0, SIZE[0] - mw)), int(rng.integers(0, SIZE[1] - mh))
        if taken[y:y + mh, x:x + mw].any():
            continue
        region = pixels[y:y + mh, x:x + mw]
        # a colour far from the local background, so the glyph is visible but not trivially so
        local = region.reshape(-1, 3).mean(0)
        colour = np.where(local > 128, rng.uniform(0, 90, 3), rng.uniform(165, 255, 3))
        region[mask] = colour.astype(np.uint8)
        taken[y:y + mh, x:x + mw] = True
        ys, xs = np.nonzero(mask)
        objects.append({"category_id": cls + 1, "bbox": [float(x + xs.min()), float(y + ys.min()),
                                                          float(xs.max() - xs.min() + 1),
                                                          float(ys.max() - ys.min() + 1)]})
    return Image.fromarray(pixels), objects


def generate(out: Path, train: int = 400, test: int = 100, seed: int = 0) -> dict:
    """Write the dataset; returns the images and objects per split."""
    font = ImageFont.load_default(size=GLYPH_RENDER)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": i + 1, "name": c, "supercategory": "glyph"} for i, c in enumerate(CLASSES)]
    summary, image_id, ann_id = {}, 0, 0
    for split, count in (("train", train), ("test", test)):
        images, annotations = [], []
        for index in range(count):
            image, objects = make_image(seed, split, index, font)
            image_id += 1
            name = f"{split}_{index:05d}.jpg"
            image.save(out / "images" / name, format="JPEG", quality=92)
            images.append({"id": image_id, "file_name": name, "width": image.width, "height": image.height})
            for obj in objects:
                ann_id += 1
                annotations.append({"id": ann_id, "image_id": image_id, "category_id": obj["category_id"],
                                    "bbox": obj["bbox"], "area": obj["bbox"][2] * obj["bbox"][3], "iscrowd": 0})
        data = {"images": images, "annotations": annotations, "categories": categories}
        tmp = out / "annotations" / f"{split}.json.tmp"
        tmp.write_text(json.dumps(data))
        os.replace(tmp, out / "annotations" / f"{split}.json")
        summary[split] = {"images": len(images), "objects": len(annotations)}
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--train", type=int, default=400)
    p.add_argument("--test", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    print(json.dumps(generate(Path(args.out), args.train, args.test, args.seed)))


if __name__ == "__main__":
    main()
