"""``detr-ft export``: a checkpoint -> a Hugging Face model directory.

The directory holds ``model.safetensors``, a ``config.json`` whose
``id2label``/``label2id`` carry the dataset's class names (and
``category_ids`` the original COCO ids), the image processor config with
detr-ft's resize and normalisation, and a short model card (``README.md``).
``AutoModelForObjectDetection.from_pretrained(DIR)``,
``pipeline("object-detection", model=DIR)`` and ``detr-ft train --model DIR``
load it, on transformers 4.57 and 5.x alike, whichever of the two wrote it.

Two details make that so:

- weights: a randomly initialised preset trains its backbone batch norms
  (``nn.BatchNorm2d``), which carry a ``num_batches_tracked`` counter that the
  family's own (frozen) batch norm does not have; only the keys the family's
  model has are written, so loading reports no unexpected or missing keys.
- config: transformers 5 leaves out ``use_timm_backbone``/``backbone`` (whose
  4.x defaults, timm's resnet50, contradict the saved ``backbone_config``) and
  4.x writes ``dilation: null`` (which 5.x refuses); both are written out
  explicitly (``model.build.portable_config``).
"""

from __future__ import annotations

import json
from pathlib import Path

from detr_ft.checkpoint import model_from_checkpoint
from detr_ft.errors import UserError, first_line
from detr_ft.model.build import portable_config
from detr_ft.types import Categories, ResizeSpec


def image_processor_for(model, resize: ResizeSpec):
    """The model family's transformers image processor, configured like detr-ft's preprocessing.

    The class is the family's (``model/families.py``: ``DetrImageProcessor``,
    ``RTDetrImageProcessor``, ...). Without torchvision, transformers 5 builds its
    PIL-backed variant (``DetrImageProcessorPil``) directly, as its
    ``AutoImageProcessor`` does; the saved ``image_processor_type`` is the
    family's base name either way, so any transformers version loads it.
    """
    from detr_ft.model.families import family_of

    return image_processor_named(family_of(model).processor, resize, f"export: {type(model).__name__}")


def image_processor_named(base: str, resize: ResizeSpec, what: str):
    """The transformers image processor class ``base`` (its PIL-backed variant without torchvision)
    configured with ``resize``; ``what`` starts the error where this transformers lacks it."""
    import transformers
    from transformers.utils import is_torchvision_available

    cls = getattr(transformers, base + "Pil", None) if not is_torchvision_available() else None
    cls = cls or getattr(transformers, base, None)
    if cls is None:
        raise UserError(f"{what}: transformers {transformers.__version__} has no image processor {base}")
    if resize.fixed is not None:
        size = {"height": resize.fixed[0], "width": resize.fixed[1]}
    else:
        size = {"shortest_edge": resize.shortest, "longest_edge": resize.longest}
    return cls(size=size, image_mean=list(resize.mean), image_std=list(resize.std), do_resize=True, do_rescale=True,
               do_normalize=resize.normalised, do_pad=True)


def exportable_state_dict(model) -> dict:
    """The model's weights restricted to the keys its family's own model has.

    Drops the ``num_batches_tracked`` counters of batch norms detr-ft made
    trainable; raises if the family's model would miss a weight.
    """
    import torch
    from transformers import AutoModelForObjectDetection

    with torch.device("meta"):
        reference = set(AutoModelForObjectDetection.from_config(model.config).state_dict())
    state = model.state_dict()
    missing = sorted(reference - set(state))
    if missing:
        raise RuntimeError(f"export: the model lacks {len(missing)} weights of its family, e.g. {missing[0]}")
    return {k: v for k, v in state.items() if k in reference}


def resize_text(resize: ResizeSpec) -> str:
    """The preprocessing in words, for the model card."""
    if resize.fixed is not None:
        text = f"Images are resized to {resize.fixed[0]} x {resize.fixed[1]} px (height x width, aspect ratio not kept)"
    else:
        text = (f"Images are resized to a short side of {resize.shortest} px\n"
                f"(long side at most {resize.longest} px)")
    if resize.normalised:
        return f"{text} and normalised with mean {list(resize.mean)},\nstd {list(resize.std)}"
    return f"{text}; pixels are divided by 255, not normalised"


def model_card(categories: Categories, family: str, resize: ResizeSpec) -> str:
    rows = "\n".join(f"| {i} | {cid} | {name} |" for i, (cid, name) in enumerate(zip(categories.ids, categories.names)))
    return f"""---
library_name: transformers
pipeline_tag: object-detection
tags: [object-detection, detr-ft, {family}]
---
# Object detector fine-tuned with detr-ft

A `{family}` model. {resize_text(resize)} (see `preprocessor_config.json`).

```python
from transformers import pipeline
detector = pipeline("object-detection", model="PATH_OR_HUB_ID")
detector("image.jpg", threshold=0.5)
```

or `from detr_ft import Detector; Detector.load("PATH").predict(["image.jpg"])`.

| label | COCO category id | name |
|---|---|---|
{rows}
"""


def export(ckpt_path: str, out_dir: Path, thresholds_file: str | None = None) -> Path:
    """Write the Hugging Face model directory of a detr-ft checkpoint into ``out_dir``; the
    per-class thresholds (``thresholds_file``, else the metrics.json beside the checkpoint)
    go into config.json as ``detr_ft_thresholds`` where there are any."""
    from detr_ft.thresholds import CONFIG_KEY, load_thresholds

    thresholds = load_thresholds(Path(ckpt_path).expanduser(), thresholds_file)
    model, resize, categories, family = model_from_checkpoint(Path(ckpt_path).expanduser())
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir}: is a file; choose a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "config.json").is_file():
        raise UserError(f"--out {out_dir}: folder exists and is not a model directory; choose an empty folder")
    model.config.id2label = categories.id2label
    model.config.label2id = {n: i for i, n in categories.id2label.items()}
    model.config.category_ids = list(categories.ids)
    if thresholds:
        setattr(model.config, CONFIG_KEY, {str(c): t for c, t in thresholds.items()})
    processor = image_processor_for(model, resize)  # before writing anything: fails early
    model.save_pretrained(out_dir, state_dict=exportable_state_dict(model))
    config_path = out_dir / "config.json"
    config_path.write_text(json.dumps(portable_config(json.loads(config_path.read_text())), indent=2,
                                      sort_keys=True) + "\n")
    processor.save_pretrained(out_dir)
    (out_dir / "README.md").write_text(model_card(categories, family, resize))
    return out_dir


def load_export(path: Path):
    """(model, resize, categories) from a Hugging Face model directory, in eval mode.

    Works for any DETR-family directory; class names come from ``id2label`` and
    COCO ids from ``category_ids`` where detr-ft wrote them (else 0..C-1).
    """
    from transformers import AutoModelForObjectDetection

    from detr_ft.model.build import check_family, resize_from_processor

    path = Path(path)
    if not (path / "config.json").is_file():
        raise UserError(f"{path}: not a Hugging Face model directory (no config.json); pass a detr-ft "
                        f"checkpoint (.ckpt) or a folder written by 'detr-ft export'")
    check_family(path, str(path))
    try:
        model = AutoModelForObjectDetection.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot load this model directory ({first_line(e)})") from None
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    ids = getattr(model.config, "category_ids", None) or sorted(id2label)
    if len(ids) != len(id2label):
        raise UserError(f"{path}/config.json: category_ids has {len(ids)} entries for {len(id2label)} labels")
    categories = Categories(tuple(int(i) for i in ids), tuple(id2label[i] for i in sorted(id2label)))
    return model.eval(), resize_from_processor(str(path), {}), categories
