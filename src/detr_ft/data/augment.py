"""Training augmentation on (image, boxes, labels): multi-scale resize, random-size crop,
zoom-out, photometric distortion and horizontal flip, each drawn from one seeded generator.

The geometry is one *window* in the source image's pixels: the whole image, a crop inside it
(``crop``) or a larger frame around it (``zoom_out``). Only the window is resized (a crop is
cut from the decoded image first, so it costs less than the full resize), by the model's rule
with the short side drawn from ``scales``. The window keeps the source's orientation class
(height <= width stays so, height > width too; a square output may come of either), so the
samplers' grouping by the JSON sizes' aspect still holds after augmentation, and every output
fits the canvases of the *envelope* rule (``AugmentSpec.envelope``).

Boxes travel as normalised (cx, cy, w, h); a crop clips them and drops those whose visible
part is empty or below ``min_visibility`` of their area. The photometric distortion is one
affine colour map (brightness, saturation and a hue rotation about the grey axis, then
contrast about the mean grey) applied once to the resized uint8 tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from PIL import Image

from detr_ft.data.transforms import flip_horizontally, image_tensor
from detr_ft.errors import UserError
from detr_ft.types import MIN_IMAGE_SIDE, ResizeSpec, resize_output_size

# RT-DETR's / torchvision's photometric distortion ranges: brightness, contrast, saturation
# (factors 1 +- x) and hue (a fraction of the colour circle, +- x)
DEFAULT_JITTER = (0.125, 0.5, 0.5, 0.05)
# --augment presets. Scales are fractions of the resize's short side: DETR's 480-800 of 800.
PRESETS: dict[str, dict] = {
    "none": {"hflip": 0.0},
    "flip": {"hflip": 0.5},
    "detr": {"hflip": 0.5, "scales": (0.6, 1.0), "crop": 0.5},
    "strong": {"hflip": 0.5, "scales": (0.6, 1.0), "crop": 0.5, "photometric": 0.8, "zoom_out": 0.3},
}
LUMA = np.array([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class AugmentSpec:
    """What training draws per image (probabilities in [0, 1]).

    hflip:          horizontal flip.
    scales:         (min, max) short side in pixels, drawn per image; None: the resize's own.
    crop:           random-size crop; its sides are fractions in [crop_min, 1] of the image's.
    min_visibility: a cropped box is kept if at least this fraction of its area stays.
    photometric:    colour distortion with strengths ``jitter`` (brightness, contrast,
                    saturation, hue).
    zoom_out:       the image placed in a frame up to ``zoom_out_max`` times its size,
                    filled with the normalisation mean (objects get smaller).
    """

    hflip: float = 0.5
    scales: tuple[int, int] | None = None
    crop: float = 0.0
    crop_min: float = 0.3
    min_visibility: float = 0.3
    photometric: float = 0.0
    jitter: tuple[float, float, float, float] = DEFAULT_JITTER
    zoom_out: float = 0.0
    zoom_out_max: float = 2.0

    @property
    def geometric(self) -> bool:
        """Whether windows other than the whole image occur (their aspect then varies)."""
        return self.crop > 0 or self.zoom_out > 0

    def envelope(self, resize: ResizeSpec) -> ResizeSpec:
        """The rule every augmented image obeys: short side at most max(scales, shortest), long side
        at most ``longest`` scaled alike (scales above the resize's enlarge the canvases)."""
        top = max(self.scales[1], resize.shortest) if self.scales else resize.shortest
        grown = replace(resize, shortest=top, longest=int(round(resize.longest * top / resize.shortest)))
        return replace(grown, fixed=self.fixed_size(resize, top)) if resize.fixed is not None else grown

    @staticmethod
    def fixed_size(resize: ResizeSpec, short: int) -> tuple[int, int]:
        """A fixed-size rule's (height, width) at short side ``short`` (its aspect ratio kept)."""
        f = short / resize.shortest
        return int(round(resize.fixed[0] * f)), int(round(resize.fixed[1] * f))

    def out_size(self, resize: ResizeSpec, env: ResizeSpec, height: int, width: int, short: int) -> tuple[int, int]:
        """The (height, width) an image of ``height`` x ``width`` is resized to at short side ``short``:
        the rule's (long side within the envelope's), or a fixed-size rule's size at that scale."""
        if resize.fixed is not None:
            return self.fixed_size(resize, short)
        return resize_output_size(height, width, short, env.longest)

    def apply(self, image: Image.Image, boxes: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
              resize: ResizeSpec) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """(image [3, h, w] uint8, boxes [N', 4] normalised cxcywh, labels [N']) for one draw of ``rng``.

        The flip is drawn first (as before the other augmentations existed: ``--augment flip``
        draws the same flips), then the scale, zoom-out or crop, and the colours."""
        flip = rng.random() < self.hflip
        env = self.envelope(resize)
        short = int(rng.integers(self.scales[0], self.scales[1] + 1)) if self.scales else resize.shortest
        zoom = self.zoom_out > 0 and rng.random() < self.zoom_out
        crop = not zoom and self.crop > 0 and rng.random() < self.crop
        if zoom:
            pixels, boxes = self._zoom_out(image, boxes, rng, lambda h, w: self.out_size(resize, env, h, w, short),
                                           resize.mean)
        elif crop:
            image, boxes, keep = self._crop(image, boxes, rng)
            labels = labels[keep]
            pixels = image_tensor(image, self.out_size(resize, env, image.height, image.width, short), fast=True)
        else:
            pixels = image_tensor(image, self.out_size(resize, env, image.height, image.width, short), fast=True)
        if self.photometric > 0 and rng.random() < self.photometric:
            pixels = distort_colours(pixels, rng, self.jitter)
        if flip:
            pixels, boxes = flip_horizontally(pixels, boxes)
        return pixels, boxes.astype(np.float32), labels

    def _crop(self, image: Image.Image, boxes: np.ndarray, rng: np.random.Generator):
        """A random window inside the image, of the source's orientation class; boxes clipped to it
        and those below ``min_visibility`` dropped. Returns (cropped image, boxes, kept mask)."""
        W, H = image.size
        cw = int(rng.integers(max(1, math.ceil(self.crop_min * W)), W + 1))
        ch = int(rng.integers(max(1, math.ceil(self.crop_min * H)), H + 1))
        if H <= W:
            ch = min(ch, cw)
        else:
            cw = min(cw, ch)
        x0, y0 = int(rng.integers(0, W - cw + 1)), int(rng.integers(0, H - ch + 1))
        xyxy = cxcywh_to_xyxy(boxes) * np.array([W, H, W, H], dtype=np.float64)
        clipped = np.clip(xyxy - np.array([x0, y0, x0, y0]), 0, np.array([cw, ch, cw, ch], dtype=np.float64))
        area = (xyxy[:, 2] - xyxy[:, 0]) * (xyxy[:, 3] - xyxy[:, 1])
        cw_, ch_ = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
        keep = (cw_ > 0) & (ch_ > 0) & (cw_ * ch_ >= self.min_visibility * area)
        kept = xyxy_to_cxcywh(clipped[keep] / np.array([cw, ch, cw, ch], dtype=np.float64))
        return image.crop((x0, y0, x0 + cw, y0 + ch)), kept, keep

    def _zoom_out(self, image: Image.Image, boxes: np.ndarray, rng: np.random.Generator, out_size,
                  mean) -> tuple[torch.Tensor, np.ndarray]:
        """The image resized into a random place of a frame ``r`` times its size (r uniform in
        [1, zoom_out_max]), the frame's output size ``out_size(h, w)``; boxes follow the placement."""
        W, H = image.size
        r = rng.uniform(1.0, self.zoom_out_max)
        fw, fh = max(W, int(round(W * r))), max(H, int(round(H * r)))
        if H <= W:
            fh = min(fh, fw)
        else:
            fw = min(fw, fh)  # still >= W: fh >= H > W
        ox, oy = rng.uniform(0, fw - W), rng.uniform(0, fh - H)
        oh, ow = out_size(fh, fw)
        pw, ph = max(1, min(ow, int(round(W * ow / fw)))), max(1, min(oh, int(round(H * oh / fh))))
        px, py = min(ow - pw, int(round(ox * ow / fw))), min(oh - ph, int(round(oy * oh / fh)))
        fill = torch.tensor([round(255 * m) for m in mean], dtype=torch.uint8).view(3, 1, 1)
        canvas = fill.expand(3, oh, ow).clone()
        canvas[:, py:py + ph, px:px + pw] = image_tensor(image, (ph, pw), fast=True)
        out = boxes.astype(np.float64) * np.array([pw, ph, pw, ph]) + np.array([px, py, 0, 0])
        return canvas, out / np.array([ow, oh, ow, oh])


def cxcywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """[N, 4] (cx, cy, w, h) -> [N, 4] (x0, y0, x1, y1), float64."""
    b = boxes.astype(np.float64).reshape(-1, 4)
    return np.concatenate([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], axis=1)


def xyxy_to_cxcywh(boxes: np.ndarray) -> np.ndarray:
    """[N, 4] (x0, y0, x1, y1) -> [N, 4] (cx, cy, w, h)."""
    b = boxes.reshape(-1, 4)
    return np.concatenate([(b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2]], axis=1)


def colour_map(brightness: float, contrast: float, saturation: float, hue: float,
               channel_means: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(A [3, 3], t [3]) with ``A @ rgb + t`` the distortion: brightness and saturation factors, a hue
    rotation by ``hue`` turns about the grey axis, then contrast about the image's mean grey."""
    sat = saturation * np.eye(3) + (1 - saturation) * np.outer(np.ones(3), LUMA)
    angle = 2 * math.pi * hue
    axis = np.ones(3) / math.sqrt(3)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = math.cos(angle) * np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * np.outer(axis, axis)
    linear = brightness * rot @ sat
    grey = float(LUMA @ linear @ channel_means)
    return contrast * linear, np.full(3, (1 - contrast) * grey)


def distort_colours(pixels: torch.Tensor, rng: np.random.Generator,
                    jitter: tuple[float, float, float, float]) -> torch.Tensor:
    """[3, h, w] uint8 -> the same with random brightness, contrast, saturation and hue."""
    b, c, s, h = jitter
    factors = [rng.uniform(1 - b, 1 + b), rng.uniform(1 - c, 1 + c), rng.uniform(1 - s, 1 + s), rng.uniform(-h, h)]
    flat = pixels.reshape(3, -1).float()
    A, t = colour_map(*factors, flat.mean(dim=1).numpy().astype(np.float64))
    out = torch.from_numpy(A).float() @ flat
    return out.add_(torch.from_numpy(t).float().view(3, 1)).clamp_(0, 255).round_().to(torch.uint8).view(pixels.shape)


def check_probability(flag: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise UserError(f"{flag} must be a probability between 0 and 1 (got {value})")


def augment_spec(preset: str, resize: ResizeSpec, hflip: float | None = None, scales=None,
                 crop: float | None = None, crop_min: float = 0.3, min_visibility: float = 0.3,
                 photometric: float | None = None, jitter=DEFAULT_JITTER, zoom_out: float | None = None,
                 zoom_out_max: float = 2.0) -> AugmentSpec:
    """The ``--augment`` preset at ``resize``'s scale, each knob given (not None) replacing the
    preset's; every value checked (``UserError`` naming the flag)."""
    if preset not in PRESETS:
        raise UserError(f"--augment {preset}: unknown; use one of {', '.join(PRESETS)}")
    base = dict(PRESETS[preset])
    if "scales" in base:
        lo, hi = base["scales"]
        base["scales"] = (max(MIN_IMAGE_SIDE, int(round(lo * resize.shortest))), int(round(hi * resize.shortest)))
    given = {"hflip": hflip, "crop": crop, "photometric": photometric, "zoom_out": zoom_out,
             "scales": tuple(int(v) for v in scales) if scales is not None else None}
    base.update({k: v for k, v in given.items() if v is not None})
    spec = AugmentSpec(**base, crop_min=crop_min, min_visibility=min_visibility, jitter=tuple(jitter),
                       zoom_out_max=zoom_out_max)
    for flag, value in (("--hflip", spec.hflip), ("--crop", spec.crop), ("--photometric", spec.photometric),
                        ("--zoom-out", spec.zoom_out), ("--min-visibility", spec.min_visibility)):
        check_probability(flag, value)
    if not 0.0 < spec.crop_min <= 1.0:
        raise UserError(f"--crop-min must be a fraction in (0, 1] of the image's sides (got {spec.crop_min})")
    if spec.scales is not None and not (len(spec.scales) == 2 and MIN_IMAGE_SIDE <= spec.scales[0] <= spec.scales[1]):
        raise UserError(f"--scales takes MIN MAX short sides with {MIN_IMAGE_SIDE} <= MIN <= MAX "
                        f"(got {' '.join(map(str, spec.scales))})")
    if not (math.isfinite(spec.zoom_out_max) and spec.zoom_out_max >= 1.0):
        raise UserError(f"--zoom-out-max must be a ratio of at least 1 (got {spec.zoom_out_max})")
    if len(spec.jitter) != 4 or not all(0 <= v < 1 for v in spec.jitter[:3]) or not 0 <= spec.jitter[3] <= 0.5:
        raise UserError(f"--jitter takes B C S H: brightness, contrast, saturation in [0, 1), hue in [0, 0.5] "
                        f"(got {' '.join(map(str, spec.jitter))})")
    return spec
