"""DETR's set criterion over padded targets.

Same losses and weighting as transformers' DETR loss (``ForObjectDetectionLoss``):
weighted cross-entropy with a down-weighted no-object class, L1 and GIoU on
matched pairs normalised by the number of real boxes, repeated on the
auxiliary decoder layers. Targets come as the padded [B, T] tensors of
``detr_ft.data.batching.Batch``; every tensor in the loss graph has a static
shape, and the matching of all layers costs one device-to-host copy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.image_transforms import center_to_corners_format

from detr_ft.model.box_ops import generalized_box_iou
from detr_ft.model.matcher import FocalHungarianMatcher, HungarianMatcher
from detr_ft.model.families import family_of
from detr_ft.types import PAD_BOX

LayerOutput = tuple[Tensor, Tensor] | Mapping[str, Tensor]


def _upcast(t: Tensor) -> Tensor:
    """float16 / bfloat16 -> float32; float32 and float64 unchanged."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _layer_pair(output: LayerOutput) -> tuple[Tensor, Tensor]:
    """(logits, pred_boxes) from a tuple or from transformers' {"logits", "pred_boxes"} dict."""
    if isinstance(output, Mapping):
        return output["logits"], output["pred_boxes"]
    logits, pred_boxes = output
    return logits, pred_boxes


def _weight_dict(config) -> dict[str, float]:
    """Per-layer loss weights as transformers sets them (loss_ce always 1)."""
    return {"loss_ce": 1.0, "loss_bbox": config.bbox_loss_coefficient, "loss_giou": config.giou_loss_coefficient}


class _Match(NamedTuple):
    """Every layer's matching and the loss normalisers: src_idx / matched [L, B, T] from the
    matcher (slot t of image b takes query src_idx where matched), num_boxes and ce_weight_sum
    (``SetCriterion._normalisers``)."""

    src_idx: Tensor
    matched: Tensor
    num_boxes: Tensor
    ce_weight_sum: Tensor


