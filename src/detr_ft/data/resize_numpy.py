"""detr-ft's image resize in NumPy, pixel for pixel (for the ONNX runtime, which has no torch).

detr-ft resizes uint8 images with torch's antialiased bilinear kernel
(``transforms.image_tensor``). On uint8 that kernel computes in fixed point, as
Pillow-SIMD does: per output pixel, a triangle filter over the input pixels its
footprint covers (wider when shrinking), weights normalised to sum 1, then scaled
to int16 with the most bits of precision that keep the largest weight below 2^15;
each pass sums pixel x weight in int32 from half an output step, shifts right and
saturates to 0..255. It runs the horizontal pass first, then the vertical one.
Pillow's own BILINEAR resize differs from it by one grey level on a few pixels,
so this module reproduces the kernel instead (tested equal on random sizes).
"""

from __future__ import annotations

import math

import numpy as np

# torch looks for the weights' precision below this many bits
MAX_PRECISION_BITS = 22


def filter_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The taps of one resize pass: input indices [out, K] int64, integer weights [out, K]
    int32 (0 past a pixel's footprint) and their precision in bits."""
    scale = in_size / out_size
    support = scale if scale >= 1.0 else 1.0  # bilinear: half-width 1 input pixel, scaled when shrinking
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    k = int(math.ceil(support)) * 2 + 1
    index = np.zeros((out_size, k), np.int64)
    weights = np.zeros((out_size, k), np.float64)
    for i in range(out_size):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        n = min(max(min(int(center + support + 0.5), in_size) - lo, 0), k)
        x = np.abs((np.arange(n) + lo - center + 0.5) * invscale)
        w = np.where(x < 1.0, 1.0 - x, 0.0)
        total = w.sum()
        weights[i, :n] = w / total if total != 0.0 else w
        index[i, :n] = lo + np.arange(n)
        index[i, n:] = lo
    largest = weights.max()
    bits = 0
    while bits < MAX_PRECISION_BITS and int(0.5 + largest * (1 << (bits + 1))) < (1 << 15):
        bits += 1
    scaled = weights * (1 << bits)
    rounded = np.where(scaled < 0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5)).astype(np.int32)
    return index, rounded, bits


def resize_pass(image: np.ndarray, axis: int, out_size: int) -> np.ndarray:
    """One fixed-point pass of ``image`` (uint8, [H, W, C]) along ``axis`` to ``out_size``."""
    index, weights, bits = filter_taps(image.shape[axis], out_size)
    shape = [1] * image.ndim
    shape[axis] = out_size
    acc = np.full(image.shape[:axis] + (out_size,) + image.shape[axis + 1:], 1 << (bits - 1), np.int32)
    for k in range(index.shape[1]):
        acc += np.take(image, index[:, k], axis=axis).astype(np.int32) * weights[:, k].reshape(shape)
    return np.clip(acc >> bits, 0, 255).astype(np.uint8)


def resize_uint8(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An RGB image [H, W, 3] uint8 resized to ``size`` (height, width) as ``image_tensor`` does."""
    height, width = size
    if image.shape[1] != width:
        image = resize_pass(image, 1, width)
    if image.shape[0] != height:
        image = resize_pass(image, 0, height)
    return np.ascontiguousarray(image)
