"""Image loading and the geometric transforms on (image, boxes).

Boxes travel as (cx, cy, w, h) normalised by the image size, which resizing
leaves unchanged and a horizontal flip maps to (1 - cx, cy, w, h).

torch is imported where a tensor is made, not here: the ONNX runtime
(``onnx_runtime.py``) uses the image decoding and the Pillow resize without it.
The resize rule itself (``ResizeSpec``) is in detr_ft/types.py.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

from detr_ft.errors import UserError
from detr_ft.types import ResizeSpec

if TYPE_CHECKING:  # torch is imported where pixels become tensors: `data check` and `data convert` read
    import torch   # sizes and decode images without it

ORIENTATION_TAG = 0x0112  # EXIF orientation


def load_image(path: Path) -> Image.Image:
    """Decode an image file as RGB with its EXIF orientation applied."""
    return decode_image(Path(path), str(path))


def decode_image(source, name: str) -> Image.Image:
    """Decode a file path or a binary file object as upright RGB.

    Large images are allowed (Pillow's decompression-bomb warning is silenced, its
    error kept); anything unreadable is a ``UserError`` naming ``name``.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(source)
            try:
                im.load()  # decodes, then closes a file it opened (a single frame)
            except BaseException:
                im.close()
                raise
            ImageOps.exif_transpose(im, in_place=True)  # no copy when already upright
            return to_rgb(im)
    except FileNotFoundError:
        raise UserError(f"{name}: image file not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"{name}: not a readable image ({e})") from None


def displayed_size(source) -> tuple[int, int]:
    """(width, height) of an image file or file object as displayed, from its header alone:
    EXIF orientations 5-8 (a quarter turn) swap the stored sides. Pillow's errors propagate."""
    with Image.open(source) as im:
        width, height = im.size
        quarter_turn = im.getexif().get(ORIENTATION_TAG, 1) in (5, 6, 7, 8)
    return (height, width) if quarter_turn else (width, height)


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


def resized_tensor(image: Image.Image, spec: ResizeSpec) -> torch.Tensor:
    """The RGB image as [3, h, w] uint8, resized by the model's rule."""
    return image_tensor(image, spec.output_size(image.height, image.width))


def resize_image(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``image`` resized to ``size`` (height, width) with Pillow's BILINEAR, as transformers' image
    processors resize (so an export gives ``pipeline()`` the pixels detr-ft trained and predicts on)."""
    if tuple(size) == (image.height, image.width):
        return image
    return image.resize((int(size[1]), int(size[0])), Image.Resampling.BILINEAR)


def image_tensor(image: Image.Image, size: tuple[int, int] | None = None, fast: bool = False) -> torch.Tensor:
    """The RGB image as [3, H, W] uint8, resized to ``size`` (height, width) if given.

    By default with ``resize_image`` (Pillow's BILINEAR: the pixels of transformers' processors, so
    eval, predict and an export's ``pipeline()`` see the same image). ``fast``: torch's antialiased
    bilinear kernel on uint8, up to 2 grey levels from Pillow's and faster (benchmarks/README.md):
    for training, where augmentation changes the pixels far more. Normalisation happens once per
    batch, in ``Batch.to_device_normalised``.
    """
    import torch

    if size is not None and not fast:
        image = resize_image(image, size)
    hwc = np.asarray(image)  # a read-only view of Pillow's bytes: torch only reads it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "not writable": nothing writes to it
        chw = torch.from_numpy(hwc).permute(2, 0, 1)
    if size is None or tuple(size) == tuple(chw.shape[1:]):
        return chw.contiguous()
    return torch.nn.functional.interpolate(chw[None], size=tuple(size), mode="bilinear", antialias=True,
                                           align_corners=False)[0]


def flip_horizontally(image: torch.Tensor, boxes: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """Mirror a [3, H, W] image; boxes are normalised (cx, cy, w, h)."""
    boxes = boxes.copy()
    boxes[:, 0] = 1.0 - boxes[:, 0]
    return image.flip(-1), boxes