class SetCriterion(nn.Module):
    """Hungarian-matched DETR loss.

    num_classes: real classes C; logits have C + 1 entries, the last is no-object.
    eos_coef:    cross-entropy weight of the no-object class.
    weight_dict: weights of loss_ce / loss_bbox / loss_giou in the total (applied
                 to every layer, as transformers does).
    aux_loss:    whether ``aux_outputs`` are used.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        eos_coef: float = 0.1,
        weight_dict: Mapping[str, float] | None = None,
        aux_loss: bool = True,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.eos_coef = eos_coef
        self.weight_dict = dict(weight_dict or {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0})
        self.aux_loss = aux_loss
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight, persistent=False)
        self.register_buffer("pad_box", torch.tensor(PAD_BOX), persistent=False)

    @classmethod
    def from_config(cls, config) -> "SetCriterion":
        """Build from a transformers ``DetrConfig`` (costs, coefficients, num_labels, auxiliary_loss).

        A focal family's config (``ConditionalDetrConfig``) gives a ``FocalSetCriterion``, as transformers does;
        the two differ in their matcher and their class option (``eos_coefficient``, ``focal_alpha``).
        """
        if family_of(config).loss == "focal":  # as transformers' DeformableDetr loss
            kind, matcher_type, class_option = FocalSetCriterion, FocalHungarianMatcher, config.focal_alpha
        else:
            kind, matcher_type, class_option = cls, HungarianMatcher, config.eos_coefficient
        matcher = matcher_type(config.class_cost, config.bbox_cost, config.giou_cost)
        return kind(config.num_labels, matcher, class_option, weight_dict=_weight_dict(config),
                    aux_loss=config.auxiliary_loss)

    def forward(
        self,
        logits: Tensor,
        pred_boxes: Tensor,
        labels: Tensor,
        boxes: Tensor,
        valid: Tensor,
        aux_outputs: Sequence[LayerOutput] | None = None,
    ) -> dict[str, Tensor]:
        """Compute the losses.

        logits:      [B, Q, C+1] final-layer class logits.
        pred_boxes:  [B, Q, 4] final-layer boxes, (cx, cy, w, h) normalised.
        labels:      [B, T] long; boxes: [B, T, 4]; valid: [B, T] bool (padded slots are ignored).
        aux_outputs: intermediate decoder layers, first to last, each (logits, pred_boxes)
                     or {"logits": ..., "pred_boxes": ...}; used when ``aux_loss``.

        Returns {"loss", "loss_ce", "loss_bbox", "loss_giou", "cardinality_error"} and,
        for aux layer i, the same keys suffixed "_{i}" (transformers' loss_dict names).
        "loss" is the weighted sum over all layers; cardinality errors are detached.
        """
        layers = [(logits, pred_boxes)]
        if self.aux_loss and aux_outputs:
            layers += [_layer_pair(output) for output in aux_outputs]
        # Every layer at once, [L, B, Q, ...]: one kernel per loss term rather than one per term
        # and layer (on a GPU the loss is launch-bound while the device waits for it).
        all_logits = torch.stack([lg for lg, _ in layers])
        all_boxes = torch.stack([bx for _, bx in layers])

        # Match every layer in one go: one cost tensor [L, B, Q, T], one copy to the host.
        src_idx, matched = self.matcher(all_logits.detach(), all_boxes.detach(), labels, boxes, valid)
        match = _Match(src_idx, matched, *self._normalisers(valid, matched[0], logits.shape[1]))

        parts = self._losses(all_logits, all_boxes, labels, boxes, valid, match)
        total = sum(parts[k] * w for k, w in self.weight_dict.items()).sum()
        losses: dict[str, Tensor] = {}
        for i in range(len(layers)):  # transformers' names: final layer plain, aux layer i suffixed
            suffix = "" if i == 0 else f"_{i - 1}"
            losses.update({k + suffix: v[i] for k, v in parts.items()})
        return {"loss": total, **losses}

    def _losses(self, logits: Tensor, pred_boxes: Tensor, labels: Tensor, boxes: Tensor, valid: Tensor,
                match: _Match) -> dict[str, Tensor]:
        """Each loss per layer, [L]; logits [L, B, Q, K], pred_boxes [L, B, Q, 4], targets [B, T]
        shared by all layers, ``match`` every layer's."""
        src_idx, matched, num_boxes, ce_weight_sum = match
        logits = _upcast(logits)
        num_layers, batch_size, num_queries = logits.shape[:3]

        # Classification: every query is no-object except the matched ones. Unmatched slots
        # scatter into an extra dump column Q, dropped afterwards, so indices never collide.
        target_classes = torch.full(
            (num_layers, batch_size, num_queries + 1), self.num_classes, dtype=torch.long, device=logits.device
        )
        target_classes.scatter_(
            -1,
            torch.where(matched, src_idx, num_queries),
            torch.where(matched, labels, self.num_classes),
        )
        loss_ce = self._loss_ce(logits, target_classes[..., :num_queries], num_boxes, ce_weight_sum)

        # Boxes: gather the matched query's box for every slot; unmatched slots compare a
        # fixed finite box with itself (zero loss, zero and finite gradient).
        src_boxes = _upcast(pred_boxes).gather(2, src_idx[..., None].expand(-1, -1, -1, 4))  # [L, B, T, 4]
        pad_box = self.pad_box.to(src_boxes)
        src_boxes = torch.where(matched[..., None], src_boxes, pad_box)
        tgt_boxes = torch.where(matched[..., None], boxes.to(src_boxes.dtype), pad_box)
        l1 = (src_boxes - tgt_boxes).abs().sum(-1)  # [L, B, T]
        giou = 1 - generalized_box_iou(center_to_corners_format(src_boxes), center_to_corners_format(tgt_boxes))
        loss_bbox = torch.where(matched, l1, 0).sum((1, 2)) / num_boxes
        loss_giou = torch.where(matched, giou, 0).sum((1, 2)) / num_boxes

        return {
            "loss_ce": loss_ce,
            "loss_bbox": loss_bbox,
            "loss_giou": loss_giou,
            "cardinality_error": self._cardinality_error(logits, valid),
        }

    def _loss_ce(self, logits: Tensor, target_classes: Tensor, num_boxes: Tensor, ce_weight_sum: Tensor) -> Tensor:
        """Weighted cross-entropy per layer [L]; logits [L, B, Q, C+1], target_classes [L, B, Q]
        (C = no-object).

        The weighted sum over queries divided by the sum of the weights — transformers'
        weighted mean in one process; under DDP the weight sum is averaged over processes
        (like ``num_boxes``), so the averaged gradients equal one process's over the
        global batch."""
        ce = F.cross_entropy(logits.flatten(0, 1).transpose(1, 2), target_classes.flatten(0, 1),
                             self.empty_weight.to(logits), reduction="none")  # [L * B, Q], weighted
        return ce.unflatten(0, logits.shape[:2]).sum((1, 2)) / ce_weight_sum

    @staticmethod
    @torch.no_grad()
    def _cardinality_error(logits: Tensor, valid: Tensor) -> Tensor:
        """Per layer [L]: mean |#queries not predicting no-object - #real objects| per image (logging only)."""
        num_pred = (logits.argmax(-1) != logits.shape[-1] - 1).sum(-1)  # [L, B]
        return (num_pred - valid.sum(1)).abs().float().mean(-1)

    def _normalisers(self, valid: Tensor, matched: Tensor, num_queries: int) -> tuple[Tensor, Tensor]:
        """(num_boxes, ce_weight_sum), each averaged over processes in one all-reduce.

        num_boxes: real boxes (at least 1). ce_weight_sum: the cross-entropy weights of
        all queries' targets — 1 per matched query, eos_coef for every other one (every
        decoder layer matches the same number of queries, so one value serves them all).
        """
        n_matched = matched.sum().float()
        stats = torch.stack([valid.sum().float(),
                             self.eos_coef * (num_queries * valid.shape[0] - n_matched) + n_matched])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats)
            stats = stats / dist.get_world_size()
        return stats[0].clamp(min=1), stats[1]


