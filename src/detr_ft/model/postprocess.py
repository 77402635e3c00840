"""Model outputs -> detections in original pixels and original category ids.

The family's ``scoring`` (``model/families.py``) picks the rule:
"softmax": best class per query (transformers' ``DetrImageProcessor``);
"sigmoid": top-k over queries x classes (Conditional DETR's and RT-DETR's
transformers post-processors).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from detr_ft.types import SIGMOID_TOP_K, Categories, ImageDetections


@dataclass
class Detections(ImageDetections["torch.Tensor"]):
    """``ImageDetections`` in torch tensors (on the host)."""


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def postprocess(logits: torch.Tensor, boxes: torch.Tensor, orig_sizes: torch.Tensor,
                categories: Categories, threshold: float = 0.0, top_k: int = SIGMOID_TOP_K, *,
                scoring: str) -> list[Detections]:
    """Detections per image, by the model family's own transformers post-processing.

    scoring "softmax": logits [B, Q, C+1], softmax, best real class per query;
    scoring "sigmoid": logits [B, Q, C], sigmoid, the ``top_k`` best (query, class) pairs
    (the family's ``scoring``; logits of another width for the C categories are a ValueError).
    boxes [B, Q, 4] normalised (cx, cy, w, h), orig_sizes [B, 2] (h, w).
    Keeps detections whose score is above ``threshold``, sorted by score.
    """
    num_classes = len(categories.ids)
    width = num_classes + 1 if scoring == "softmax" else num_classes
    if logits.shape[-1] != width:
        raise ValueError(f"logits have {logits.shape[-1]} classes; expected {width} ({scoring} scoring) "
                         f"for the {num_classes} categories")
    if scoring == "softmax":
        scores, labels, query = _softmax_scores(logits)
    else:
        scores, labels, query = _sigmoid_topk_scores(logits, top_k)
    h, w = orig_sizes[:, 0:1].float(), orig_sizes[:, 1:2].float()
    scale = torch.stack([w, h, w, h], dim=-1)  # [B, 1, 4]
    xyxy = cxcywh_to_xyxy(boxes.float()) * scale
    xyxy[..., 0::2] = xyxy[..., 0::2].clamp(min=0).minimum(w.unsqueeze(-1))
    xyxy[..., 1::2] = xyxy[..., 1::2].clamp(min=0).minimum(h.unsqueeze(-1))
    xyxy = xyxy.gather(1, query[..., None].expand(-1, -1, 4))  # [B, K, 4], one row per detection
    # The selection per image runs on the host, after one copy of each tensor for the whole batch:
    # on a GPU each boolean index and each copy of a selection waits for the device.
    scores, labels, xyxy = scores.cpu(), labels.cpu(), xyxy.cpu()
    cat_ids = torch.tensor(categories.ids, dtype=torch.long)
    results = []
    for i in range(logits.shape[0]):
        kept = (scores[i] > threshold).nonzero().squeeze(1)
        kept = kept[scores[i][kept].argsort(descending=True, stable=True)]
        lab = labels[i][kept]
        results.append(Detections(xyxy[i][kept], scores[i][kept], lab, cat_ids[lab]))
    return results


def _softmax_scores(logits: torch.Tensor):
    """DETR: softmax over C+1, drop no-object, best class per query. Each [B, Q]."""
    probs = logits.float().softmax(-1)[..., :-1]
    scores, labels = probs.max(-1)
    query = torch.arange(logits.shape[1], device=logits.device).expand_as(labels)
    return scores, labels, query


def _sigmoid_topk_scores(logits: torch.Tensor, top_k: int):
    """Conditional DETR / RT-DETR: sigmoid per class, the top-k over queries x classes
    (a query may give several classes). scores, labels, query: [B, K], K = min(top_k, Q*C)."""
    num_classes = logits.shape[-1]
    probs = logits.float().sigmoid().flatten(1)  # [B, Q*C]
    scores, index = probs.topk(min(top_k, probs.shape[1]), dim=1)
    return scores, index % num_classes, torch.div(index, num_classes, rounding_mode="floor")


def to_coco_results(dets: Detections, image_id: int) -> list[dict]:
    """COCO results format: image_id, category_id, bbox [x, y, w, h] pixels, score."""
    out = []
    for (x0, y0, x1, y1), s, c in zip(dets.boxes.tolist(), dets.scores.tolist(), dets.category_ids.tolist()):
        out.append({"image_id": int(image_id), "category_id": int(c),
                    "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                    "score": round(float(s), 5)})
    return out
