"""detr-ft: fine-tune DETR-family object detectors on COCO-format data.

``from detr_ft import Detector`` is the inference API; it is imported on first
use, so ``import detr_ft`` stays light (no torch, no transformers).
"""

__version__ = "0.1.0"

from detr_ft.errors import UserError  # noqa: E402

__all__ = ["Detector", "UserError", "__version__"]


def __getattr__(name: str):
    if name == "Detector":
        from detr_ft.detector import Detector

        return Detector
    raise AttributeError(f"module 'detr_ft' has no attribute {name!r}")
