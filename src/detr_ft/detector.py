"""Inference API: ``Detector.load(path).predict(images)``.

``path`` is a detr-ft checkpoint (``.ckpt``) or a Hugging Face model directory
(e.g. from ``detr-ft export``). Images are PIL images or file paths.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from detr_ft.data.batching import Collator
from detr_ft.data.coco import Categories
from detr_ft.data.dataset import Sample
from detr_ft.data.transforms import ResizeSpec, load_image, resize, to_rgb, to_uint8_tensor
from detr_ft.errors import UserError
from detr_ft.model.outputs import detection_outputs
from detr_ft.model.postprocess import Detections, postprocess


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if hasattr(torch.backends, "mps") and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is visible; use --device cpu or auto")
    if device == "hpu":
        try:
            import habana_frameworks.torch.core  # noqa: F401
        except ImportError:
            raise UserError("--device hpu needs the Gaudi software stack and lightning-habana "
                            "(pip install 'detr-ft[hpu]')") from None
    return torch.device(device)


class Detector:
    """A fine-tuned detector with its preprocessing and class names."""

    def __init__(self, model, resize_spec: ResizeSpec, categories: Categories, device: str = "auto",
                 canvas: tuple[int, int] | None = None):
        self.device = pick_device(device)
        self.model = model.eval().to(self.device)
        self.resize = resize_spec
        self.categories = categories
        self.use_canvas(canvas)

    def use_canvas(self, canvas: tuple[int, int] | None) -> None:
        """Pad every batch to a fixed (H, W) canvas (static shapes), or to the batch maximum (None)."""
        self.collator = Collator(self.resize.mean, self.resize.std, canvases=[canvas] if canvas else None)

    @classmethod
    def load(cls, path, device: str = "auto", canvas: tuple[int, int] | None = None) -> "Detector":
        path = Path(path).expanduser()
        if path.is_dir():
            from detr_ft.export import load_export

            model, resize_spec, categories = load_export(path)
        else:
            from detr_ft.checkpoint import model_from_checkpoint

            model, resize_spec, categories, _ = model_from_checkpoint(path)
        return cls(model, resize_spec, categories, device=device, canvas=canvas)

    def sample(self, image: Image.Image, image_id: int = 0) -> Sample:
        image = to_rgb(image)
        resized = resize(image, self.resize)
        return Sample(to_uint8_tensor(resized), torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), image_id,
                      (image.height, image.width))

    @torch.inference_mode()
    def detect_samples(self, samples: list[Sample], threshold: float = 0.0) -> list[Detections]:
        batch = self.collator(samples).to(self.device, non_blocking=True)
        out = detection_outputs(self.model, batch.pixel_values, batch.pixel_mask, with_aux=False)
        return postprocess(out.logits, out.boxes, batch.orig_sizes, self.categories, threshold)

    def predict(self, images, threshold: float = 0.5, batch_size: int = 8) -> list[list[dict]]:
        """Detections per image: dicts with ``label`` (name), ``category_id``, ``score``,
        ``box`` [x0, y0, x1, y1] in pixels of the image."""
        if isinstance(images, (str, Path, Image.Image)):
            images = [images]
        results = []
        for start in range(0, len(images), batch_size):
            chunk = [load_image(Path(im)) if not isinstance(im, Image.Image) else im
                     for im in images[start:start + batch_size]]
            for dets in self.detect_samples([self.sample(im) for im in chunk], threshold):
                results.append([
                    {"label": self.categories.names[lab], "category_id": cid, "score": s, "box": box}
                    for lab, cid, s, box in zip(dets.labels.tolist(), dets.category_ids.tolist(),
                                                dets.scores.tolist(), dets.boxes.tolist())
                ])
        return results
