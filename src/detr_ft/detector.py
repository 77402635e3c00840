"""Inference API: ``Detector.load(path).predict(images)``.

``path`` is a detr-ft checkpoint (``.ckpt``) or a Hugging Face model directory
(from ``detr-ft export``, or any DETR-family object-detection directory).
Images are PIL images, numpy arrays (H, W, 3) or file paths. Preprocessing and
post-processing are detr-ft's own and give what transformers'
``pipeline("object-detection")`` gives on the exported directory::

    from detr_ft import Detector

    detector = Detector.load("runs/train/last.ckpt")       # or an export directory
    for det in detector.predict("photo.jpg", threshold=0.5):
        print(det["label"], det["score"], det["box"])       # box: [x0, y0, x1, y1] pixels
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from detr_ft.data.batching import Batch, Collator
from detr_ft.data.coco import Categories
from detr_ft.data.dataset import Sample
from detr_ft.data.sampling import batches_by_shape
from detr_ft.data.transforms import ResizeSpec, displayed_size, load_image, resized_tensor, to_rgb
from detr_ft.devices import bf16_autocast, inference_device
from detr_ft.errors import UserError
from detr_ft.model.families import family_of
from detr_ft.model.outputs import detection_outputs
from detr_ft.model.postprocess import Detections, postprocess
from detr_ft.model.speed import channels_last_where_it_helps, fold_batch_norms


class Detector:
    """A fine-tuned detector with its preprocessing and class names.

    Made for inference: the model's batch norms are folded into its convolutions, which
    run channels-last on CPU and CUDA unless ``channels_last=False`` (``model/speed.py``);
    export from the checkpoint, not from ``Detector.model``. ``autocast=True`` runs the
    network under bf16 autocast (faster on GPUs and on CPUs with bf16 instructions; scores
    and boxes move by bf16 rounding).
    """

    def __init__(self, model, resize_spec: ResizeSpec, categories: Categories, device: str = "auto",
                 canvas: tuple[int, int] | None = None, channels_last: bool = True, autocast: bool = False):
        self.device = inference_device(device)
        self.autocast = autocast
        self.model = model.eval().to(self.device)
        fold_batch_norms(self.model)
        channels_last_where_it_helps(self.model, self.device, channels_last)
        self.resize = resize_spec
        self.categories = categories
        self.use_canvas(canvas)

    def use_canvas(self, canvas: tuple[int, int] | None, fill_to: int | None = None) -> None:
        """Pad every batch to a fixed (H, W) canvas (static shapes), or to the batch maximum (None);
        ``fill_to`` also fills short batches with blank images to a fixed batch size."""
        self.collator = Collator(self.resize.mean, self.resize.std, canvases=[canvas] if canvas else None,
                                 fill_to=fill_to)

    @classmethod
    def load(cls, path, device: str = "auto", canvas: tuple[int, int] | None = None,
             channels_last: bool = True, autocast: bool = False) -> "Detector":
        """A detector from a detr-ft checkpoint file or a Hugging Face model directory.

        device: auto (CUDA, then MPS, then CPU), cpu, cuda, hpu or mps.
        canvas: a fixed (H, W) to pad every batch to (static shapes), or None.
        channels_last: channels-last convolutions where they are faster (CPU, CUDA).
        autocast: bf16 autocast for the network.
        """
        path = Path(path).expanduser()
        if path.is_dir():
            from detr_ft.export import load_export

            model, resize_spec, categories = load_export(path)
        elif path.is_file():
            from detr_ft.checkpoint import model_from_checkpoint

            model, resize_spec, categories, _ = model_from_checkpoint(path)
        else:
            raise UserError(f"{path}: no such checkpoint file or model directory")
        return cls(model, resize_spec, categories, device=device, canvas=canvas, channels_last=channels_last,
                   autocast=autocast)

    def sample(self, image: Image.Image, image_id: int = 0) -> Sample:
        image = to_rgb(image)
        return Sample(resized_tensor(image, self.resize), torch.zeros(0, 4), torch.zeros(0, dtype=torch.long),
                      image_id, (image.height, image.width))

    def detect_samples(self, samples: list[Sample], threshold: float = 0.0) -> list[Detections]:
        return self.detect_batch(self.collator(samples).ready(self.device, non_blocking=True), threshold)

    @torch.inference_mode()
    def detect_batch(self, batch: Batch, threshold: float = 0.0) -> list[Detections]:
        """Detections above ``threshold`` for a batch on the device, normalised (``Batch.ready``)."""
        with bf16_autocast(self.device, self.autocast):
            out = detection_outputs(self.model, batch.pixel_values, batch.pixel_mask, with_aux=False)
        return postprocess(out.logits, out.boxes, batch.orig_sizes, self.categories, threshold,
                           scoring=family_of(self.model).scoring)

    def predict(self, images, threshold: float = 0.5, batch_size: int = 8) -> list:
        """Detect objects.

        images: one image or a list of them; each a PIL image, a numpy array
        [H, W, 3] (uint8, RGB) or a file path (EXIF orientation applied).
        Returns, per image, the detections above ``threshold`` by descending
        score: dicts with ``label`` (class name), ``category_id`` (the dataset's
        id), ``score`` and ``box`` [x0, y0, x1, y1] in pixels of the image. As
        transformers' pipeline: one image gives one list, a list gives a list of lists.
        """
        if not 0.0 <= threshold <= 1.0:
            raise UserError(f"threshold must be between 0 and 1 (got {threshold})")
        if batch_size < 1:
            raise UserError(f"batch_size must be at least 1 (got {batch_size})")
        single = not isinstance(images, (list, tuple))
        images = [images] if single else list(images)
        # Batches of like shape (a landscape and a portrait image would pad each other to a
        # square); the results go back in the order given.
        results: list = [None] * len(images)
        for ids in batches_by_shape([aspect_ratio(im) for im in images], batch_size):
            chunk = [as_image(images[i]) for i in ids]
            for i, dets in zip(ids, self.detect_samples([self.sample(im) for im in chunk], threshold)):
                results[i] = [
                    {"label": self.categories.names[lab], "category_id": cid, "score": s, "box": box}
                    for lab, cid, s, box in zip(dets.labels.tolist(), dets.category_ids.tolist(),
                                                dets.scores.tolist(), dets.boxes.tolist())
                ]
        return results[0] if single else results


def aspect_ratio(image) -> float:
    """Height / width of an image as displayed, from a file's header only (EXIF rotation
    counted); 1.0 where it cannot be told (``as_image`` then reports the problem)."""
    if isinstance(image, Image.Image):
        return image.height / image.width
    if isinstance(image, np.ndarray) and image.ndim in (2, 3) and image.shape[1]:
        return image.shape[0] / image.shape[1]
    if isinstance(image, (str, Path)):
        try:
            w, h = displayed_size(Path(image).expanduser())
            return h / w if w and h else 1.0
        except Exception:  # noqa: BLE001  (unreadable here: as_image raises the clear error)
            return 1.0
    return 1.0


def as_image(image) -> Image.Image:
    """A PIL image from a PIL image, a numpy array [H, W, 3] / [H, W] or a file path."""
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (str, Path)):
        return load_image(Path(image).expanduser())
    if isinstance(image, np.ndarray) and image.ndim in (2, 3):
        return Image.fromarray(image if image.dtype == np.uint8 else image.clip(0, 255).astype(np.uint8))
    raise UserError(f"predict: cannot read an image from a {type(image).__name__}; pass a PIL image, "
                    f"a numpy array [H, W, 3] or a file path")
