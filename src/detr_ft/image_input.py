"""The images ``predict`` accepts, and the detections it returns, for both runtimes
(``Detector``: PyTorch, ``OnnxDetector``: ONNX Runtime). Neither torch nor transformers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from detr_ft.data.transforms import displayed_size, load_image
from detr_ft.errors import UserError
from detr_ft.types import Categories


def predict_arguments(images, threshold, batch_size: int, detector) -> tuple[list, bool]:
    """``predict``'s arguments checked before any image is read (one line for a mistake; for
    ``threshold="auto"``, the detector's ``class_thresholds()`` says where there are none):
    (the images as a list, whether one image was given)."""
    from detr_ft.thresholds import check_threshold

    check_threshold(threshold, "threshold")
    if threshold == "auto":
        detector.class_thresholds()
    if batch_size < 1:
        raise UserError(f"batch_size must be at least 1 (got {batch_size})")
    single = not isinstance(images, (list, tuple))
    return ([images] if single else list(images)), single


def detection_dicts(dets, categories: Categories) -> list[dict]:
    """One image's ``Detections`` (torch tensors or NumPy arrays) as ``predict`` returns them:
    dicts with ``label``, ``category_id``, ``score`` and ``box`` [x0, y0, x1, y1] pixels."""
    return [{"label": categories.names[lab], "category_id": cid, "score": s, "box": box}
            for lab, cid, s, box in zip(dets.labels.tolist(), dets.category_ids.tolist(), dets.scores.tolist(),
                                        dets.boxes.tolist())]


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
