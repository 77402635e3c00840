"""The baseline: the original example's data path and transformers' own pipeline.

What a user of the original Gaudi example runs: ``DetrImageProcessor`` (another
family's own image processor for its models) per sample in a pycocotools dataset,
its collate (square canvas, targets padded to an object bucket where the family
has a no-object class), its bucketing pass, and ``pipeline("object-detection")``
for inference.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from detr_ft.bench.config import THRESHOLD


def stock_processor(resize, processor: str = "DetrImageProcessor"):
    """The family's image processor class (``Family.processor``; DETR's ``DetrImageProcessor`` by
    default) with the bench's resize, as a user of the original writes it: the one ``detr-ft export``
    saves. transformers 5 without torchvision gives its PIL-backed variant (``DetrImageProcessorPil``).
    """
    import warnings

    from detr_ft.export import image_processor_named

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return image_processor_named(processor, resize, "bench")


class StockCocoDetection(Dataset):
    """torchvision's ``CocoDetection`` (pycocotools index, PIL decode) with the original's
    ``__getitem__``: the processor per sample, (pixel_values [3, h, w], DETR target).

    Category ids are mapped to contiguous labels first (the original relied on
    CPPE-5's ids 1..5 and a spare class 0; the same model must serve both sides here).
    """

    def __init__(self, images_dir: Path, ann_file: Path, processor, label_of: dict[int, int], transform=None):
        from pycocotools.coco import COCO

        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.coco = COCO(str(ann_file))
        self.ids = sorted(self.coco.imgs)
        self.images_dir = Path(images_dir)
        self.processor = processor
        self.label_of = label_of
        self.transform = transform  # albumentations (``stock_augmentation``), or None

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, idx):
        from PIL import Image

        image_id = self.ids[idx]
        image = Image.open(self.images_dir / self.coco.loadImgs(image_id)[0]["file_name"]).convert("RGB")
        anns = [dict(a, category_id=self.label_of[a["category_id"]])
                for a in self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id))]
        resize = {}
        if self.transform is not None:  # as transformers' example: albumentations, then the processor
            out = self.transform(image=np.asarray(image), bboxes=[a["bbox"] for a in anns], idx=list(range(len(anns))))
            image = out["image"]
            anns = [dict(anns[int(i)], bbox=[float(v) for v in b], area=float(b[2] * b[3]))
                    for i, b in zip(out["idx"], out["bboxes"])]
            if self.transform.scales:  # multi-scale: the processor's resize at a drawn short side
                resize = {"size": {"shortest_edge": int(np.random.randint(self.transform.scales[0],
                                                                          self.transform.scales[1] + 1)),
                                   "longest_edge": self.transform.longest}}
        encoding = self.processor(images=image, annotations={"image_id": image_id, "annotations": anns},
                                  return_tensors="pt", **resize)
        return encoding["pixel_values"].squeeze(0), encoding["labels"][0]


def stock_augmentation(spec, resize):
    """albumentations doing what ``spec`` (an ``AugmentSpec``) does, for the stock side of ``bench
    --what data`` (None when ``spec`` does nothing): flip, crop from the borders (sides 1 to
    crop_min of the image's), zoom-out as an affine shrink and colour jitter, boxes dropped below
    ``min_visibility``; the multi-scale short side is the processor's resize, per call (``scales``)."""
    if not spec.geometric and not spec.scales and not spec.photometric:
        return StockFlip(spec.hflip) if spec.hflip else None
    try:
        import albumentations as A
    except ImportError:
        from detr_ft.errors import UserError

        raise UserError("bench --augment: the stock side augments with albumentations, as transformers' example "
                        "does; pip install 'detr-ft[albumentations]' (or use --augment none)") from None
    steps = [A.HorizontalFlip(p=spec.hflip)]
    if spec.zoom_out:
        steps.append(A.Affine(scale=(1 / spec.zoom_out_max, 1.0), p=spec.zoom_out))
    if spec.crop:
        side = (1 - spec.crop_min) / 2
        steps.append(A.RandomCropFromBorders(crop_left=side, crop_right=side, crop_top=side, crop_bottom=side,
                                             p=spec.crop))
    if spec.photometric:
        b, c, s, h = spec.jitter
        steps.append(A.ColorJitter(brightness=b, contrast=c, saturation=s, hue=h, p=spec.photometric))
    compose = A.Compose(steps, bbox_params=A.BboxParams(format="coco", label_fields=["idx"], clip=True,
                                                        min_visibility=spec.min_visibility))
    compose.scales, compose.longest = spec.scales, spec.envelope(resize).longest  # for the processor's resize
    return compose


class StockFlip:
    """A horizontal flip with albumentations' call signature (``--augment flip`` needs no albumentations)."""

    scales = None

    def __init__(self, p: float):
        self.p = p
        self.rng = np.random.default_rng()

    def __call__(self, image: np.ndarray, bboxes: list, idx: list) -> dict:
        if self.rng.random() >= self.p:
            return {"image": image, "bboxes": bboxes, "idx": idx}
        width = image.shape[1]
        return {"image": image[:, ::-1], "bboxes": [[width - x - w, y, w, h] for x, y, w, h in bboxes], "idx": idx}


def stock_pad(processor, pixel_values: list[torch.Tensor], canvas: tuple[int, int] | None):
    """The original collate's ``processor.pad`` -> (pixel_values [B, 3, H, W], pixel_mask [B, H, W]).

    transformers 4.x pads a list (the original's call); 5.x's ``pad`` takes one
    image, so the same library call runs per image: a NumPy array for the
    PIL-backed processor (``DetrImageProcessorPil``, no torchvision), a tensor
    for the torchvision-backed ``DetrImageProcessor``.
    """
    import inspect

    if "images" in inspect.signature(processor.pad).parameters:
        kwargs = {"pad_size": {"height": canvas[0], "width": canvas[1]}} if canvas else {}
        encoding = processor.pad(pixel_values, return_tensors="pt", **kwargs)
        return encoding["pixel_values"], encoding["pixel_mask"]
    size = canvas or (max(p.shape[1] for p in pixel_values), max(p.shape[2] for p in pixel_values))
    numpy_backend = type(processor).__name__.endswith("Pil")
    padded = [processor.pad(p.numpy() if numpy_backend else p, size)[:2] for p in pixel_values]
    return (torch.stack([torch.as_tensor(im) for im, _ in padded]),
            torch.stack([torch.as_tensor(mask) for _, mask in padded]))


class StockCollate:
    """The original ``collate_fn``: pad the pixels to the canvas and each target to its bucket.

    The original pads a target by appending class ``num_labels`` (the no-object
    index here) with a copy of its first box, area and iscrowd: objects that
    transformers' loss then matches and trains on (wrong without optimum-habana's
    patch); kept, as the baseline's cost. Two departures, both noted in the
    output: every target is padded (the original's loop pads only the last one of
    each batch, an indentation slip), and an image without objects gets a
    whole-image box to repeat (the original has none to copy and breaks).
    """

    def __init__(self, processor, canvas: tuple[int, int] | None, buckets: np.ndarray | None, pad_label: int):
        self.processor = processor
        self.canvas = canvas
        self.buckets = buckets
        self.pad_label = pad_label

    def __call__(self, batch) -> dict:
        pixel_values, pixel_mask = stock_pad(self.processor, [item[0] for item in batch], self.canvas)
        labels = [item[1] for item in batch]
        if self.buckets is not None and len(self.buckets):
            for item in labels:
                n = len(item["class_labels"])
                size = int(self.buckets[np.min(np.where(self.buckets >= n))])
                if n == 0:
                    item["boxes"] = torch.tensor([[0.5, 0.5, 1.0, 1.0]])
                    item["area"] = torch.ones(1)
                    item["iscrowd"] = torch.zeros(1, dtype=torch.int64)
                for _ in range(n, size):
                    item["class_labels"] = torch.cat((item["class_labels"], torch.as_tensor([self.pad_label])))
                    for key in ("boxes", "area", "iscrowd"):
                        if len(item[key]) < len(item["class_labels"]):
                            item[key] = torch.cat((item[key], item[key][0:1]))
        return {"pixel_values": pixel_values, "pixel_mask": pixel_mask, "labels": labels}


def stock_buckets(counts, num_buckets: int) -> np.ndarray:
    """The original ``bucketer``'s percentiles over per-image object counts."""
    return np.unique(np.percentile(counts, np.linspace(0, 100, num_buckets + 1), method="lower")[1:])


def _first(batch):
    return batch[0]


def stock_startup(images_dir: Path, ann_file: Path, processor, label_of: dict[int, int], workers: int):
    """The original's bucketing: a pycocotools index, then every image decoded through the processor."""
    dataset = StockCocoDetection(images_dir, ann_file, processor, label_of)
    loader = DataLoader(dataset, batch_size=1, num_workers=workers, collate_fn=_first)
    return stock_buckets([len(target["class_labels"]) for _, target in loader], 1)


def stock_labels(labels: list[dict], device: torch.device) -> list[dict]:
    """The original's ``common_step``: every target tensor moved to the device."""
    return [{k: v.to(device) for k, v in t.items()} for t in labels]


def stock_pipeline(export_dir: Path, device: torch.device):
    import warnings

    from transformers import pipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pipeline("object-detection", model=str(export_dir), device=device)


def pipeline_batch_size(pipe, paths: list[str], batch_size: int) -> int:
    """``batch_size`` if the pipeline runs batches of these images, else 1.

    transformers 5's object-detection pipeline cannot stack images of different
    sizes into one batch (its collate pads only the first dimension: a RuntimeError),
    nor unbatch LW-DETR's and RF-DETR's outputs (some keep a batch dimension of 1:
    an IndexError).
    """
    if batch_size == 1:
        return 1
    try:
        pipe(paths, threshold=THRESHOLD, batch_size=batch_size)
        return batch_size
    except (RuntimeError, IndexError):
        return 1
