"""detr-ft: fine-tune DETR-family object detectors on COCO-format data."""

__version__ = "0.1.0"

from detr_ft.errors import UserError  # noqa: E402

__all__ = ["UserError", "__version__"]
