"""Equivalent forms of the few pieces of transformers' models that ONNX cannot take.

``export --format onnx`` swaps them into the model it loads for itself (``Family.export_rewrites``),
never into a model that trains or predicts. Each gives the same numbers at the export's fixed
canvas, in operators that torch's TorchScript exporter writes and ONNX Runtime runs; the export's
parity check and the ONNX tests compare the file with the unchanged model.

- ``float32_reference_points`` (Deformable DETR): its encoder builds the reference points of every
  feature-map cell with ``torch.linspace``, which the exporter writes in float64; the sampling grid
  of the deformable attention follows, and ONNX Runtime has no GridSample kernel for a float64 grid
  ("Could not find an implementation for GridSample(16)"). Cell centres from ``arange + 0.5`` are the
  same float32 numbers (the step is exactly 1) and keep the graph in float32.
- ``constant_position_embeddings`` (RF-DETR): its DINOv2 backbone resizes its position embeddings to
  the input's patch grid (bicubic, antialiased: an operator with no ONNX symbolic), at every traced
  call. At a fixed canvas the result is a constant: computed once by an eager forward at the canvas
  (``export_onnx`` runs one before tracing), it is written into the graph as one.
"""

from __future__ import annotations

import torch
from torch import nn


def float32_reference_points(model: nn.Module) -> None:
    """Deformable DETR: the encoder's reference points computed in float32 (see the module doc)."""
    model.model.encoder.get_reference_points = _reference_points  # this instance only


def _reference_points(spatial_shapes, valid_ratios: torch.Tensor, device) -> torch.Tensor:
    """[B, sum(H*W), levels, 2]: each level's cell centres (x, y) over the valid part of the map,
    scaled to every level's valid part, as Deformable DETR's encoder places its queries."""
    points = []
    for level, (height, width) in enumerate(spatial_shapes):
        height, width = int(height), int(width)
        ys = torch.arange(height, dtype=valid_ratios.dtype, device=device) + 0.5
        xs = torch.arange(width, dtype=valid_ratios.dtype, device=device) + 0.5
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        y = grid_y.reshape(-1)[None] / (valid_ratios[:, None, level, 1] * height)
        x = grid_x.reshape(-1)[None] / (valid_ratios[:, None, level, 0] * width)
        points.append(torch.stack((x, y), -1))
    return torch.cat(points, 1)[:, :, None] * valid_ratios[:, None]


class _ConstantAtCanvas:
    """Replaces a module's ``interpolate_pos_encoding``: in eager mode computes and keeps the value
    per (tokens, height, width); while tracing returns the kept value, a constant of the graph."""

    def __init__(self, compute):
        self.compute = compute
        self.values: dict[tuple[int, int, int], torch.Tensor] = {}

    def __call__(self, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
        key = (int(embeddings.shape[1]), int(height), int(width))
        if torch.jit.is_tracing():
            if key not in self.values:
                raise RuntimeError(f"position embeddings for tokens/height/width {key} were not computed before "
                                   "tracing (run one eager forward at the export's canvas first)")
            return self.values[key]
        self.values[key] = self.compute(embeddings, height, width).detach()
        return self.values[key]


def constant_position_embeddings(model: nn.Module) -> None:
    """RF-DETR: the backbone's resized position embeddings as constants of the canvas (module doc)."""
    found = 0
    for module in model.modules():
        if type(module).__name__.endswith("Embeddings") and hasattr(module, "interpolate_pos_encoding") \
                and isinstance(getattr(module, "position_embeddings", None), nn.Parameter):
            module.interpolate_pos_encoding = _ConstantAtCanvas(module.interpolate_pos_encoding)
            found += 1
    if not found:
        raise ValueError("constant_position_embeddings: no module with resizable position embeddings")
