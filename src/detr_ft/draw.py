"""Annotated images: one colour per class, box, class name and score.

Readable on any picture: small images are enlarged for display (boxes with
them), each box has a thin dark edge so that light colours show on light
backgrounds, the label text is black or white by the colour's brightness, and
labels are placed where they do not cover earlier ones or leave the image.
"""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

# Colour-blind-friendly, distinct hues (Paul Tol's "bright" and "vibrant" sets).
PALETTE = ("#4477AA", "#EE6677", "#228833", "#CCBB44", "#66CCEE", "#AA3377", "#EE7733", "#0077BB",
           "#33BBEE", "#EE3377", "#CC3311", "#009988")
MIN_DISPLAY_SIDE = 320  # shorter sides below this are enlarged (at most MAX_ENLARGE times)
MAX_ENLARGE = 4


def class_colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def text_colour(colour: str) -> str:
    """Black on light colours, white on dark ones (relative luminance)."""
    r, g, b = (int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5))
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.55 else "white"


def display_scale(image: Image.Image) -> int:
    """An integer enlargement that brings a small image's shorter side to about MIN_DISPLAY_SIDE."""
    short = min(image.size)
    return max(1, min(MAX_ENLARGE, MIN_DISPLAY_SIDE // max(1, short)))


def font_for(image: Image.Image):
    size = int(min(40, max(12, round(min(image.size) / 30))))
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _label_place(box, size, image_size, taken) -> tuple[float, float]:
    """Top-left corner for a label of ``size`` (w, h): above the box, inside its top, or below
    it, the first that stays on the image and covers no earlier label."""
    (x0, y0, x1, y1), (w, h), (width, height) = box, size, image_size
    x = min(max(0.0, x0), max(0.0, width - w))
    candidates = [(x, y0 - h), (x, y0), (x, y1), (x, max(0.0, y1 - h))]
    inside = [(cx, cy) for cx, cy in candidates if 0 <= cy and cy + h <= height]
    for cx, cy in inside:
        if not any(_overlaps((cx, cy, cx + w, cy + h), t) for t in taken):
            return cx, cy
    return inside[0] if inside else (x, 0.0)


def draw_boxes(image: Image.Image, boxes, labels, names, scores=None) -> Image.Image:
    """A copy of ``image`` (enlarged if small) with boxes [x0, y0, x1, y1] (pixels of
    ``image``) drawn; labels are class indices into ``names``; scores are optional."""
    scale = display_scale(image)
    image = image.convert("RGB")
    image = image.resize((image.width * scale, image.height * scale), Image.BICUBIC) if scale > 1 else image.copy()
    draw = ImageDraw.Draw(image)
    font = font_for(image)
    width = max(3, round(min(image.size) / 200))
    pad = max(2, width)
    taken: list[tuple[float, float, float, float]] = []
    order = range(len(labels)) if scores is None else sorted(range(len(labels)), key=lambda i: -float(scores[i]))
    for i in order:
        x0, y0, x1, y1 = [float(v) * scale for v in boxes[i]]
        label = int(labels[i])
        colour = class_colour(label)
        draw.rectangle([x0 - 1, y0 - 1, x1 + 1, y1 + 1], outline="#222222", width=1)  # a dark edge outside
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=width)
        text = names[label] if scores is None else f"{names[label]} {float(scores[i]):.2f}"
        tx0, ty0, tx1, ty1 = draw.textbbox((0, 0), text, font=font)
        size = (tx1 - tx0 + 2 * pad, ty1 - ty0 + 2 * pad)
        lx, ly = _label_place((x0, y0, x1, y1), size, image.size, taken)
        taken.append((lx, ly, lx + size[0], ly + size[1]))
        draw.rectangle([lx, ly, lx + size[0], ly + size[1]], fill=colour)
        draw.text((lx + pad - tx0, ly + pad - ty0), text, fill=text_colour(colour), font=font)
    return image


def side_by_side(left: Image.Image, right: Image.Image, titles=("ground truth", "prediction")) -> Image.Image:
    """Two images next to each other, a gap between, and a title bar above each."""
    font = font_for(left)
    probe = ImageDraw.Draw(left)
    bar = max(probe.textbbox((0, 0), t, font=font)[3] for t in titles) + 8
    gap = max(8, left.width // 60)
    canvas = Image.new("RGB", (left.width + right.width + gap, max(left.height, right.height) + bar), "white")
    canvas.paste(left, (0, bar))
    canvas.paste(right, (left.width + gap, bar))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), titles[0], fill="black", font=font)
    draw.text((left.width + gap + 4, 4), titles[1], fill="black", font=font)
    return canvas
