"""Run an exported ONNX detector with ONNX Runtime: ``OnnxDetector``, the ``Detector`` API
without torch (``Detector.load("model.onnx")`` returns one).

Preprocessing is detr-ft's own, in PIL + NumPy: the resize is ``transforms.resize_image``
(Pillow's BILINEAR, as in training), normalisation and padding to the model's canvas
are ``Collator`` + ``Batch.to_device_normalised``'s arithmetic in float32. Post-processing is
``model/postprocess.py``'s in NumPy: per image it costs well under 1 % of the
network's time (README, "Deploy with ONNX"), so it stays out of the graph.
This module imports neither torch nor transformers (only ``collator`` and
``detect_batch``, for ``detr-ft eval``'s torch data loader, touch torch).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from detr_ft.data.shape_plan import ShapePlan
from detr_ft.data.transforms import resize_image, to_rgb
from detr_ft.errors import UserError, first_line
from detr_ft.image_input import as_image, detection_dicts, predict_arguments
from detr_ft.onnx_export import (METADATA_BATCH, METADATA_CANVAS, METADATA_CATEGORIES, METADATA_FAMILY,
                                 METADATA_RESIZE, METADATA_THRESHOLDS, require_onnx)
from detr_ft.types import SIGMOID_TOP_K, Categories, ImageDetections, ResizeSpec


@dataclass
class NumpyDetections(ImageDetections["np.ndarray"]):
    """``ImageDetections`` in NumPy arrays: ``postprocess.Detections`` without torch."""


@dataclass
class ImageSample:
    """One image for ``detect_samples``: image [h, w, 3] uint8 resized by the model's rule,
    its id and (height, width) before resizing."""

    image: np.ndarray
    image_id: int
    orig_size: tuple[int, int]


@dataclass(frozen=True)
class OnnxInfo:
    """What an exported file's metadata says (``onnx_export.onnx_metadata``)."""

    family: str
    categories: Categories
    resize: ResizeSpec
    canvas: tuple[int, int]
    batch_size: int | None  # None: a dynamic batch axis
    thresholds: dict[int, float] | None


def read_info(metadata: dict[str, str], path: Path) -> OnnxInfo:
    """``OnnxInfo`` from a session's custom metadata; one line naming what is missing or wrong."""
    try:
        resize = json.loads(metadata[METADATA_RESIZE])  # asdict(ResizeSpec)
        thresholds = json.loads(metadata.get(METADATA_THRESHOLDS, "null"))
        return OnnxInfo(
            family=json.loads(metadata[METADATA_FAMILY]),
            categories=Categories.from_dict(json.loads(metadata[METADATA_CATEGORIES])),
            resize=ResizeSpec.from_dict(resize),
            canvas=tuple(int(v) for v in json.loads(metadata[METADATA_CANVAS])),
            batch_size=json.loads(metadata[METADATA_BATCH]),
            thresholds={int(k): float(v) for k, v in thresholds.items()} if thresholds else None,
        )
    except KeyError as e:
        raise UserError(f"{path}: no {e.args[0]} in its metadata; export it with 'detr-ft export --format onnx'") \
            from None
    except (ValueError, TypeError) as e:
        raise UserError(f"{path}: unreadable detr-ft metadata ({first_line(e)}); export it again") from None


def providers_for(device: str, available: list[str]) -> list[str]:
    """ONNX Runtime's execution providers for ``device``: CUDA's first where asked for
    (``cuda``) or present (``auto``), the CPU's always."""
    if device not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device {device}: ONNX Runtime runs on cpu or cuda (or auto)")
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise UserError("--device cuda: this onnxruntime has no CUDA provider; pip install onnxruntime-gpu, "
                        "or use --device cpu")
    cuda = device in ("auto", "cuda") and "CUDAExecutionProvider" in available
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]


