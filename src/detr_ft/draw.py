"""Annotated images: one colour per class, box, class name and score."""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

# Colour-blind-friendly, distinct hues (Paul Tol's "bright" and "vibrant" sets).
PALETTE = ("#4477AA", "#EE6677", "#228833", "#CCBB44", "#66CCEE", "#AA3377", "#EE7733", "#0077BB",
           "#33BBEE", "#EE3377", "#CC3311", "#009988")


def class_colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def _font(image: Image.Image):
    size = max(11, round(min(image.size) / 28))
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def draw_boxes(image: Image.Image, boxes, labels, names, scores=None) -> Image.Image:
    """A copy of ``image`` with boxes [x0, y0, x1, y1] drawn; labels are class indices."""
    image = image.convert("RGB").copy()
    draw = ImageDraw.Draw(image)
    font = _font(image)
    width = max(2, round(min(image.size) / 200))
    for i, (box, label) in enumerate(zip(boxes, labels)):
        x0, y0, x1, y1 = [float(v) for v in box]
        colour = class_colour(int(label))
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=width)
        text = names[int(label)] if scores is None else f"{names[int(label)]} {float(scores[i]):.2f}"
        tx0, ty0, tx1, ty1 = draw.textbbox((0, 0), text, font=font)
        tw, th = tx1 - tx0, ty1 - ty0
        # label above the box, or inside it when the box touches the top edge; never off the image
        ty = y0 - th - 4 if y0 - th - 4 >= 0 else y0
        tx = min(max(0.0, x0), max(0.0, image.width - tw - 4))
        draw.rectangle([tx, ty, tx + tw + 4, ty + th + 4], fill=colour)
        draw.text((tx + 2 - tx0, ty + 2 - ty0), text, fill="white", font=font)
    return image


def side_by_side(left: Image.Image, right: Image.Image, titles=("ground truth", "prediction")) -> Image.Image:
    """Two images next to each other with a title bar above each."""
    bar = max(18, round(left.height / 16))
    canvas = Image.new("RGB", (left.width + right.width + 8, max(left.height, right.height) + bar), "white")
    canvas.paste(left, (0, bar))
    canvas.paste(right, (left.width + 8, bar))
    draw = ImageDraw.Draw(canvas)
    font = _font(left)
    draw.text((4, 2), titles[0], fill="black", font=font)
    draw.text((left.width + 12, 2), titles[1], fill="black", font=font)
    return canvas
