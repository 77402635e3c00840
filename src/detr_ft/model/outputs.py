"""One forward pass -> the predictions the criterion and post-processing read.

``model/families.py`` says which of these runs a model (by ``model.config.model_type``):

- ``detr_outputs`` (DETR): transformers computes the auxiliary (intermediate
  decoder layer) predictions only when it computes its own loss; detr-ft runs
  the base model and applies the heads itself, so the loss is its own and works
  on padded targets. logits have C + 1 entries (the last is no-object).
- ``conditional_detr_outputs``: the same, with the box head's (x, y) shifted by
  the decoder's reference points before the sigmoid, exactly as
  ``ConditionalDetrForObjectDetection.forward`` does. logits have C entries
  (sigmoid focal loss, no no-object class).
- ``deformable_detr_outputs`` / ``dab_detr_outputs``: the base model, then
  the family's heads on every decoder layer, boxes relative to each layer's
  reference points (anchor boxes in DAB-DETR), as their transformers forwards;
  sigmoid focal loss, C logits.
- ``rtdetr_outputs`` / ``rtdetr_forward`` (the RT-DETR line: RT-DETR, RT-DETRv2,
  D-FINE, DEIMv2): transformers' own model and loss, fed the real objects only; they
  need them in their forward for the denoising queries. logits have C entries.
- ``group_detr_outputs`` / ``group_detr_forward`` (LW-DETR, RF-DETR): transformers' own
  model and loss (Group DETR query groups in training), fed the real objects only, on a
  canvas padded to what their windowed ViT backbones read. logits have C entries.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from detr_ft.model.speed import model_pixels


@dataclass
class DetectionOutputs:
    """logits [B, Q, C+1] (DETR: last = no object) or [B, Q, C] (sigmoid families),
    boxes [B, Q, 4] normalised (cx, cy, w, h) by the real (unpadded) image size,
    aux: one (logits, boxes) pair per intermediate decoder layer (own-criterion families)."""

    logits: torch.Tensor
    boxes: torch.Tensor
    aux: list[tuple[torch.Tensor, torch.Tensor]]


def detection_outputs(model: nn.Module, pixel_values: torch.Tensor, pixel_mask: torch.Tensor,
                      with_aux: bool = True) -> DetectionOutputs:
    """Forward a DETR-family model by its family's rule; aux outputs for all decoder layers but the last.

    pixel_values [B, 3, H, W], pixel_mask [B, H, W] (1 = real pixel).
    """
    from detr_ft.model.families import family_of  # the registry names this module's functions

    return family_of(model).forward(model, pixel_values, pixel_mask, with_aux)


def detr_outputs(model: nn.Module, pixel_values: torch.Tensor, pixel_mask: torch.Tensor,
                 with_aux: bool = True) -> DetectionOutputs:
    """DETR: the base model, then the class and box heads on the last decoder layer and
    (``with_aux``) on the intermediate ones."""
    out = model.model(pixel_values=model_pixels(model, pixel_values), pixel_mask=pixel_mask)
    return _heads(model, out, lambda hidden: model.bbox_predictor(hidden).sigmoid(), with_aux)


def conditional_detr_outputs(model: nn.Module, pixel_values: torch.Tensor, pixel_mask: torch.Tensor,
                             with_aux: bool = True) -> DetectionOutputs:
    """Conditional DETR: as DETR, the box head's (x, y) relative to the decoder's reference points."""
    out = model.model(pixel_values=model_pixels(model, pixel_values), pixel_mask=pixel_mask)
    reference = inverse_sigmoid(out.reference_points).transpose(0, 1)  # [Q, B, 2] -> [B, Q, 2]

    def boxes_of(hidden: torch.Tensor) -> torch.Tensor:  # [..., B, Q, D] -> [..., B, Q, 4]
        raw = model.bbox_predictor(hidden)
        return torch.cat([raw[..., :2] + reference, raw[..., 2:]], dim=-1).sigmoid()

    return _heads(model, out, boxes_of, with_aux)


def _heads(model: nn.Module, out, boxes_of, with_aux: bool) -> DetectionOutputs:
    """The class head and ``boxes_of`` on the last decoder layer's hidden states [B, Q, D] and,
    with ``with_aux``, on the intermediate layers'."""
    hidden = out.last_hidden_state  # [B, Q, D]
    logits, boxes = model.class_labels_classifier(hidden), boxes_of(hidden)
    aux = []
    inter = getattr(out, "intermediate_hidden_states", None)
    if with_aux and inter is not None and model.config.auxiliary_loss:
        inter = inter[:-1]  # [L-1, B, Q, D]
        aux_logits, aux_boxes = model.class_labels_classifier(inter), boxes_of(inter)
        aux = [(aux_logits[i], aux_boxes[i]) for i in range(inter.shape[0])]
    return DetectionOutputs(logits, boxes, aux)