class OnnxDetector:
    """A detector exported by ``detr-ft export --format onnx``, run by ONNX Runtime.

    The same API as ``Detector`` (``predict``, ``sample``, ``detect_samples``,
    ``detect_batch``, ``categories``, ``resize``), and the same detections as the
    checkpoint's ``Detector`` on the export's canvas (``canvas=resize.max_canvas``,
    ``predict --pad``). ``thresholds``: the per-class score thresholds the export carries, or None.
    """

    def __init__(self, path, device: str = "auto", threads: int | None = None):
        _, ort = require_onnx()
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise UserError(f"{self.path}: no such ONNX file")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        providers = providers_for(device, ort.get_available_providers())
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as e:  # noqa: BLE001  (ONNX Runtime raises its own types for a bad file)
            raise UserError(f"{self.path}: ONNX Runtime cannot load it ({first_line(e)}); pass a file written by "
                            f"'detr-ft export --format onnx'") from None
        self.info = read_info(self.session.get_modelmeta().custom_metadata_map, self.path)
        self.resize, self.categories = self.info.resize, self.info.categories
        self.thresholds = self.info.thresholds
        self.source = str(self.path)
        self.inputs = {i.name for i in self.session.get_inputs()}  # RT-DETR's graph has no pixel_mask input
        self.device_type = "cuda" if providers[0].startswith("CUDA") else "cpu"
        self.norm = np.array([self.resize.mean, self.resize.std], np.float32) * np.float32(255.0)

    @classmethod
    def load(cls, path, device: str = "auto", canvas: tuple[int, int] | None = None, threads: int | None = None,
             **_torch_only) -> "OnnxDetector":
        """``Detector.load``'s signature; ``channels_last``/``autocast`` do not apply to ONNX Runtime."""
        detector = cls(path, device=device, threads=threads)
        detector.use_canvas(canvas)
        return detector

    @property
    def device(self):
        """The torch device batches are prepared on (``detr-ft eval``'s loader): the host."""
        import torch

        return torch.device("cpu")

    @property
    def shapes(self) -> ShapePlan:
        """The export's canvas, for every batch (``data/shape_plan.py``)."""
        return ShapePlan.fixed(self.info.canvas)

    def use_shapes(self, plan: ShapePlan) -> None:
        """The canvas is the export's; a plan with another one is a mistake (the runtime fills
        batches to the export's batch size itself)."""
        canvas = plan.canvases[0] if plan.canvases else None
        if canvas is not None and (len(plan.canvases) > 1 or tuple(canvas) != self.info.canvas):
            raise UserError(f"{self.path}: exported at a {self.info.canvas[0]}x{self.info.canvas[1]} canvas, not "
                            f"{canvas[0]}x{canvas[1]}; export again with --pad-size {canvas[0]} {canvas[1]}")

    def use_canvas(self, canvas: tuple[int, int] | None, fill_to: int | None = None) -> None:
        """``Detector.use_canvas``: only the export's canvas (or None) is accepted."""
        self.use_shapes(ShapePlan.fixed(canvas, fill_to))

    @property
    def collator(self):
        """A torch ``Collator`` onto the export's canvas (``detr-ft eval``'s data loader)."""
        return self.shapes.collator(self.resize)

    def sample(self, image: Image.Image, image_id: int = 0) -> ImageSample:
        image = to_rgb(image)
        size = self.resize.output_size(image.height, image.width)
        return ImageSample(np.asarray(resize_image(image, size)), image_id, (image.height, image.width))

    def canvas_batch(self, samples: list[ImageSample]) -> tuple[np.ndarray, np.ndarray]:
        """pixel_values [B, 3, H, W] float32 normalised, 0 on padding, and pixel_mask [B, H, W]
        int64, as ``Collator`` + ``Batch.to_device_normalised`` make them."""
        H, W = self.info.canvas
        pixels = np.zeros((len(samples), 3, H, W), np.float32)
        mask = np.zeros((len(samples), H, W), np.int64)
        for i, s in enumerate(samples):
            h, w = s.image.shape[:2]
            if h > H or w > W:
                raise UserError(f"{self.path}: an image resized to {h}x{w} does not fit the export's {H}x{W} "
                                f"canvas; export with a larger --pad-size (default: the model's largest)")
            pixels[i, :, :h, :w] = s.image.transpose(2, 0, 1)
            mask[i, :h, :w] = 1
        mean, std = self.norm[0].reshape(1, 3, 1, 1), self.norm[1].reshape(1, 3, 1, 1)
        pixels = (pixels - mean) / std * mask[:, None].astype(np.float32)
        return pixels, mask

    def detect_samples(self, samples: list[ImageSample], threshold=0.0) -> list[NumpyDetections]:
        """Detections at a score ``threshold``, or "auto": each class's own (``self.thresholds``)."""
        per_class = np.array(self.class_thresholds(), np.float32) if threshold == "auto" else None
        pixels, mask = self.canvas_batch(samples)
        sizes = np.array([s.orig_size for s in samples], np.int64)
        found = self.detect_arrays(pixels, mask, sizes, 0.0 if per_class is not None else threshold)
        if per_class is None:
            return found
        # as Detector: a class's threshold is a detection score, so a score equal to it is kept
        keep = [d.scores >= per_class[d.labels] for d in found]
        return [d.select(k) for d, k in zip(found, keep)]

    def class_thresholds(self) -> list[float]:
        """The score threshold of each class in label order (the export's metadata, or
        ``Detector.load(thresholds=...)``); where there are none, a ``UserError`` saying how to get them."""
        from detr_ft.thresholds import for_classes, require

        return for_classes(require(self.thresholds, self.source), self.categories.ids)

    def detect_batch(self, batch, threshold: float = 0.0) -> list[NumpyDetections]:
        """Detections for a torch ``Batch`` made ready (normalised) on the export's canvas."""
        return self.detect_arrays(batch.pixel_values.numpy(), batch.pixel_mask.numpy().astype(np.int64),
                                  batch.orig_sizes.numpy(), threshold)

    def forward(self, pixels: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The network on any number of images: (logits, boxes), run in chunks of the export's
        batch size, the last one filled with blank images."""
        n, size = len(pixels), self.info.batch_size or len(pixels)
        logits, boxes = [], []
        for start in range(0, n, size):
            p, m = pixels[start:start + size], mask[start:start + size]
            if len(p) < size:
                p = np.concatenate([p, np.zeros((size - len(p),) + p.shape[1:], p.dtype)])
                m = np.concatenate([m, np.zeros((size - len(m),) + m.shape[1:], m.dtype)])
            feed = {"pixel_values": p, "pixel_mask": m}
            lo, bo = self.session.run(None, {k: v for k, v in feed.items() if k in self.inputs})
            logits.append(lo[: n - start])
            boxes.append(bo[: n - start])
        return np.concatenate(logits), np.concatenate(boxes)

    def detect_arrays(self, pixels: np.ndarray, mask: np.ndarray, orig_sizes: np.ndarray,
                      threshold: float = 0.0) -> list[NumpyDetections]:
        logits, boxes = self.forward(pixels, mask)
        return postprocess_numpy(logits, boxes, orig_sizes, self.categories, threshold)

    def predict(self, images, threshold=0.5, batch_size: int = 8) -> list:
        """``Detector.predict``: one image gives one list of detection dicts, a list a list of lists;
        ``threshold="auto"``: the per-class thresholds the export carries."""
        images, single = predict_arguments(images, threshold, batch_size, self)
        results = []
        for start in range(0, len(images), batch_size):  # one canvas for all: no grouping by shape
            samples = [self.sample(as_image(im)) for im in images[start:start + batch_size]]
            results += [detection_dicts(d, self.categories) for d in self.detect_samples(samples, threshold)]
        return results[0] if single else results


def postprocess_numpy(logits: np.ndarray, boxes: np.ndarray, orig_sizes: np.ndarray, categories: Categories,
                      threshold: float = 0.0, top_k: int = SIGMOID_TOP_K) -> list[NumpyDetections]:
    """``model.postprocess.postprocess`` in NumPy: logits [B, Q, C+1] (softmax, best real
    class per query) or [B, Q, C] (sigmoid, the ``top_k`` best (query, class) pairs), boxes
    [B, Q, 4] normalised (cx, cy, w, h), orig_sizes [B, 2] (h, w); per image the detections
    above ``threshold`` by descending score."""
    num_classes = len(categories.ids)
    logits = logits.astype(np.float32)
    if logits.shape[-1] == num_classes + 1:
        e = np.exp(logits - logits.max(-1, keepdims=True))
        probs = (e / e.sum(-1, keepdims=True))[..., :-1]
        labels = probs.argmax(-1)
        scores = np.take_along_axis(probs, labels[..., None], -1)[..., 0]
        query = np.broadcast_to(np.arange(logits.shape[1]), labels.shape)
    elif logits.shape[-1] == num_classes:
        probs = (1.0 / (1.0 + np.exp(-logits))).reshape(len(logits), -1)
        k = min(top_k, probs.shape[1])
        index = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        scores = np.take_along_axis(probs, index, 1)
        labels, query = index % num_classes, index // num_classes
    else:
        raise ValueError(f"logits have {logits.shape[-1]} classes; expected {num_classes} or {num_classes + 1}")
    h = orig_sizes[:, 0:1, None].astype(np.float32)
    w = orig_sizes[:, 1:2, None].astype(np.float32)
    cx, cy, bw, bh = np.moveaxis(boxes.astype(np.float32), -1, 0)
    xyxy = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1) * np.concatenate([w, h, w, h], -1)
    xyxy[..., 0::2] = np.minimum(np.maximum(xyxy[..., 0::2], 0), w)
    xyxy[..., 1::2] = np.minimum(np.maximum(xyxy[..., 1::2], 0), h)
    xyxy = np.take_along_axis(xyxy, query[..., None], 1)
    cat_ids = np.asarray(categories.ids, np.int64)
    results = []
    for i in range(len(logits)):
        kept = np.nonzero(scores[i] > threshold)[0]
        kept = kept[np.argsort(-scores[i][kept], kind="stable")]
        results.append(NumpyDetections(xyxy[i][kept], scores[i][kept], labels[i][kept], cat_ids[labels[i][kept]]))
    return results
