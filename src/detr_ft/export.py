"""``detr-ft export``: a checkpoint -> a Hugging Face model directory.

The directory holds safetensors weights, a config whose ``id2label`` carries
the dataset's class names (and ``category_ids`` the original COCO ids), and
the image processor config with detr-ft's resize and normalisation, so that
``AutoModelForObjectDetection.from_pretrained(DIR)`` and
``pipeline("object-detection", model=DIR)`` load and run it.
"""

from __future__ import annotations

from pathlib import Path

from detr_ft.checkpoint import model_from_checkpoint
from detr_ft.data.coco import Categories
from detr_ft.data.transforms import ResizeSpec
from detr_ft.errors import UserError


def image_processor_for(family: str, resize: ResizeSpec):
    """The family's transformers image processor, configured like detr-ft's pipeline."""
    from transformers import AutoImageProcessor, AutoConfig  # noqa: F401

    kwargs = dict(size={"shortest_edge": resize.shortest, "longest_edge": resize.longest},
                  image_mean=list(resize.mean), image_std=list(resize.std), do_pad=True)
    if family == "conditional_detr":
        from transformers import ConditionalDetrImageProcessor as Proc
    else:
        from transformers import DetrImageProcessor as Proc
    return Proc(**kwargs)


def export(ckpt_path: str, out_dir: Path) -> Path:
    model, resize, categories, family = model_from_checkpoint(Path(ckpt_path).expanduser())
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "config.json").is_file():
        raise UserError(f"--out {out_dir}: folder exists and is not a model directory; choose an empty folder")
    model.config.id2label = categories.id2label
    model.config.label2id = {n: i for i, n in categories.id2label.items()}
    model.config.category_ids = list(categories.ids)
    model.save_pretrained(out_dir, safe_serialization=True)
    image_processor_for(family, resize).save_pretrained(out_dir)
    return out_dir


def load_export(path: Path):
    """(model, resize, categories) from a Hugging Face model directory."""
    from transformers import AutoModelForObjectDetection

    from detr_ft.model.build import resize_from_processor

    if not (Path(path) / "config.json").is_file():
        raise UserError(f"{path}: not a Hugging Face model directory (no config.json)")
    model = AutoModelForObjectDetection.from_pretrained(str(path))
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    ids = getattr(model.config, "category_ids", None) or sorted(id2label)
    categories = Categories(tuple(int(i) for i in ids), tuple(id2label[i] for i in sorted(id2label)))
    return model.eval(), resize_from_processor(str(path), {}), categories
