"""``--model`` -> a transformers detection model sized for the dataset's classes.

Accepts a preset name (random init, built from a config, offline), a local
directory in Hugging Face format, or a hub id. Fixes the backbone freezing so
it follows the original DETR on every transformers version: stem and first
ResNet stage frozen, later stages trained (at ``--lr-backbone``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from detr_ft.errors import UserError, first_line
from detr_ft.model.families import FAMILIES, family_named, family_of, family_of_preset
from detr_ft.types import UNNORMALISED, ResizeSpec

# Revision of facebook/detr-resnet-50 whose backbone is a transformers ResNet, so timm is not needed.
NO_TIMM_REVISION = {"facebook/detr-resnet-50": "no_timm", "facebook/detr-resnet-101": "no_timm"}
# The resize of DETR's image processor: short side 800, long side at most 1333.
DETR_RESIZE = ResizeSpec(shortest=800, longest=1333)


@dataclass
class ModelBundle:
    """A model with what the data pipeline needs to feed it."""

    model: nn.Module
    resize: ResizeSpec
    family: str  # transformers model_type: "detr", "conditional_detr", ...
    pretrained: bool


# name -> (config factory, resize), from the family registry. Small, randomly initialised, CPU-trainable.
PRESETS = {f.preset: (f.preset_config, f.resize) for f in FAMILIES}


def _label_kwargs(id2label: dict[int, str]) -> dict:
    return {"num_labels": len(id2label), "id2label": dict(id2label),
            "label2id": {v: k for k, v in id2label.items()}}


def portable_config(config: dict) -> dict:
    """A ``config.json`` dict that transformers 4.57 and 5.x both load, whichever wrote it.

    transformers 5 leaves out ``use_timm_backbone``/``backbone`` (whose 4.x defaults,
    timm's resnet50, contradict the saved ``backbone_config``) and 4.x writes
    ``dilation: null`` (which 5.x refuses): both are written out explicitly.
    """
    config = dict(config)
    if isinstance(config.get("backbone_config"), dict):
        config.setdefault("use_timm_backbone", False)
        config.setdefault("use_pretrained_backbone", False)
        config.setdefault("backbone", None)
    if "backbone_kwargs" in config and config["backbone_kwargs"] is None:
        del config["backbone_kwargs"]
    if "dilation" in config and config["dilation"] is None:
        config["dilation"] = False
    return config


def model_from_config(config) -> nn.Module:
    """A randomly initialised model of the config's family (no download)."""
    from transformers import AutoModelForObjectDetection

    if hasattr(config, "use_pretrained_backbone"):
        config.use_pretrained_backbone = False
    return AutoModelForObjectDetection.from_config(config)


def build_model(name: str, id2label: dict[int, str], revision: str | None = None) -> ModelBundle:
    """Build the model that ``--model NAME`` names, with a head for ``id2label``."""
    if name in PRESETS:
        family = family_of_preset(name)
        if family is not None:
            family.require_available(f"--model {name}")
        factory, resize = PRESETS[name]
        config = factory(len(id2label))
        config.update(_label_kwargs(id2label))
        model = model_from_config(config)
        unfreeze_batch_norm(model)
        set_backbone_trainable(model, pretrained=False)
        return ModelBundle(model, resize, config.model_type, pretrained=False)

    from transformers import AutoModelForObjectDetection

    local = Path(name).expanduser()
    kwargs = dict(_label_kwargs(id2label), ignore_mismatched_sizes=True)
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise UserError(f"--model {name}: directory has no config.json; pass a Hugging Face model directory "
                            f"(e.g. from 'detr-ft export') or a preset such as detr-tiny")
        source, kw = str(local), {}
        check_family(local, f"--model {name}")
    elif local.exists() or name.startswith((".", "/", "~")):
        raise UserError(f"--model {name}: not a directory; pass a Hugging Face model directory, a hub id or "
                        f"a preset ({', '.join(PRESETS)})")
    else:
        from detr_ft.hub import hub_unreachable

        unreachable = hub_unreachable()
        source, kw = name, {"revision": revision or NO_TIMM_REVISION.get(name), "local_files_only": bool(unreachable)}
        kw = {k: v for k, v in kw.items() if v}
    try:
        model = AutoModelForObjectDetection.from_pretrained(source, **kwargs, **kw)
    except ImportError as e:  # e.g. a timm backbone (microsoft/conditional-detr-resnet-50) without timm
        package = "timm" if "timm" in str(e).lower() else (e.name or "the package it names")
        raise UserError(f"--model {name}: this model needs {package}, which is not installed; "
                        f"pip install {package}") from None
    except (OSError, ValueError) as e:
        if local.is_dir():
            raise UserError(f"--model {name}: cannot load this directory ({first_line(e)})") from None
        if kw.get("local_files_only"):
            raise UserError(
                f"--model {name}: the Hugging Face hub is unreachable ({unreachable}) and the local cache does not "
                f"have this model; connect once to download it, or use --model DIR with a local Hugging Face "
                f"model directory, or --model detr-tiny (an offline preset)") from None
        raise UserError(
            f"--model {name}: cannot load from the Hugging Face hub (offline or unknown id); use "
            f"--model detr-tiny for an offline preset, or --model DIR with a local Hugging Face model directory"
        ) from None
    try:
        family_named(model.config.model_type)
    except UserError as e:  # a hub model: its config is known only now
        raise UserError(f"--model {name}: {e}") from None
    set_backbone_trainable(model, pretrained=True)
    model.train()  # from_pretrained returns eval mode, which would train with dropout off
    return ModelBundle(model, resize_from_processor(source, kw), model.config.model_type, pretrained=True)


def check_family(model_dir: Path, what: str) -> None:
    """Refuse a model directory of a family detr-ft does not train (yolos, owlv2, ...) before loading
    any weight: one line naming it and the supported families. An unreadable config.json is left
    to transformers' loader to report."""
    try:
        model_type = json.loads((model_dir / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return
    if model_type is not None:
        try:
            family = family_named(model_type)
        except UserError as e:
            raise UserError(f"{what}: {e}") from None
        family.require_available(what)


def resize_from_processor(source: str, kw: dict) -> ResizeSpec:
    """The resize and normalisation of the model's image processor config, DETR's if there is none.

    A ``size`` of height x width (the RT-DETR line's processors: 640 x 640) is a fixed resize that
    does not keep the aspect ratio; shortest/longest edges are DETR's rule. ``do_normalize`` False
    (the RT-DETR line) divides by 255 only; else the processor's mean and std (ImageNet's by default).
    A processor transformers cannot build here (RF-DETR's needs torchvision) is read from its
    ``preprocessor_config.json``; where that says no size either, a one-line warning names DETR's
    resize as the one assumed.
    """
    try:
        from transformers import AutoImageProcessor

        proc = AutoImageProcessor.from_pretrained(source, **kw)
    except Exception as e:  # no preprocessor_config.json (DETR's defaults), or a processor not buildable here
        settings = processor_settings(source, kw)
        if settings is None or not settings.get("size"):
            if settings is not None:  # a config, but no size read from it
                logging.getLogger("detr_ft").warning(
                    "%s: its image processor could not be read (%s); assuming DETR's resize: short side %d, long "
                    "side at most %d, ImageNet mean and std", source, first_line(e), DETR_RESIZE.shortest,
                    DETR_RESIZE.longest)
            return DETR_RESIZE
    else:
        settings = {key: getattr(proc, key, None) for key in ("size", "image_mean", "image_std")}
        settings["do_normalize"] = getattr(proc, "do_normalize", True)
    return resize_from_settings(settings)


def processor_settings(source: str, kw: dict) -> dict | None:
    """The model's ``preprocessor_config.json`` as a dict (a local directory's, or the hub's through its
    cache), without building the processor; None if there is none or it is unreadable."""
    local = Path(source).expanduser() / "preprocessor_config.json"
    try:
        if not local.is_file():
            from transformers.utils import cached_file

            found = cached_file(source, "preprocessor_config.json", revision=kw.get("revision"),
                                local_files_only=kw.get("local_files_only", False),
                                _raise_exceptions_for_missing_entries=False)
            if found is None:
                return None
            local = Path(found)
        settings = json.loads(local.read_text())
    except Exception:  # offline, unknown id, unreadable JSON: no settings
        return None
    return settings if isinstance(settings, dict) else None


def resize_from_settings(settings: dict) -> ResizeSpec:
    """``resize_from_processor``'s rule on a processor's ``size``, ``do_normalize``, ``image_mean`` and
    ``image_std`` (attributes or JSON keys; a bare number ``size`` is the short side, with ``max_size``)."""
    size = settings.get("size") or {}
    if isinstance(size, (int, float)):
        size = {"shortest_edge": int(size), "longest_edge": settings.get("max_size") or DETR_RESIZE.longest}

    def edge(key):  # a dict in transformers 4.x and in JSON, a SizeDict in 5.x
        return size.get(key) if isinstance(size, dict) else getattr(size, key, None)

    if settings.get("do_normalize", True):
        mean = tuple(settings.get("image_mean") or DETR_RESIZE.mean)
        std = tuple(settings.get("image_std") or DETR_RESIZE.std)
    else:
        mean, std = UNNORMALISED
    if edge("height") and edge("width") and not edge("shortest_edge"):
        return ResizeSpec.fixed_size(int(edge("height")), int(edge("width")), mean, std)
    shortest = edge("shortest_edge") or DETR_RESIZE.shortest
    longest = edge("longest_edge") or DETR_RESIZE.longest
    return ResizeSpec(int(shortest), int(longest), mean, std)


def backbone_module(model: nn.Module) -> nn.Module | None:
    """The backbone inside a DETR-family model (``model.model.backbone``; DEIMv2's is its conv
    encoder's ``model``, beside the input projections), if any: what ``--lr-backbone`` trains
    and the freezing rule reads."""
    inner = getattr(model, "model", model)
    if hasattr(inner, "backbone"):
        return inner.backbone
    return getattr(getattr(inner, "conv_encoder", None), "model", None)


def set_backbone_trainable(model: nn.Module, pretrained: bool) -> None:
    """Backbone freezing as the original DETR: stem and first stage frozen, the rest trained.

    transformers (4.57 and 5.x) means to do this but matches ``stage.1`` against
    parameter names that read ``stages.1`` and so freezes the whole ResNet. A
    randomly initialised backbone has nothing to keep: it is trained entirely, as is the ViT of a
    family that does not freeze a ResNet stem (LW-DETR, RF-DETR: the rule's ``conv1`` would hit their
    projector).
    """
    backbone = backbone_module(model)
    if backbone is None:
        return
    whole = not pretrained or not family_of(model).freezes_resnet_stem
    for name, p in backbone.named_parameters():
        if whole:
            p.requires_grad_(True)
        elif "embedder" in name or "stages.0." in name or "conv1" in name or "bn1" in name or "layer1." in name:
            p.requires_grad_(False)  # stem (transformers' embedder / timm's conv1, bn1) and first stage
        else:
            p.requires_grad_(True)


def unfreeze_batch_norm(model: nn.Module) -> None:
    """Replace frozen batch norms by trainable ones (random init has no statistics to keep)."""
    for parent in model.modules():
        for child_name, child in list(parent.named_children()):
            if type(child).__name__.endswith("FrozenBatchNorm2d"):
                bn = nn.BatchNorm2d(child.weight.shape[0])
                with torch.no_grad():
                    bn.weight.copy_(child.weight)
                    bn.bias.copy_(child.bias)
                    bn.running_mean.copy_(child.running_mean)
                    bn.running_var.copy_(child.running_var)
                setattr(parent, child_name, bn)
