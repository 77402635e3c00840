"""``detr-ft export --format onnx``: a checkpoint -> one ONNX file that ONNX Runtime runs.

The graph is the network alone, at a static canvas: inputs ``pixel_values``
[B, 3, H, W] float32 (normalised, 0 on padding) and ``pixel_mask`` [B, H, W]
int64 (1 on real pixels), the image at the top left as detr-ft's collator puts
it; outputs ``logits`` [B, Q, C+1] (DETR) or [B, Q, C] (sigmoid families) and
``boxes`` [B, Q, 4] (cx, cy, w, h) normalised by the real image. B is fixed
(``batch_size``) or a dynamic axis. Resize, padding, normalisation and the
post-processing run in ``onnx_runtime.py`` (NumPy): per image they cost a small
fraction of the network's time (README, "Deploy with ONNX"), and keeping them out
leaves the graph's outputs comparable, number for number, with PyTorch's.

The batch norms are folded into their convolutions first, as ``Detector`` does, and
the family's export rewrites (``model/export_rewrites.py``: Deformable DETR's float32
reference points, RF-DETR's position embeddings fixed at the canvas) swapped in,
and the exporter is torch's TorchScript one (``dynamo=False``) with the model's
own train/eval state kept (``TrainingMode.PRESERVE``): with the default
(``EVAL``) and the norms not folded, the presets' exported backbone disagreed
with PyTorch (by up to 5.6); folded, both modes agree. The dynamo exporter wrote
the same graphs 2-6x slower. Every export is checked: ``onnx.checker`` and
ONNX Runtime against PyTorch on a probe batch (``check_parity``).

What the runtime needs travels in the file's ``metadata_props`` (``METADATA_*``).
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from dataclasses import asdict
from pathlib import Path

from detr_ft.errors import UserError, first_line
from detr_ft.types import Categories, ResizeSpec

ONNX_NAME = "model.onnx"
OPSET = 17
INPUTS = ("pixel_values", "pixel_mask")
OUTPUTS = ("logits", "boxes")

# metadata_props keys (values are JSON text)
METADATA_VERSION = "detr_ft_onnx_version"
METADATA_FAMILY = "detr_ft_family"
METADATA_CATEGORIES = "detr_ft_categories"      # {"ids": [...], "names": [...]}
METADATA_RESIZE = "detr_ft_resize"              # asdict(ResizeSpec): shortest, longest, mean, std, fixed
METADATA_CANVAS = "detr_ft_canvas"              # [H, W]
METADATA_BATCH = "detr_ft_batch_size"           # an int, or null for a dynamic batch axis
METADATA_THRESHOLDS = "detr_ft_thresholds"      # {category_id: score threshold} or null
FORMAT_VERSION = 1


class NotExportable(UserError):
    """A family this exporter cannot write, or whose graph ONNX Runtime cannot run as PyTorch does (one line)."""


def onnx_metadata(categories: Categories, resize: ResizeSpec, family: str, canvas: tuple[int, int],
                  batch_size: int | None, thresholds: dict[int, float] | None) -> dict[str, str]:
    """The ``metadata_props`` of an exported file: what ``onnx_runtime`` reads back."""
    return {
        METADATA_VERSION: json.dumps(FORMAT_VERSION),
        METADATA_FAMILY: json.dumps(family),
        METADATA_CATEGORIES: json.dumps(categories.to_dict()),
        METADATA_RESIZE: json.dumps(asdict(resize)),
        METADATA_CANVAS: json.dumps(list(canvas)),
        METADATA_BATCH: json.dumps(batch_size),
        METADATA_THRESHOLDS: json.dumps({str(k): float(v) for k, v in thresholds.items()} if thresholds else None),
    }


def network_graph(model):
    """The module that is exported: (pixel_values, pixel_mask) -> (logits, boxes), as
    ``detection_outputs`` computes them for inference (no auxiliary outputs)."""
    import torch

    from detr_ft.model.outputs import detection_outputs

    class Network(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, pixel_values, pixel_mask):
            out = detection_outputs(self.model, pixel_values, pixel_mask.bool(), with_aux=False)
            return out.logits, out.boxes

    return Network().eval()


def check_canvas(canvas: tuple[int, int]) -> tuple[int, int]:
    """(H, W) as ints; a non-positive side is the user's mistake."""
    h, w = (int(v) for v in canvas)
    if h < 1 or w < 1:
        raise UserError(f"--pad-size {h} {w}: height and width must be positive")
    return h, w


