"""``--model`` -> a transformers detection model sized for the dataset's classes.

Accepts a preset name (random init, built from a config, offline), a local
directory in Hugging Face format, or a hub id. Fixes the backbone freezing so
it follows the original DETR on every transformers version: stem and first
ResNet stage frozen, later stages trained (at ``--lr-backbone``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from detr_ft.data.transforms import ResizeSpec
from detr_ft.errors import UserError, first_line
from detr_ft.model.outputs import SUPPORTED_FAMILIES

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


def _tiny_resnet(hidden_sizes=(32, 64, 128, 256), out_features=("stage4",)):
    from transformers import ResNetConfig

    return ResNetConfig(embedding_size=32, hidden_sizes=list(hidden_sizes), depths=[1, 1, 1, 1],
                        layer_type="basic", out_features=list(out_features))


def _detr_tiny_config(num_labels: int):
    from transformers import DetrConfig

    return DetrConfig(
        use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=_tiny_resnet(),
        d_model=128, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=256, decoder_ffn_dim=256, num_queries=20, dropout=0.0, auxiliary_loss=True,
        num_labels=num_labels,
    )


def _conditional_detr_tiny_config(num_labels: int):
    """Conditional DETR (sigmoid focal loss, conditional cross-attention) on stride-8 features."""
    from transformers import ConditionalDetrConfig

    return ConditionalDetrConfig(
        use_timm_backbone=False, use_pretrained_backbone=False, backbone=None,
        backbone_config=_tiny_resnet((32, 64, 128, 256), out_features=("stage2",)),
        d_model=128, encoder_layers=2, decoder_layers=3, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=256, decoder_ffn_dim=256, num_queries=30, dropout=0.0, auxiliary_loss=True,
        num_labels=num_labels,
    )


def _rtdetr_tiny_config(num_labels: int):
    """RT-DETR: a basic-block ResNet (strides 8, 16, 32), hybrid encoder, 3 decoder layers, 30 queries.

    Trainable batch norms (random init), PyTorch deformable attention (no custom kernels).
    10 denoising queries: on the demo's data they learned faster per CPU-second than 30.
    """
    from transformers import RTDetrConfig, RTDetrResNetConfig

    channels = [32, 64, 128, 192]
    backbone = RTDetrResNetConfig(embedding_size=32, hidden_sizes=channels, depths=[1, 1, 1, 1], layer_type="basic",
                                  out_features=["stage2", "stage3", "stage4"])
    return RTDetrConfig(
        backbone_config=backbone, use_pretrained_backbone=False, freeze_backbone_batch_norms=False,
        disable_custom_kernels=True, encoder_in_channels=channels[1:], feat_strides=[8, 16, 32],
        encoder_hidden_dim=128, encoder_layers=1, encoder_ffn_dim=256, encoder_attention_heads=4,
        d_model=128, decoder_in_channels=[128, 128, 128], decoder_layers=3, decoder_ffn_dim=256,
        decoder_attention_heads=4, num_queries=30, num_denoising=10, num_labels=num_labels,
    )


# name -> (config factory, resize). Small, randomly initialised, CPU-trainable.
PRESETS = {
    "detr-tiny": (_detr_tiny_config, ResizeSpec(shortest=128, longest=192)),
    "conditional-detr-tiny": (_conditional_detr_tiny_config, ResizeSpec(shortest=96, longest=160)),
    "rtdetr-tiny": (_rtdetr_tiny_config, ResizeSpec(shortest=96, longest=160)),
}


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
    if model.config.model_type not in SUPPORTED_FAMILIES:
        raise UserError(f"--model {name}: a {model.config.model_type} model; detr-ft trains "
                        f"{', '.join(SUPPORTED_FAMILIES)} models (a hub id, a local directory or a preset: "
                        f"{', '.join(PRESETS)})")
    set_backbone_trainable(model, pretrained=True)
    model.train()  # from_pretrained returns eval mode, which would train with dropout off
    return ModelBundle(model, resize_from_processor(source, kw), model.config.model_type, pretrained=True)


def resize_from_processor(source: str, kw: dict) -> ResizeSpec:
    """The resize rule from the model's image processor config, DETR's own if there is none."""
    try:
        from transformers import AutoImageProcessor

        proc = AutoImageProcessor.from_pretrained(source, **kw)
    except Exception:  # no preprocessor_config.json: DETR's defaults
        return DETR_RESIZE
    size = getattr(proc, "size", None) or {}

    def edge(key):  # a dict in transformers 4.x, a SizeDict in 5.x
        return size.get(key) if isinstance(size, dict) else getattr(size, key, None)

    shortest = edge("shortest_edge") or DETR_RESIZE.shortest
    longest = edge("longest_edge") or DETR_RESIZE.longest
    mean = tuple(getattr(proc, "image_mean", None) or DETR_RESIZE.mean)
    std = tuple(getattr(proc, "image_std", None) or DETR_RESIZE.std)
    return ResizeSpec(int(shortest), int(longest), mean, std)


def backbone_module(model: nn.Module) -> nn.Module | None:
    """The ResNet inside a DETR-family model (``model.model.backbone``), if any."""
    inner = getattr(model, "model", model)
    return getattr(inner, "backbone", None)


def set_backbone_trainable(model: nn.Module, pretrained: bool) -> None:
    """Backbone freezing as the original DETR: stem and first stage frozen, the rest trained.

    transformers (4.57 and 5.x) means to do this but matches ``stage.1`` against
    parameter names that read ``stages.1`` and so freezes the whole ResNet. A
    randomly initialised backbone has nothing to keep: it is trained entirely.
    """
    backbone = backbone_module(model)
    if backbone is None:
        return
    for name, p in backbone.named_parameters():
        if not pretrained:
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
