"""The pictures of ``data check`` (matplotlib, Agg back end): one PNG per question, beside the page."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from detr_ft.data.health import COCO_MEDIUM, COCO_SMALL, SplitData
from detr_ft.plots import _pyplot

SPLIT_COLOURS = {"train": "#1f77b4", "test": "#ff7f0e"}


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    _pyplot().close(fig)
    return path.name


def class_counts(splits: list[SplitData], path: Path) -> str:
    """Objects per class, a bar per split."""
    plt = _pyplot()
    names = splits[0].index.categories.names
    fig, ax = plt.subplots(figsize=(max(5.0, 0.5 * len(names) + 2), 3.5))
    width = 0.8 / len(splits)
    for k, s in enumerate(splits):
        ax.bar(np.arange(len(names)) + k * width, s.class_counts, width, label=s.name,
               color=SPLIT_COLOURS.get(s.name))
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=45 if len(names) > 6 else 0, ha="right"
                  if len(names) > 6 else "center")
    ax.set_ylabel("objects")
    ax.set_title("Objects per class")
    ax.legend()
    return _save(fig, path)


def _split_histograms(splits: list[SplitData], values: list[np.ndarray], bins: np.ndarray, path: Path,
                      xlabel: str, ylabel: str, title: str, marks=()) -> str:
    """One histogram of ``values`` per split (same bins, overlaid), with a dashed line and a
    note at each (x, text) of ``marks``."""
    fig, ax = _pyplot().subplots(figsize=(6, 3.5))
    for s, v in zip(splits, values):
        ax.hist(v, bins=bins, alpha=0.6, label=s.name, color=SPLIT_COLOURS.get(s.name))
    for x, text in marks:
        ax.axvline(x, color="k", ls="--", lw=1)
        ax.text(x, ax.get_ylim()[1] * 0.95, " " + text, fontsize=8, va="top")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    return _save(fig, path)


def box_sizes(splits: list[SplitData], path: Path) -> str:
    """sqrt(box area) in pixels, with COCO's small / medium / large limits (32 and 96 px)."""
    sides = [np.sqrt(s.boxes[:, 2] * s.boxes[:, 3]) for s in splits]
    top = max([float(v.max()) for v in sides if len(v)] + [128.0])
    limits = ((np.sqrt(COCO_SMALL), "small | medium"), (np.sqrt(COCO_MEDIUM), "medium | large"))
    return _split_histograms(splits, sides, np.linspace(0, top, 40), path,
                             "sqrt(box area), pixels of the original image", "boxes", "Box sizes against COCO's areas",
                             limits)


def objects_per_image(splits: list[SplitData], path: Path) -> str:
    """Objects per image, a histogram per split."""
    counts = [s.index.object_counts() for s in splits]
    top = max([int(c.max()) for c in counts if len(c)] + [1])
    return _split_histograms(splits, counts, np.arange(top + 2) - 0.5, path, "objects in the image", "images",
                             "Objects per image")


def image_sizes(splits: list[SplitData], path: Path) -> str:
    """Width against height, and the aspect ratio (height / width) histogram."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    for s in splits:
        sizes = s.sizes
        left.scatter(sizes[:, 0], sizes[:, 1], s=8, alpha=0.6, label=s.name, color=SPLIT_COLOURS.get(s.name))
        right.hist(sizes[:, 1] / np.maximum(sizes[:, 0], 1), bins=30, alpha=0.6, label=s.name,
                   color=SPLIT_COLOURS.get(s.name))
    left.set_xlabel("width (px)")
    left.set_ylabel("height (px)")
    left.set_title("Image sizes")
    right.axvline(1.0, color="k", ls="--", lw=1)
    right.set_xlabel("height / width (> 1: portrait)")
    right.set_ylabel("images")
    right.set_title("Aspect ratios")
    left.legend()
    return _save(fig, path)


def box_centres(splits: list[SplitData], path: Path) -> str:
    """Where the box centres lie, in image-normalised coordinates, a panel per split."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(splits), figsize=(3.8 * len(splits), 3.5), squeeze=False)
    for ax, s in zip(axes[0], splits):
        sizes = s.sizes[s.owner].astype(np.float64) if len(s.owner) else np.zeros((0, 2))
        cx = (s.boxes[:, 0] + s.boxes[:, 2] / 2) / np.maximum(sizes[:, 0], 1)
        cy = (s.boxes[:, 1] + s.boxes[:, 3] / 2) / np.maximum(sizes[:, 1], 1)
        ax.hist2d(cx, cy, bins=20, range=[[0, 1], [0, 1]], cmap="viridis")
        ax.set_xlim(0, 1)
        ax.set_ylim(1, 0)
        ax.set_aspect("equal")
        ax.set_title(f"Box centres ({s.name})")
        ax.set_xlabel("x / width")
        ax.set_ylabel("y / height")
    return _save(fig, path)


FIGURES = (("class_counts", class_counts), ("box_sizes", box_sizes), ("objects_per_image", objects_per_image),
           ("image_sizes", image_sizes), ("box_centres", box_centres))


def write_figures(splits: list[SplitData], out: Path) -> dict[str, str]:
    """{figure name: PNG file name in ``out``}."""
    return {name: draw(splits, out / f"data_check_{name}.png") for name, draw in FIGURES}