def unexported_operator(e: BaseException) -> str:
    """The operator an exporter error names (``aten::foo``), or its first line."""
    found = re.search(r"(aten::[A-Za-z0-9_.]+|prim::[A-Za-z0-9_]+|torchvision::[A-Za-z0-9_]+)", str(e))
    return f"operator {found.group(1)}" if found else first_line(e)


def export_onnx(ckpt_path: str, out_path: Path, pad_size: tuple[int, int] | None = None, batch_size: int = 1,
                dynamic_batch: bool = False, thresholds: dict[int, float] | None = None,
                quantize: str | None = None, parity_check: bool = True) -> Path:
    """Write the ONNX file of a detr-ft checkpoint to ``out_path``; checked by ``onnx.checker``.

    pad_size: the canvas (H, W); default the largest the model's resize produces
    (``ResizeSpec.max_canvas``, the canvas of ``--pad``). batch_size: the fixed batch,
    unless ``dynamic_batch``. thresholds: per-class score thresholds (category id ->
    score) to carry in the metadata. quantize: "int8" for dynamic int8 weights.
    """
    import torch

    from detr_ft.checkpoint import model_from_checkpoint
    from detr_ft.model.families import family_named
    from detr_ft.model.speed import fold_batch_norms

    onnx, _ = require_onnx()
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1 (got {batch_size})")
    if quantize not in (None, "int8"):
        raise UserError(f"--quantize {quantize}: only int8 is supported")
    model, resize, categories, family = model_from_checkpoint(Path(ckpt_path).expanduser())
    canvas = check_canvas(pad_size or resize.max_canvas)
    fold_batch_norms(model)
    rewrites = family_named(family).export_rewrites
    for rewrite in rewrites:
        rewrite(model)
    graph = network_graph(model)
    h, w = canvas
    pixel_values = torch.zeros(batch_size, 3, h, w)
    pixel_mask = torch.ones(batch_size, h, w, dtype=torch.int64)
    if rewrites:
        with torch.no_grad():
            graph(pixel_values, pixel_mask)  # eager, at the canvas: what a rewrite keeps as a constant
    axes = {name: {0: "batch"} for name in INPUTS + OUTPUTS} if dynamic_batch else None
    out_path = Path(out_path).expanduser()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's notes on tracing and indexing
            torch.onnx.export(graph, (pixel_values, pixel_mask), str(out_path), input_names=list(INPUTS),
                              output_names=list(OUTPUTS), opset_version=OPSET, dynamo=False,
                              dynamic_axes=axes, training=torch.onnx.TrainingMode.PRESERVE)
    except Exception as e:  # noqa: BLE001  (any exporter failure: one line naming what did not export)
        raise NotExportable(f"export --format onnx: the {family} family does not export to ONNX opset {OPSET} "
                        f"({unexported_operator(e)})") from None
    try:
        if parity_check:
            check_parity(graph, out_path, batch_size, canvas, family)
    except UserError:
        out_path.unlink(missing_ok=True)
        raise
    if quantize == "int8":
        quantize_int8(out_path)
    proto = onnx.load(str(out_path))
    meta = onnx_metadata(categories, resize, family, canvas, None if dynamic_batch else batch_size, thresholds)
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(out_path))
    return out_path


# The largest difference between ONNX Runtime's and PyTorch's top detections (score, and box
# coordinates normalised) an export may show on the probe batch; float32 exports of the supported
# families differ by about 1e-6 on the tests' models.
PARITY_TOLERANCE = 1e-3
PROBE_TOP = 10  # detections compared per probe image