def deformable_detr_outputs(model: nn.Module, pixel_values: torch.Tensor, pixel_mask: torch.Tensor,
                            with_aux: bool = True) -> DetectionOutputs:
    """Deformable DETR: one class and box head per decoder layer, boxes relative to that layer's
    reference points (4-d with box refinement, else 2-d), as ``DeformableDetrForObjectDetection.forward``."""
    out = model.model(pixel_values=model_pixels(model, pixel_values), pixel_mask=pixel_mask)
    hidden = out.intermediate_hidden_states  # [B, L, Q, D]
    num_layers = hidden.shape[1]
    layers = range(num_layers) if with_aux and model.config.auxiliary_loss else [num_layers - 1]
    pairs = []
    for level in layers:
        reference = out.init_reference_points if level == 0 else out.intermediate_reference_points[:, level - 1]
        reference = inverse_sigmoid(reference)
        delta = model.bbox_embed[level](hidden[:, level])
        if reference.shape[-1] == 4:
            raw = delta + reference
        else:
            raw = torch.cat([delta[..., :2] + reference, delta[..., 2:]], dim=-1)
        pairs.append((model.class_embed[level](hidden[:, level]), raw.sigmoid()))
    return DetectionOutputs(*pairs[-1], pairs[:-1])


def dab_detr_outputs(model: nn.Module, pixel_values: torch.Tensor, pixel_mask: torch.Tensor,
                     with_aux: bool = True) -> DetectionOutputs:
    """DAB-DETR: the shared heads on every decoder layer, the box head's first ``query_dim``
    coordinates relative to that layer's anchor boxes, as ``DabDetrForObjectDetection.forward``."""
    out = model.model(pixel_values=model_pixels(model, pixel_values), pixel_mask=pixel_mask)
    hidden, reference = out.intermediate_hidden_states, out.reference_points  # [L, B, Q, D], [L, B, Q, 4]
    if not (with_aux and model.config.auxiliary_loss):
        hidden, reference = hidden[-1:], reference[-1:]
    raw = model.bbox_predictor(hidden)
    dim = model.config.query_dim
    boxes = torch.cat([raw[..., :dim] + inverse_sigmoid(reference), raw[..., dim:]], dim=-1).sigmoid()
    logits = model.class_embed(hidden)
    return DetectionOutputs(logits[-1], boxes[-1], [(logits[i], boxes[i]) for i in range(len(hidden) - 1)])


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """log(x / (1 - x)) with x clamped to [0, 1] and both terms to at least ``eps`` (transformers' rule)."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


# --- the RT-DETR line (RT-DETR, RT-DETRv2, D-FINE) ---------------------------------------------------------------------


def _round_up(n: int, step: int) -> int:
    return math.ceil(n / step) * step


def _pad_to(pixel_values: torch.Tensor, pixel_mask: torch.Tensor, height: int, width: int):
    """The canvas padded at the bottom and right to ``height`` x ``width`` (padding masked out)."""
    pad = (0, width - pixel_values.shape[-1], 0, height - pixel_values.shape[-2])
    if not any(pad):
        return pixel_values, pixel_mask
    return F.pad(pixel_values, pad), F.pad(pixel_mask, pad)


def rtdetr_canvas_size(config, height: int, width: int) -> tuple[int, int]:
    """The canvas the RT-DETR line's forward takes for a ``height`` x ``width`` image: each side rounded
    up to a multiple of the largest feature stride (its feature pyramid needs it)."""
    stride = max(getattr(config, "feat_strides", None) or [32])
    return _round_up(height, stride), _round_up(width, stride)


def rtdetr_encoder_tokens(config, height: int, width: int) -> int:
    """Encoder tokens of the RT-DETR line for a ``height`` x ``width`` image: the cells of every feature
    level on its canvas (levels beyond ``feat_strides`` halve the last). Its decoder picks its
    ``num_queries`` among them, so there must be at least that many."""
    height, width = rtdetr_canvas_size(config, height, width)
    strides = list(getattr(config, "feat_strides", None) or [8, 16, 32])
    while len(strides) < getattr(config, "num_feature_levels", len(strides)):
        strides.append(strides[-1] * 2)
    return sum(math.ceil(height / s) * math.ceil(width / s) for s in strides)


def _rtdetr_canvas(model: nn.Module, pixel_values: torch.Tensor, pixel_mask: torch.Tensor):
    """Pad to a multiple of RT-DETR's largest stride (its feature pyramid needs it).

    Returns the padded pixel_values [B, 3, H', W'], pixel_mask [B, H', W'] and
    scale [B, 1, 4]: the real image's share of the canvas (w/W', h/H', w/W', h/H').
    RT-DETR ignores ``pixel_mask``: its boxes are normalised by the whole input
    canvas, while detr-ft's are normalised by the real image; ``scale`` maps one to the other.
    """
    pixel_values, pixel_mask = _pad_to(pixel_values, pixel_mask,
                                       *rtdetr_canvas_size(model.config, *pixel_values.shape[-2:]))
    mask = pixel_mask.bool()
    real_h = mask.any(2).sum(1).clamp(min=1).to(pixel_values.dtype)  # [B]
    real_w = mask.any(1).sum(1).clamp(min=1).to(pixel_values.dtype)
    sx, sy = real_w / pixel_values.shape[-1], real_h / pixel_values.shape[-2]
    scale = torch.stack([sx, sy, sx, sy], dim=-1)[:, None, :]
    return pixel_values, pixel_mask, scale


def rtdetr_outputs(model: nn.Module, pixel_values: torch.Tensor, pixel_mask: torch.Tensor,
                   with_aux: bool = True) -> DetectionOutputs:
    """The RT-DETR line's predictions of its Q regular queries (no aux: its loss is transformers')."""
    return rtdetr_forward(model, pixel_values, pixel_mask)[0]


def rtdetr_forward(model: nn.Module, pixel_values: torch.Tensor, pixel_mask: torch.Tensor,
                   targets: list[dict[str, torch.Tensor]] | None = None):
    """RT-DETR-line forward, with transformers' loss when ``targets`` (real objects only) are given.

    targets: per image {"class_labels": [N_i] long, "boxes": [N_i, 4] normalised by the real image}.
    Returns (DetectionOutputs of the Q regular queries, losses or None); in training
    the model also runs denoising queries, which only its loss reads.
    """
    pixel_values, pixel_mask, scale = _rtdetr_canvas(model, pixel_values, pixel_mask)
    labels = None
    if targets is not None:
        labels = [{"class_labels": t["class_labels"], "boxes": t["boxes"].to(scale.dtype) * scale[i]}
                  for i, t in enumerate(targets)]
    out = model(pixel_values=model_pixels(model, pixel_values), pixel_mask=pixel_mask, labels=labels)
    queries = model.config.num_queries  # in training the denoising queries come first: keep the last Q
    logits, boxes = out.logits[:, -queries:], out.pred_boxes[:, -queries:]
    boxes = boxes / scale.to(boxes.dtype)  # canvas frame -> real-image frame
    losses = None
    if targets is not None:
        parts = out.loss_dict
        # detr-ft logs loss_ce / loss_bbox / loss_giou of the final layer; the class loss is varifocal
        # (RT-DETR, RT-DETRv2, D-FINE) or matching-aware (DEIMv2).
        losses = {"loss": out.loss, **parts, "loss_ce": parts["loss_vfl" if "loss_vfl" in parts else "loss_mal"]}
    return DetectionOutputs(logits, boxes, []), losses


def transformers_loss(model: nn.Module, batch) -> tuple[DetectionOutputs, dict[str, torch.Tensor]]:
    """Forward a ``Batch`` with transformers' own loss on its real objects (``Batch.targets()``).

    Returns (outputs, {"loss", "loss_ce", "loss_bbox", "loss_giou", and transformers' loss_dict}).
    """
    from detr_ft.model.families import family_of

    family = family_of(model)
    if family.loss_forward is None:
        raise ValueError(f"transformers_loss: no transformers loss path for {family.model_type}")
    return family.loss_forward(model, batch.pixel_values, batch.pixel_mask, batch.targets())


def box_count_scale(local_objects: int, total_objects: float, processes: int) -> float:
    """The factor that turns a loss divided by this process's object count into one divided by the
    whole (all processes') batch's, once DDP averages the processes' gradients.

    transformers' RT-DETR-line losses divide each term by the process's own count, at least 1
    (``Family.loss_divides_by_local_objects``); the original implementations, and detr-ft's criterion,
    divide by the count over all processes. With ``max(n_p, 1) * W / max(N, 1)`` (n_p this process's
    real objects, N all processes', W processes) the mean over processes of the scaled losses is
    ``sum of every term / max(N, 1)``: one process's loss on the whole batch. Exact where every term
    divides by the objects (RT-DETR, RT-DETRv2; D-FINE outside training); D-FINE's distillation term
    (training only) averages over queries, and DEIMv2's box terms divide by the matched pairs of all
    layers: for those the factor weights each process by its share of the objects, an approximation
    (DEIMv2's loss within 0.5 % of the whole batch's in the test, against 5 % and more unscaled).
    """
    return max(local_objects, 1) * processes / max(total_objects, 1.0)


# --- the Group-DETR line (LW-DETR, RF-DETR) --------------------------------------------------------------------------


def _window_canvas(model: nn.Module, pixel_values: torch.Tensor, pixel_mask: torch.Tensor):
    """Pad the canvas (bottom and right, masked out) to a size the family's windowed ViT reads as images.

    LW-DETR splits the patch grid into ``num_windows_side`` x ``num_windows_side`` windows: height and
    width must be multiples of patch x side. RF-DETR splits it into ``num_windows`` x ``num_windows``
    windows ordered as if the grid were square (as the original, which only runs square images): on any
    other grid its windows mix rows and columns without an error, so its canvas is a square whose side
    is a multiple of patch x windows. One window: any size (nothing padded, as transformers' own
    processors feed it). Both read ``pixel_mask`` (valid ratios): boxes stay in the real image's frame.
    """
    return _pad_to(pixel_values, pixel_mask, *window_canvas_size(model.config, *pixel_values.shape[-2:]))


def _patch_size(config) -> int:
    patch = config.backbone_config.patch_size
    return patch if isinstance(patch, int) else max(patch)


def window_canvas_size(config, height: int, width: int) -> tuple[int, int]:
    """The canvas ``_window_canvas`` pads a ``height`` x ``width`` image to (LW-DETR, RF-DETR)."""
    backbone = config.backbone_config
    square = not hasattr(backbone, "num_windows_side")  # RF-DETR's DINOv2: num_windows per side
    side = backbone.num_windows if square else backbone.num_windows_side
    if side <= 1:
        return height, width
    step = _patch_size(config) * side
    new_h, new_w = _round_up(height, step), _round_up(width, step)
    return (max(new_h, new_w),) * 2 if square else (new_h, new_w)


def group_detr_encoder_tokens(config, height: int, width: int) -> int:
    """Encoder tokens of LW-DETR / RF-DETR for a ``height`` x ``width`` image: the patch grid of its
    window canvas at every projector scale (RF-DETR: one, at the patch stride). Its two-stage decoder
    picks its ``num_queries`` among them (per query group), so there must be at least that many."""
    height, width = window_canvas_size(config, height, width)
    rows, cols = height // _patch_size(config), width // _patch_size(config)
    scales = getattr(config, "projector_scale_factors", None) or [1.0]
    return sum(math.ceil(rows * s) * math.ceil(cols * s) for s in scales)


@contextmanager
def _one_group_outside_training(model: nn.Module):
    """transformers' LW-DETR loss builds its criterion in training mode, so it matches ``group_detr``
    query groups even on an eval forward, which runs one: there the loss reads ``group_detr`` 1."""
    groups = model.config.group_detr
    if not model.training:
        model.config.group_detr = 1
    try:
        yield
    finally:
        model.config.group_detr = groups


def group_detr_outputs(model: nn.Module, pixel_values: torch.Tensor, pixel_mask: torch.Tensor,
                       with_aux: bool = True) -> DetectionOutputs:
    """LW-DETR / RF-DETR: ``group_detr_forward`` without targets (no aux: transformers' loss reads them)."""
    return group_detr_forward(model, pixel_values, pixel_mask)[0]


def group_detr_forward(model: nn.Module, pixel_values: torch.Tensor, pixel_mask: torch.Tensor, targets=None):
    """(predictions of the first Q queries, transformers' losses or None) of LW-DETR / RF-DETR.

    ``targets`` as ``rtdetr_forward``'s: the real objects only, boxes in the real image's frame. In
    training the model runs ``group_detr`` groups of Q queries (Group DETR), each matched to the
    objects on its own by its loss (IoU-aware sigmoid BCE, L1 and GIoU, on every decoder layer and
    the encoder's proposals); the first group is the one inference runs.
    """
    pixel_values, pixel_mask = _window_canvas(model, pixel_values, pixel_mask)
    labels = None
    if targets is not None:
        labels = [{"class_labels": t["class_labels"], "boxes": t["boxes"].to(pixel_values.dtype)} for t in targets]
    with _one_group_outside_training(model):
        out = model(pixel_values=model_pixels(model, pixel_values), pixel_mask=pixel_mask, labels=labels)
    queries = model.config.num_queries
    losses = None if targets is None else {"loss": out.loss, **out.loss_dict}
    return DetectionOutputs(out.logits[:, :queries], out.pred_boxes[:, :queries], []), losses
