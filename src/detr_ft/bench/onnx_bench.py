"""``bench --what infer-onnx``: ONNX Runtime against detr-ft's fastest PyTorch CPU path.

Both sides run the same network on the same batches, already preprocessed onto one
canvas (``--image-size``): PyTorch eager as ``Detector`` runs it (batch norms folded,
channels-last where it helps) and the file ``detr-ft export --format onnx`` writes
(dynamic batch axis), each with its own post-processing to detections. Throughput
at ``--batch-size`` and the batch-1 latency, timed alternately (``measure.alternate``).
"""

from __future__ import annotations

import numpy as np
import torch

from detr_ft.bench.config import THRESHOLD, BenchConfig, Record
from detr_ft.bench.measure import alternate, best, medians
from detr_ft.bench.workspace import Workspace


def bench_infer_onnx(ws: Workspace, cfg: BenchConfig, device, checkpoint, notes: list[str]) -> list[Record]:
    """Records ``infer-onnx`` (images/s) and ``latency-onnx`` (ms): ours = ONNX Runtime,
    baseline = detr-ft's PyTorch ``Detector``."""
    import onnxruntime as ort

    from detr_ft.data.dataset import Sample
    from detr_ft.data.transforms import image_tensor
    from detr_ft.detector import Detector
    from detr_ft.onnx_export import export_onnx
    from detr_ft.onnx_runtime import OnnxDetector

    canvas = tuple(cfg.image_size)
    onnx_path = export_onnx(str(checkpoint), ws.root / "onnx" / "model.onnx", pad_size=canvas, dynamic_batch=True)
    runtime = OnnxDetector(onnx_path, device=device.type, threads=cfg.threads)
    detector = Detector.load(checkpoint, device=str(device), canvas=canvas, channels_last=cfg.channels_last)
    records = ws.index.records[: cfg.batch_size]
    samples = [Sample(image_tensor(ws.index.load_image(r), canvas), torch.zeros(0, 4),
                      torch.zeros(0, dtype=torch.long), r.image_id, (r.height, r.width)) for r in records]
    found = {}

    def sides(batch):
        arrays = (batch.pixel_values.numpy(), batch.pixel_mask.numpy().astype(np.int64), batch.orig_sizes.numpy())
        return {"onnxruntime": lambda: found.__setitem__("onnx", runtime.detect_arrays(*arrays, THRESHOLD)),
                "pytorch": lambda: found.__setitem__("torch", detector.detect_batch(batch, THRESHOLD))}

    full = detector.batch_on_device(samples)
    times = alternate(sides(full), cfg.rounds, 1, device)
    one = detector.batch_on_device(samples[:1])
    latency = alternate(sides(one), max(cfg.steps, 3), max(cfg.warmup, 1), device)
    ws.samples["infer-onnx"], ws.samples["latency-onnx"] = times, latency
    n = len(samples)
    notes.append(f"infer-onnx: onnxruntime {ort.__version__} ({', '.join(runtime.session.get_providers())}, "
                 f"{cfg.threads or 'default'} threads) vs PyTorch eager Detector (folded norms, channels-last "
                 f"{cfg.channels_last}); {n} images preprocessed onto {canvas[0]}x{canvas[1]}; detections "
                 f"onnx {sum(len(d.scores) for d in found['onnx'])}, torch {sum(len(d.scores) for d in found['torch'])};"
                 f" medians: {medians(times)} per batch, batch 1: {medians(latency, 1e3, 'ms')}")
    label = f"{cfg.model} {canvas[0]}x{canvas[1]} {device.type} fp32"
    return [Record("infer-onnx", f"{label} b{n}", n / best(times["onnxruntime"]), n / best(times["pytorch"]),
                   "images/s"),
            Record("latency-onnx", f"{label} b1", best(latency["onnxruntime"]) * 1e3, best(latency["pytorch"]) * 1e3,
                   "ms")]
