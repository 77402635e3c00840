"""The static-shape plan: how every batch is shaped, decided once and handed to each mode.

Graph compilers (torch.compile, HPU graphs, CUDA graphs) compile once per input shape, so a
batch's shape is a setting, not an accident: its canvas (height x width), its object slots
and its batch size. A ``ShapePlan`` holds those decisions; training builds it from the flags
and the dataset (``for_training``), inference from ``predict --pad`` or a canvas
(``for_inference``, ``fixed``), and the data module, ``Detector``, ``eval``, ``predict``
and the bench read the collator and the batch order from it rather than deciding them.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from detr_ft.data.padding import compute_buckets, pad_canvases, padded_pixel_fraction
from detr_ft.errors import UserError

if TYPE_CHECKING:
    from detr_ft.config import TrainConfig
    from detr_ft.data.augment import AugmentSpec
    from detr_ft.data.batching import Collator
    from detr_ft.types import DatasetIndex, ResizeSpec

Canvas = tuple[int, int]


@dataclasses.dataclass(frozen=True)
class ShapePlan:
    """How batches are shaped.

    canvases: fixed (H, W) canvases; a batch goes on the smallest that holds its images.
              None: each batch is padded to its own largest image (dynamic shapes).
    buckets:  object-count buckets for the targets' slots; empty: the batch's largest count.
    fill_to:  a short batch is filled with blank images to this size (a static batch size
              where the last batch cannot be dropped: validation, inference), or None.
    """

    canvases: tuple[Canvas, ...] | None = None
    buckets: tuple[int, ...] = ()
    fill_to: int | None = None

    @classmethod
    def fixed(cls, canvas: Canvas | None, fill_to: int | None = None) -> "ShapePlan":
        """Every batch on one ``canvas`` (None: dynamic shapes)."""
        return cls((tuple(canvas),) if canvas else None, (), fill_to)

    @classmethod
    def for_inference(cls, resize: "ResizeSpec", pad: bool, batch_size: int) -> "ShapePlan":
        """``predict --pad``: every batch on the largest canvas the resize produces, filled to
        ``batch_size`` (one shape for the whole run); else each batch padded to its largest image."""
        return cls.fixed(resize.max_canvas, fill_to=batch_size) if pad else cls()

    @classmethod
    def for_training(cls, cfg: "TrainConfig", resize: "ResizeSpec", augment: "AugmentSpec",
                     train_index: "DatasetIndex", val_index: "DatasetIndex | None") -> "ShapePlan":
        """The canvases of ``--pad`` (``--pad-canvases``, ``--pad-size``) for the augmentation's
        largest scale, checked to hold every training image; the ``--num-buckets`` object buckets
        (the top one also holds the validation split's largest count); validation batches filled
        to ``--batch-size`` with ``--pad``."""
        envelope = augment.envelope(resize)
        buckets = compute_buckets(train_index.object_counts(), cfg.num_buckets)
        if buckets and val_index is not None and len(val_index):
            buckets[-1] = max(buckets[-1], int(val_index.object_counts().max()))
        if not cfg.pad:
            return cls(None, tuple(buckets), None)
        canvases = pad_canvases(envelope, cfg.pad_canvases, cfg.pad_size)
        check_canvases(cfg.pad_size, canvases, largest_sizes(train_index.records, envelope, augment.geometric),
                       envelope)
        return cls(tuple(map(tuple, canvases)), tuple(buckets), cfg.batch_size)

    @property
    def static(self) -> bool:
        """Fixed canvases: one compiled variant per canvas."""
        return self.canvases is not None

    @property
    def like_shape_batches(self) -> bool:
        """Whether batches hold images of like aspect (``ShapeBatchSampler``): without canvases
        (each batch pads to its largest image) or with one canvas per orientation; one canvas
        holds every image, so any order does."""
        return self.canvases is None or len(self.canvases) > 1

    def collator(self, resize: "ResizeSpec", fill: bool = True) -> "Collator":
        """The ``Collator`` that makes batches of this shape, normalising as ``resize`` says;
        ``fill=False`` for training, which drops a short last batch instead of filling it."""
        from detr_ft.data.batching import Collator

        return Collator(resize.mean, resize.std, canvases=list(self.canvases) if self.canvases else None,
                        buckets=list(self.buckets), fill_to=self.fill_to if fill else None)

    def inference_batches(self, aspects: list[float], batch_size: int) -> list[list[int]]:
        """The batches of eval, predict and ``Detector.predict`` (indices into ``aspects``, each
        image's height / width): sorted by aspect ratio, so that each batch pads its images to
        little more than their own size and none mixes orientations."""
        from detr_ft.data.sampling import aspect_sorted_batches

        return aspect_sorted_batches(aspects, batch_size)

    def padded_fraction(self, sizes: list[Canvas]) -> float | None:
        """The share of canvas pixels that are padding over images of these (resized) sizes;
        None without canvases (the batches decide: ``batching.batch_padding_fraction``)."""
        return padded_pixel_fraction(sizes, list(self.canvases)) if self.canvases else None


def largest_sizes(records, envelope: "ResizeSpec", geometric: bool) -> list[Canvas]:
    """The largest (height, width) training can give each record's image: resized at the envelope's
    scale, or, when crops or zoom-outs change the aspect (``geometric``), the envelope's bound
    for the record's orientation (short x long or long x short; a square image may give either).
    A fixed-size rule gives every image its size, crops and zoom-outs included."""
    if envelope.fixed is not None:
        return [envelope.fixed] * len(records)
    if not geometric:
        return [envelope.output_size(r.height, r.width) for r in records]
    short, long = envelope.shortest, envelope.longest
    return [(long, short) if r.height > r.width else (short, long) for r in records]


def check_canvases(pad_size, canvases: list[Canvas], sizes: list[Canvas], envelope: "ResizeSpec") -> None:
    """Every training image must fit a canvas (one of its orientation's with --pad-canvases auto)."""
    if not canvases or not sizes:
        return
    too_big = [(h, w) for h, w in sizes if not any(ch >= h and cw >= w for ch, cw in canvases)]
    if too_big:
        h, w = max(too_big, key=lambda s: s[0] * s[1])
        raise UserError(f"--pad-size {' '.join(map(str, pad_size or []))}: the canvas {canvases[0][0]}x"
                        f"{canvases[0][1]} is smaller than a training image of {h}x{w} (resize short "
                        f"{envelope.shortest} / long {envelope.longest}, augmentation included); use a canvas of at "
                        f"least {max(s[0] for s in sizes)}x{max(s[1] for s in sizes)} or drop --pad-size")
