"""The family registry: one entry per transformers ``model_type`` that detr-ft trains.

An entry says how to run the family's forward and read its outputs, which loss
trains it, how its detections are scored, its tiny preset and the resize that
preset uses. Adding a family is one entry here (plus its preset in
``model/presets.py`` and its tests).

Losses:
  "softmax":      detr-ft's criterion, cross-entropy over C + 1 logits (the last: no object);
  "focal":        detr-ft's criterion, sigmoid focal loss over C logits;
  "transformers": transformers' own loss, fed the real objects only: the RT-DETR line's (varifocal or
                  matching-aware + denoising queries), LW-DETR's and RF-DETR's (IoU-aware sigmoid BCE
                  over Group-DETR query groups and the encoder's proposals).
Padded targets reach detr-ft's criterion (which ignores them); a transformers loss never sees them.

Scoring (post-processing): "softmax" (best real class per query) or "sigmoid" (top-k over
queries x classes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType

from torch import nn

from detr_ft.errors import UserError
from detr_ft.model import export_rewrites, outputs, presets
from detr_ft.types import MIN_IMAGE_SIDE, ResizeSpec


def base_model(model: nn.Module) -> list[nn.Module]:
    """What ``--compile`` compiles of most families: the base model (backbone, encoder, decoder)."""
    return [model.model]


def backbone_and_encoder(model: nn.Module) -> list[nn.Module]:
    """What ``--compile`` compiles of the RT-DETR line: its backbone and hybrid encoder, which see the
    canvas's shapes only. Its base model's forward also builds the training denoising queries from the
    batch's real objects (their number sets the decoder's shapes): compiled whole, it recompiled at
    nearly every step."""
    inner = model.model
    backbone = inner.conv_encoder if hasattr(inner, "conv_encoder") else inner.backbone  # DEIMv2: conv_encoder
    return [backbone, inner.encoder]


@dataclass(frozen=True)
class Family:
    """How detr-ft trains and runs one transformers ``model_type``.

    forward(model, pixel_values [B, 3, H, W], pixel_mask [B, H, W], with_aux) -> DetectionOutputs.
    loss_forward(model, pixel_values, pixel_mask, targets) -> (DetectionOutputs, losses):
        the forward with transformers' loss on the real objects (``loss == "transformers"`` only).
    processor: the transformers image processor class its directories carry.
    compile_parts(model) -> the modules ``--compile`` compiles (static shapes on a --pad canvas).
    canvas(config, height, width) -> (H, W): the canvas its forward takes for an image of that size
        (None: any size); detr-ft pads to it, a stock transformers forward (``detr-ft bench``) does not.
    encoder_tokens(config, height, width) -> int: the encoder tokens its two-stage decoder picks its
        ``num_queries`` from (None: no such limit); fewer than the queries fails inside transformers.
    export_rewrites: functions(model) that swap, into the model ``export --format onnx`` loads, equivalent
        forms of what ONNX cannot take (``model/export_rewrites.py``).
    loss_divides_by_local_objects: transformers' loss divides by this process's object count (no
        all-reduce): under DDP the engine rescales it to the count over all processes
        (``outputs.box_count_scale``). LW-DETR's and RF-DETR's all-reduce the count themselves.
    """

    model_type: str
    loss: str
    scoring: str
    forward: Callable
    preset: str
    preset_config: Callable
    resize: ResizeSpec
    processor: str
    loss_forward: Callable | None = None
    needs_transformers: str | None = None  # a version that has the family, where 4.57 lacks it
    # pretrained: a ResNet's stem and first stage stay frozen (the original DETR); False: the whole
    # backbone trains (LW-DETR's and RF-DETR's ViTs, as their originals fine-tune them)
    freezes_resnet_stem: bool = True
    compile_parts: Callable = base_model
    canvas: Callable | None = None
    encoder_tokens: Callable | None = None
    export_rewrites: tuple[Callable, ...] = ()
    loss_divides_by_local_objects: bool = False

    def require_available(self, what: str) -> None:
        """A ``UserError`` naming the transformers version the family needs, where the installed one lacks it."""
        import transformers
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

        if self.model_type not in CONFIG_MAPPING_NAMES:
            raise UserError(f"{what}: the {self.model_type} family needs transformers {self.needs_transformers} or "
                            f"newer (this is {transformers.__version__}); pip install -U "
                            f"'transformers>={self.needs_transformers}'")

    @property
    def has_no_object_class(self) -> bool:
        """True where the logits carry a last no-object class (softmax scoring): the stock loss can take
        targets padded with that class (the original example's object buckets); sigmoid families cannot."""
        return self.scoring == "softmax"

    def check_image_size(self, config, resize: ResizeSpec, what: str) -> None:
        """A one-line ``UserError`` (naming the family, the size and the smallest square size that works)
        where ``resize`` gives fewer encoder tokens than the model has queries; the smallest image
        it makes (``fixed``, or a square of its short side) decides."""
        if self.encoder_tokens is None:
            return
        height, width = resize.fixed or (resize.shortest, resize.shortest)
        queries = config.num_queries
        tokens = self.encoder_tokens(config, height, width)
        if tokens >= queries:
            return
        smallest = next(s for s in range(MIN_IMAGE_SIDE, 8193) if self.encoder_tokens(config, s, s) >= queries)
        raise UserError(f"{what}: a {self.model_type} model picks its {queries} queries among its encoder's "
                        f"tokens, and {height}x{width} gives {tokens}; the smallest size that works is "
                        f"{smallest} (--image-size {smallest})")

    @property
    def criterion_pads_targets(self) -> bool:
        """True where padded targets reach detr-ft's criterion (which ignores the padded slots);
        False where transformers' loss is fed the real objects only."""
        return self.loss != "transformers"


# What the entries of a line of families share (read-only).
RT_DETR_LINE = MappingProxyType(dict(
    loss_forward=outputs.rtdetr_forward, canvas=outputs.rtdetr_canvas_size, encoder_tokens=outputs.rtdetr_encoder_tokens,
    compile_parts=backbone_and_encoder, loss_divides_by_local_objects=True))
GROUP_DETR_LINE = MappingProxyType(dict(
    loss_forward=outputs.group_detr_forward, needs_transformers="5.18", freezes_resnet_stem=False,
    canvas=outputs.window_canvas_size, encoder_tokens=outputs.group_detr_encoder_tokens))

FAMILIES: tuple[Family, ...] = (
    Family("detr", "softmax", "softmax", outputs.detr_outputs, "detr-tiny", presets.detr_tiny,
           ResizeSpec(shortest=128, longest=192), "DetrImageProcessor"),
    Family("conditional_detr", "focal", "sigmoid", outputs.conditional_detr_outputs, "conditional-detr-tiny",
           presets.conditional_detr_tiny, ResizeSpec(shortest=96, longest=160), "ConditionalDetrImageProcessor"),
    Family("deformable_detr", "focal", "sigmoid", outputs.deformable_detr_outputs, "deformable-detr-tiny",
           presets.deformable_detr_tiny, ResizeSpec(shortest=96, longest=160), "DeformableDetrImageProcessor",
           export_rewrites=(export_rewrites.float32_reference_points,)),
    Family("dab-detr", "focal", "sigmoid", outputs.dab_detr_outputs, "dab-detr-tiny", presets.dab_detr_tiny,
           ResizeSpec(shortest=96, longest=160), "ConditionalDetrImageProcessor"),
    Family("rt_detr", "transformers", "sigmoid", outputs.rtdetr_outputs, "rtdetr-tiny", presets.rtdetr_tiny,
           ResizeSpec(shortest=96, longest=160), "RTDetrImageProcessor", **RT_DETR_LINE),
    Family("rt_detr_v2", "transformers", "sigmoid", outputs.rtdetr_outputs, "rtdetr-v2-tiny",
           presets.rtdetr_v2_tiny, ResizeSpec(shortest=96, longest=160), "RTDetrImageProcessor", **RT_DETR_LINE),
    Family("d_fine", "transformers", "sigmoid", outputs.rtdetr_outputs, "dfine-tiny", presets.dfine_tiny,
           ResizeSpec(shortest=96, longest=160), "RTDetrImageProcessor", **RT_DETR_LINE),
    Family("deimv2", "transformers", "sigmoid", outputs.rtdetr_outputs, "deimv2-tiny", presets.deimv2_tiny,
           ResizeSpec(shortest=96, longest=160), "RTDetrImageProcessor", needs_transformers="5.18", **RT_DETR_LINE),
    # windowed-ViT backbones: a fixed square size (a multiple of patch x windows, as their originals);
    # Deformable DETR's processor is LW-DETR's own, and does RF-DETR's (whose own needs torchvision)
    Family("lw_detr", "transformers", "sigmoid", outputs.group_detr_outputs, "lwdetr-tiny", presets.lwdetr_tiny,
           ResizeSpec.fixed_size(128, 128), "DeformableDetrImageProcessor", **GROUP_DETR_LINE),
    Family("rf_detr", "transformers", "sigmoid", outputs.group_detr_outputs, "rfdetr-tiny", presets.rfdetr_tiny,
           ResizeSpec.fixed_size(128, 128), "DeformableDetrImageProcessor", **GROUP_DETR_LINE,
           export_rewrites=(export_rewrites.constant_position_embeddings,)),
)

SUPPORTED_FAMILIES = tuple(f.model_type for f in FAMILIES)


def family_named(model_type: str) -> Family:
    """The entry of a ``model_type``; an unsupported one is a ``UserError`` listing the supported."""
    for family in FAMILIES:
        if family.model_type == model_type:
            return family
    raise UserError(f"a {model_type} model; detr-ft trains {', '.join(SUPPORTED_FAMILIES)} models "
                    f"(presets: {', '.join(f.preset for f in FAMILIES)})")


def family_of(model_or_config) -> Family:
    """The entry of a transformers model or config."""
    config = model_or_config.config if isinstance(model_or_config, nn.Module) else model_or_config
    return family_named(config.model_type)


def family_of_preset(name: str) -> Family | None:
    """The family whose tiny preset is ``name``, None if no preset has that name."""
    return next((f for f in FAMILIES if f.preset == name), None)