def top_queries(logits, boxes, softmax: bool, k: int):
    """Per image, the ``k`` queries of highest score: (scores [B, k], boxes [B, k, 4])."""
    import numpy as np

    if softmax:
        e = np.exp(logits - logits.max(-1, keepdims=True))
        scores = (e / e.sum(-1, keepdims=True))[..., :-1].max(-1)
    else:
        scores = (1.0 / (1.0 + np.exp(-logits))).max(-1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(boxes, order[..., None], 1)


def unmatched_distance(expected, got) -> float:
    """The largest distance from one of PyTorch's top detections to the nearest of ONNX Runtime's
    (max over score and box coordinates): slot order may differ where queries tie (RT-DETR's top-k
    query selection on a probe image), the detections themselves may not."""
    import numpy as np

    (es, eb), (gs, gb) = expected, got
    worst = 0.0
    for i in range(len(es)):
        for s, box in zip(es[i], eb[i]):
            d = np.maximum(np.abs(gs[i] - s), np.abs(gb[i] - box).max(-1))
            worst = max(worst, float(d.min()))
    return worst


def check_parity(graph, path: Path, batch_size: int, canvas: tuple[int, int], family: str) -> None:
    """Run the exported file and the PyTorch graph on one seeded probe batch (noise over the
    whole canvas) and compare their top detections (``unmatched_distance``); a
    difference above ``PARITY_TOLERANCE`` is a ``UserError`` naming the family: an export that
    runs but computes something else is refused rather than written."""
    import onnxruntime as ort
    import torch

    h, w = canvas
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(batch_size, 3, h, w, generator=generator)
    # no padding: RT-DETR gives every padded position the same features, whose ties in its top-k
    # query selection either runtime may break its own way (the tests cover padded images)
    mask = torch.ones(batch_size, h, w, dtype=torch.int64)
    with torch.no_grad():
        expected = [t.numpy() for t in graph(pixels, mask)]
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001  (ONNX Runtime's own error types)
        found = re.search(r"implementation for (\w+\(\d+\))", str(e))
        raise NotExportable(f"export --format onnx: the {family} family exports, but ONNX Runtime cannot run its graph "
                        f"({'operator ' + found.group(1) if found else first_line(e)}); use the Hugging Face "
                        f"format (--format hf) for this family") from None
    feed = {"pixel_values": pixels.numpy(), "pixel_mask": mask.numpy()}
    got = session.run(None, {i.name: feed[i.name] for i in session.get_inputs()})
    softmax = family == "detr"
    every = len(got[0][0])  # the nearest among all of ONNX Runtime's queries: ties may reorder the top ones
    diff = unmatched_distance(top_queries(*expected, softmax, PROBE_TOP), top_queries(*got, softmax, every))
    if not diff <= PARITY_TOLERANCE:
        raise NotExportable(f"export --format onnx: the {family} family does not export faithfully: ONNX Runtime's "
                        f"top detections on a probe batch differ from PyTorch's by {diff:.3g} (tolerance "
                        f"{PARITY_TOLERANCE:g}); a barely trained RT-DETR whose queries tie picks other ones in "
                        f"either runtime: --no-parity-check writes it anyway")


def quantize_int8(path: Path) -> None:
    """Replace the float model at ``path`` by ONNX Runtime's dynamic int8 quantisation of it
    (int8 weights of MatMul/Gemm/Conv, activations quantised on the fly)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = path.with_suffix(".float.onnx")
    path.replace(tmp)
    logging.disable(logging.WARNING)  # the quantiser logs a line per tensor it leaves in float
    try:
        quantize_dynamic(str(tmp), str(path), weight_type=QuantType.QInt8)
    finally:
        logging.disable(logging.NOTSET)
        tmp.unlink(missing_ok=True)


def require_onnx():
    """(onnx, onnxruntime), or the one line that says how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise UserError(f"ONNX needs the onnx extra ({e.name} is missing): pip install 'detr-ft[onnx]'") from None
    return onnx, onnxruntime
