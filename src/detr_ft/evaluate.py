"""``detr-ft eval``: COCO metrics of a checkpoint on a dataset split."""

from __future__ import annotations

import json
from pathlib import Path

from torch.utils.data import DataLoader

from detr_ft.analysis import analyse
from detr_ft.analysis.bootstrap import default_resamples
from detr_ft.data.batching import to_device_normalised_from_loader
from detr_ft.data.dataset import DetectionDataset
from detr_ft.data.source import read_split
from detr_ft.detector import Detector
from detr_ft.devices import say_if_slow_bf16
from detr_ft.metrics import coco_metrics, format_table, ground_truth
from detr_ft.model.postprocess import to_coco_results
from detr_ft.plots import plot_per_class

MAX_DETECTIONS = 100


def run_eval(ckpt_path: str, data_dir: str, out_dir: Path, split: str = "test", batch_size: int = 8,
             num_workers: int = 0, device: str = "auto", on_bad_data: str = "error",
             hf_dataset: str | None = None, channels_last: bool = True, autocast: bool = False,
             image_size=None, bootstrap: int | None = None) -> dict:
    """Evaluate; writes metrics.json, detections.json, per_class_ap.png and the analysis
    (``detr_ft.analysis``: charts, report.html) into ``out_dir``. ``bootstrap``: resamples
    for the intervals (None: ``default_resamples`` of the split's size; 0: none)."""
    detector = Detector.load(ckpt_path, device=device, channels_last=channels_last, autocast=autocast,
                             image_size=image_size)
    say_if_slow_bf16(detector.device, autocast)
    index = read_split(data_dir, split, on_bad_data, categories=detector.categories, hf_dataset=hf_dataset)
    batches = detector.shapes.inference_batches([r.aspect for r in index.records], batch_size)
    loader = DataLoader(DetectionDataset(index, detector.resize), batch_sampler=batches, num_workers=num_workers,
                        collate_fn=detector.collator, pin_memory=detector.device.type == "cuda")
    found: dict[int, list[dict]] = {}
    for batch in loader:
        on_device = to_device_normalised_from_loader(batch, detector.device, num_workers)
        for dets, image_id in zip(detector.detect_batch(on_device), batch.image_ids.tolist()):
            found[image_id] = to_coco_results(dets, image_id)[:MAX_DETECTIONS]
    results = [d for r in index.records for d in found[r.image_id]]  # in the dataset's order
    gt = ground_truth(index.records, detector.categories)
    metrics = coco_metrics(gt, results, detector.categories)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = {**metrics, "split": split, "images": len(index), "checkpoint": str(ckpt_path), "autocast": autocast,
               "data": index.report.to_dict()}
    resamples = default_resamples(len(index)) if bootstrap is None else bootstrap
    metrics = analyse(out_dir, gt, results, detector.categories, metrics, index=index, bootstrap=resamples,
                      title=f"detr-ft eval: {split} split")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out_dir / "detections.json").write_text(json.dumps(results))
    plot_per_class(metrics["per_class"], out_dir / "per_class_ap.png", title=f"AP per class ({split})")
    print(format_table(metrics))
    return metrics
