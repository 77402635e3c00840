"""Image loading and the geometric transforms on (image, boxes).

Boxes travel as (cx, cy, w, h) normalised by the image size, which resizing
leaves unchanged and a horizontal flip maps to (1 - cx, cy, w, h).

torch is imported where a tensor is made, not here: the ONNX runtime
(``onnx_runtime.py``) uses the resize rule and the image decoding without it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

from detr_ft.errors import UserError

if TYPE_CHECKING:  # torch is imported where pixels become tensors: `data check` and `data convert` read
    import torch   # sizes and decode images without it

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
UNNORMALISED = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # (mean, std) of a processor with do_normalize False
ORIENTATION_TAG = 0x0112  # EXIF orientation


MIN_IMAGE_SIDE = 32  # the smallest resize detr-ft accepts (a DETR backbone downsamples 32x)


def resize_output_size(height: int, width: int, shortest: int, longest: int) -> tuple[int, int]:
    """(height, width) after resizing the short side to ``shortest`` with the long side at most
    ``longest``: transformers' ``get_size_with_aspect_ratio`` (what DETR's image processor and
    ``pipeline()`` use; the same in transformers 4.57 and 5), the long side then capped at
    ``longest``. The cap matters only where transformers keeps an image as it is because its short
    side already equals the (capped, rounded) target while its long side exceeds ``longest`` by
    up to 5 % (10 x 200 with 128/192 stays 10 x 200 there; here 10 x 192)."""
    short, long = float(min(height, width)), float(max(height, width))
    size, raw = shortest, None
    if long / short * size > longest:
        raw = longest * short / long
        size = int(round(raw))
    if (height <= width and height == size) or (width <= height and width == size):
        oh, ow = height, width
    elif width < height:
        oh, ow = int((raw if raw is not None else size) * height / width), size
    else:
        oh, ow = size, int((raw if raw is not None else size) * width / height)
    return (min(oh, longest), ow) if oh > ow else (oh, min(ow, longest))


@dataclass(frozen=True)
class ResizeSpec:
    """The model's resize rule: short side to ``shortest``, long side at most ``longest``; or,
    with ``fixed`` (height, width), every image to that size, aspect ratio not kept (the RT-DETR
    line's processors; then ``shortest``/``longest`` are its short and long side).

    Pixels are divided by 255, then normalised with ``mean``/``std`` (``UNNORMALISED``: none).
    """

    shortest: int
    longest: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    fixed: tuple[int, int] | None = None

    @classmethod
    def fixed_size(cls, height: int, width: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> "ResizeSpec":
        """Every image to ``height`` x ``width`` (a static canvas)."""
        return cls(min(height, width), max(height, width), tuple(mean), tuple(std), fixed=(int(height), int(width)))

    @property
    def normalised(self) -> bool:
        """False where pixels are only divided by 255 (mean 0, std 1)."""
        return (tuple(self.mean), tuple(self.std)) != UNNORMALISED

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after resizing: transformers' rule, never above ``longest`` (``fixed``: that size)."""
        if self.fixed is not None:
            return tuple(self.fixed)
        return resize_output_size(height, width, self.shortest, self.longest)

    def with_image_size(self, image_size) -> "ResizeSpec":
        """This rule at ``--image-size SHORT [LONG]`` (None: unchanged); LONG defaults to SHORT times
        this rule's long/short ratio. Bad sizes raise ``UserError``."""
        if not image_size:
            return self
        sizes = [int(v) for v in image_size]
        if len(sizes) not in (1, 2) or min(sizes) < MIN_IMAGE_SIDE or (len(sizes) == 2 and sizes[1] < sizes[0]):
            raise UserError(f"--image-size takes SHORT [LONG], each at least {MIN_IMAGE_SIDE} px and LONG >= SHORT "
                            f"(got {' '.join(map(str, image_size))})")
        short = sizes[0]
        long = sizes[1] if len(sizes) == 2 else int(round(short * self.longest / self.shortest))
        if self.fixed is not None:  # a fixed-size rule stays fixed, in its own orientation
            fixed = (short, long) if self.fixed[0] <= self.fixed[1] else (long, short)
            return replace(self, shortest=short, longest=long, fixed=fixed)
        return replace(self, shortest=short, longest=long)

    @property
    def max_canvas(self) -> tuple[int, int]:
        """The largest (height, width) the resize can produce: a longest x longest square (``fixed``: that size)."""
        return tuple(self.fixed) if self.fixed is not None else (self.longest, self.longest)

    @property
    def orientation_canvases(self) -> list[tuple[int, int]]:
        """A landscape and a portrait canvas (short x long, long x short) that every resized
        image fits, the one of its orientation (``--pad-canvases auto``); ``fixed``: that size alone."""
        if self.fixed is not None:
            return [tuple(self.fixed)]
        return [(self.shortest, self.longest), (self.longest, self.shortest)]


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
