"""Static-shape arithmetic without torch: object-count buckets and canvas padding.

Training uses these through ``data/batching.py``; ``data check`` uses them to suggest
``--num-buckets`` and ``--pad-canvases`` without importing torch.
"""

from __future__ import annotations

import numpy as np


def compute_buckets(object_counts, num_buckets: int) -> list[int]:
    """Object-count bucket boundaries from per-image counts (no image decoded).

    Percentiles of the counts at 100/K, 200/K, ... 100 (lower interpolation, as
    the original example), made unique; the top bucket is the maximum count, and
    every bucket holds at least one slot. ``num_buckets=0`` means no buckets.
    """
    if num_buckets <= 0:
        return []
    counts = np.asarray(object_counts, dtype=np.int64)
    if counts.size == 0:
        return [1]
    q = np.linspace(0, 100, num_buckets + 1)[1:]
    bounds = np.percentile(counts, q, method="lower")
    return sorted({max(1, int(b)) for b in bounds} | {max(1, int(counts.max()))})


def pad_canvases(envelope, mode: str = "square", size=None) -> list[tuple[int, int]]:
    """The fixed canvases of ``--pad`` for images resized by ``envelope`` (a ``ResizeSpec``; in
    training the augmentation's largest scale): ``mode`` "auto", a landscape and a portrait one
    (short x long, long x short); else ``size`` (``--pad-size``) or the envelope's largest square."""
    if mode == "auto":
        return envelope.orientation_canvases
    if size:
        return [(int(size[0]), int(size[1]))]
    return [envelope.max_canvas]


def bucket_size(count: int, buckets: list[int]) -> int:
    """The smallest bucket that holds ``count`` objects (the largest bucket if none does)."""
    for b in buckets:
        if b >= count:
            return b
    return max(count, buckets[-1]) if buckets else max(count, 1)


def padded_pixel_fraction(sizes: list[tuple[int, int]], canvases: list[tuple[int, int]]) -> float:
    """Share of canvas pixels that are padding, over images of the given (resized) sizes,
    each on the smallest canvas that holds it."""
    by_area = sorted(canvases, key=lambda c: c[0] * c[1])
    real = total = 0
    for h, w in sizes:
        ch, cw = next((c for c in by_area if c[0] >= h and c[1] >= w), by_area[-1])
        real += h * w
        total += ch * cw
    return 1.0 - real / total if total else 0.0
