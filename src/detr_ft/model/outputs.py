"""One forward pass -> the predictions the criterion and post-processing read.

transformers computes the auxiliary (intermediate decoder layer) predictions
only when it computes its own loss; detr-ft runs the base model and applies
the heads itself, so the loss is its own and works on padded targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class DetectionOutputs:
    """logits [B, Q, C+1] (last = no object), boxes [B, Q, 4] normalised (cx, cy, w, h),
    aux: one (logits, boxes) pair per intermediate decoder layer."""

    logits: torch.Tensor
    boxes: torch.Tensor
    aux: list[tuple[torch.Tensor, torch.Tensor]]


def detection_outputs(model: nn.Module, pixel_values: torch.Tensor, pixel_mask: torch.Tensor,
                      with_aux: bool = True) -> DetectionOutputs:
    """Forward a DETR model; aux outputs for all decoder layers but the last."""
    out = model.model(pixel_values=pixel_values, pixel_mask=pixel_mask)
    hidden = out.last_hidden_state
    logits = model.class_labels_classifier(hidden)
    boxes = model.bbox_predictor(hidden).sigmoid()
    aux = []
    inter = getattr(out, "intermediate_hidden_states", None)
    if with_aux and inter is not None and model.config.auxiliary_loss:
        inter = inter[:-1]  # [L-1, B, Q, D]
        aux_logits = model.class_labels_classifier(inter)
        aux_boxes = model.bbox_predictor(inter).sigmoid()
        aux = [(aux_logits[i], aux_boxes[i]) for i in range(inter.shape[0])]
    return DetectionOutputs(logits, boxes, aux)
