"""Model outputs -> detections in original pixels and original category ids."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from detr_ft.data.coco import Categories


@dataclass
class Detections:
    """Detections of one image: boxes [N, 4] (x0, y0, x1, y1) pixels of the original
    image, scores [N], labels [N] contiguous class indices, category_ids [N] original ids."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    category_ids: torch.Tensor


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def postprocess(logits: torch.Tensor, boxes: torch.Tensor, orig_sizes: torch.Tensor,
                categories: Categories, threshold: float = 0.0) -> list[Detections]:
    """DETR's post-processing: softmax over classes, best real class per query.

    logits [B, Q, C+1], boxes [B, Q, 4] normalised (cx, cy, w, h), orig_sizes [B, 2] (h, w).
    Keeps queries whose score is above ``threshold``, sorted by score.
    """
    probs = logits.float().softmax(-1)[..., :-1]
    scores, labels = probs.max(-1)
    h, w = orig_sizes[:, 0:1].float(), orig_sizes[:, 1:2].float()
    scale = torch.stack([w, h, w, h], dim=-1)  # [B, 1, 4]
    xyxy = cxcywh_to_xyxy(boxes.float()) * scale
    xyxy[..., 0::2] = xyxy[..., 0::2].clamp(min=0).minimum(w.unsqueeze(-1))
    xyxy[..., 1::2] = xyxy[..., 1::2].clamp(min=0).minimum(h.unsqueeze(-1))
    cat_ids = torch.tensor(categories.ids, dtype=torch.long, device=labels.device)
    results = []
    for i in range(logits.shape[0]):
        keep = scores[i] > threshold
        order = scores[i][keep].argsort(descending=True)
        s, lab, b = scores[i][keep][order], labels[i][keep][order], xyxy[i][keep][order]
        results.append(Detections(b.cpu(), s.cpu(), lab.cpu(), cat_ids[lab].cpu()))
    return results


def to_coco_results(dets: Detections, image_id: int) -> list[dict]:
    """COCO results format: image_id, category_id, bbox [x, y, w, h] pixels, score."""
    out = []
    for (x0, y0, x1, y1), s, c in zip(dets.boxes.tolist(), dets.scores.tolist(), dets.category_ids.tolist()):
        out.append({"image_id": int(image_id), "category_id": int(c),
                    "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                    "score": round(float(s), 5)})
    return out
