"""Image loading and the geometric transforms on (image, boxes).

Boxes travel as (cx, cy, w, h) normalised by the image size, which resizing
leaves unchanged and a horizontal flip maps to (1 - cx, cy, w, h).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from detr_ft.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ResizeSpec:
    """The model's resize rule: short side to ``shortest``, long side at most ``longest``."""

    shortest: int
    longest: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after resizing, by the rule DETR's image processor uses."""
        short, long = min(height, width), max(height, width)
        target = self.shortest
        if long / short * target > self.longest:
            target = int(round(self.longest * short / long))
        if short == target:
            return height, width
        if width < height:
            return int(target * height / width), target
        return target, int(target * width / height)

    @property
    def max_canvas(self) -> tuple[int, int]:
        """The largest (height, width) the resize can produce: a longest x longest square."""
        return self.longest, self.longest


def load_image(path: Path) -> Image.Image:
    """Decode an image as RGB with its EXIF orientation applied."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                im = ImageOps.exif_transpose(im)
                return to_rgb(im)
    except FileNotFoundError:
        raise UserError(f"{path}: image file not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"{path}: not a readable image ({e})") from None


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode (L, LA, P, RGBA, CMYK, I;16, ...) to 8-bit RGB."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float32)
        hi = float(a.max()) or 1.0
        im = Image.fromarray((a * (255.0 / hi)).clip(0, 255).astype(np.uint8))
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGB", rgba.size, (0, 0, 0))
        background.paste(rgba, mask=rgba.split()[3])
        return background
    return im.convert("RGB")


def xywh_to_cxcywh_norm(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """[N, 4] pixel (x, y, w, h) -> [N, 4] normalised (cx, cy, w, h)."""
    out = np.empty_like(boxes, dtype=np.float32)
    out[:, 0] = (boxes[:, 0] + boxes[:, 2] / 2) / width
    out[:, 1] = (boxes[:, 1] + boxes[:, 3] / 2) / height
    out[:, 2] = boxes[:, 2] / width
    out[:, 3] = boxes[:, 3] / height
    return out


def resize(image: Image.Image, spec: ResizeSpec) -> Image.Image:
    h, w = spec.output_size(image.height, image.width)
    if (h, w) == (image.height, image.width):
        return image
    return image.resize((w, h), Image.BILINEAR)


def hflip(image: Image.Image, boxes: np.ndarray) -> tuple[Image.Image, np.ndarray]:
    """Mirror the image; boxes are normalised (cx, cy, w, h)."""
    boxes = boxes.copy()
    boxes[:, 0] = 1.0 - boxes[:, 0]
    return image.transpose(Image.FLIP_LEFT_RIGHT), boxes


def to_uint8_tensor(image: Image.Image) -> torch.Tensor:
    """[3, H, W] uint8; normalisation happens once per batch in the collate."""
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
