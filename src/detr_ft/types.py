"""The types the data pipeline, the model and inference share, with no implementation behind them.

Classes (``Categories``), one image's objects (``ImageRecord``), the model's resize rule
(``ResizeSpec``), the box a padded object slot holds (``PAD_BOX``), the index of one
split that every reader returns (``DatasetIndex``) and one image's detections
(``ImageDetections``, in torch or NumPy). This module imports the standard
library and ``detr_ft.errors`` only, so ``model/`` and inference can name these types
without importing the readers, torch or Pillow.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

from detr_ft.errors import UserError

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from detr_ft.data.validation import DataReport

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
UNNORMALISED = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # (mean, std) of a processor with do_normalize False
MIN_IMAGE_SIDE = 32  # the smallest resize detr-ft accepts (a DETR backbone downsamples 32x)

# A padded object slot holds this box: finite and non-degenerate, so that any
# cost or loss computed on it stays finite (it is masked out afterwards anyway).
PAD_BOX = (0.5, 0.5, 1.0, 1.0)

# Detections kept per image by the sigmoid families' top-k: transformers' Conditional DETR default,
# and the most COCO evaluation counts (RT-DETR's processor keeps num_queries; with up to 100
# queries those are the top of these).
SIGMOID_TOP_K = 100

Array = TypeVar("Array")  # torch.Tensor or np.ndarray


@dataclass(frozen=True)
class Categories:
    """The dataset's classes: original ids and names, in contiguous-index order."""

    ids: tuple[int, ...]
    names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.ids)

    def index_of(self, category_id: int) -> int:
        return self.ids.index(category_id)

    @property
    def id2label(self) -> dict[int, str]:
        """Contiguous index -> name, as transformers configs store it."""
        return dict(enumerate(self.names))

    def to_dict(self) -> dict:
        return {"ids": list(self.ids), "names": list(self.names)}

    @classmethod
    def from_dict(cls, d: dict) -> "Categories":
        return cls(tuple(int(i) for i in d["ids"]), tuple(str(n) for n in d["names"]))


@dataclass
class ImageRecord:
    """One image and its objects.

    boxes:  [N, 4] float32, (x, y, w, h) in pixels of the image as displayed
            (EXIF orientation applied), as COCO stores them.
    labels: [N] int64, contiguous class indices.
    """

    image_id: int
    file_name: str
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray

    @property
    def num_objects(self) -> int:
        return len(self.labels)

    @property
    def aspect(self) -> float:
        """Height / width as displayed (> 1: portrait), from the JSON: no image decoded."""
        return self.height / self.width


@dataclass
class DatasetIndex:
    """All images of one split with their objects, and the categories: what every reader
    returns (``CocoIndex`` in data/coco.py, ``HfIndex`` in data/hf_dataset.py). The readers
    differ only in where pixels come from (``load_image``, ``image_bytes``) and in whether a
    COCO file stands behind them (``coco_annotations``)."""

    images_dir: Path
    annotation_file: Path
    categories: Categories
    records: list[ImageRecord]
    report: DataReport

    def __len__(self) -> int:
        return len(self.records)

    def object_counts(self) -> np.ndarray:
        import numpy as np  # here, not at the top: this module stays free of third-party imports

        return np.array([r.num_objects for r in self.records], dtype=np.int64)

    def image_path(self, record: ImageRecord) -> Path:
        return self.images_dir / record.file_name

    def load_image(self, record: ImageRecord) -> Image.Image:
        """The record's decoded RGB image (EXIF applied): the one place pixels come from."""
        raise NotImplementedError

    def image_bytes(self, record: ImageRecord) -> bytes:
        """The record's image as encoded (for hashing): here its file, ``image_path``."""
        return self.image_path(record).read_bytes()

    def coco_annotations(self) -> list | None:
        """The ``annotations`` list of the COCO file the index was read from, as written there
        (ids included, which records do not keep); None where the source is not a COCO file."""
        return None


@dataclass
class ImageDetections(Generic[Array]):
    """Detections of one image: boxes [N, 4] (x0, y0, x1, y1) pixels of the original
    image, scores [N], labels [N] contiguous class indices, category_ids [N] original ids.
    ``model/postprocess.Detections`` holds torch tensors, the torch-free ONNX runtime's
    ``NumpyDetections`` NumPy arrays."""

    boxes: Array
    scores: Array
    labels: Array
    category_ids: Array

    def select(self, keep):
        """The detections ``keep`` (a boolean mask or indices) picks, of the same type."""
        return type(self)(self.boxes[keep], self.scores[keep], self.labels[keep], self.category_ids[keep])


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
    def from_dict(cls, d: dict) -> "ResizeSpec":
        """From ``asdict(spec)`` after a JSON or checkpoint round trip (lists back to tuples; a missing
        ``fixed``, as files written before it was recorded, is None)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

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