class FocalSetCriterion(SetCriterion):
    """Conditional DETR's criterion: sigmoid focal loss over C classes, no no-object logit.

    logits are [B, Q, C]; a query matched to nothing has an all-zero one-hot target.
    loss_ce = sum of focal terms over queries and classes / num_boxes, as transformers
    computes it (its weight stays 1: transformers ignores ``cls_loss_coefficient``).
    """

    def __init__(self, num_classes: int, matcher: FocalHungarianMatcher, focal_alpha: float = 0.25, **options):
        """``options``: ``SetCriterion``'s ``weight_dict`` and ``aux_loss``; no ``eos_coef`` (no no-object class)."""
        super().__init__(num_classes, matcher, eos_coef=1.0, **options)
        self.focal_alpha = focal_alpha

    def _loss_ce(self, logits: Tensor, target_classes: Tensor, num_boxes: Tensor, ce_weight_sum: Tensor) -> Tensor:
        """Sigmoid focal loss per layer [L]; logits [L, B, Q, C], target_classes [L, B, Q] (C = no object).

        transformers' ``sigmoid_focal_loss`` reduces over every dimension, so its terms are
        written out here, to be summed per layer: alpha_t * BCE * (1 - p_t) ** gamma."""
        onehot = F.one_hot(target_classes, self.num_classes + 1)[..., :-1].to(logits.dtype)
        prob = logits.sigmoid()
        bce = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
        p_t = prob * onehot + (1 - prob) * (1 - onehot)
        alpha_t = self.focal_alpha * onehot + (1 - self.focal_alpha) * (1 - onehot)
        return (alpha_t * bce * (1 - p_t) ** 2).sum((1, 2, 3)) / num_boxes

    @staticmethod
    @torch.no_grad()
    def _cardinality_error(logits: Tensor, valid: Tensor) -> Tensor:
        """Per layer [L]: mean |#queries with some class probability > 0.5 - #real objects| per image (logging only)."""
        num_pred = (logits.max(-1).values > 0).sum(-1)  # [L, B]
        return (num_pred - valid.sum(1)).abs().float().mean(-1)
