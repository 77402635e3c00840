"""Peak memory of ``detr-ft eval`` on a 2,000-image synthetic split (a benchmark, not a test).

Evaluation keeps only the COCO result records of each batch (at most 100 per
image), never the raw model outputs, so its memory should barely grow with the
number of images (the transformers example's evaluation kept every output and
ran out of memory on large sets). This script measures it: it writes a
synthetic dataset, trains a detr-tiny checkpoint for one step, then runs the
evaluation in fresh processes on the first 200 and on all 2,000 images and
reports each one's peak resident memory (VmHWM) and its memory after loading
the model, before the first batch.

    PYTHONPATH=src python benchmarks/eval_memory.py [--images 2000] [--size 128] [--workdir DIR]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
from pathlib import Path

def rss_mb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")

import detr_ft.evaluate as evaluate
from detr_ft.detector import Detector

real_load = Detector.load
marks = {}

def load(*args, **kwargs):
    detector = real_load(*args, **kwargs)
    marks["after_model_load_mb"] = rss_mb("VmRSS:")
    return detector

Detector.load = load
ckpt, data, split, out, batch = sys.argv[1:6]
t0 = time.perf_counter()
metrics = evaluate.run_eval(ckpt, data, Path(out), split=split, batch_size=int(batch), device="cpu")
detections = len(json.loads((Path(out) / "detections.json").read_text()))
print("RESULT " + json.dumps({"images": metrics["images"], "detections": detections,
                              "seconds": round(time.perf_counter() - t0, 1), **marks,
                              "peak_rss_mb": rss_mb("VmHWM:")}))
"""


def make_dataset(root: Path, images: int, size: int) -> None:
    from detr_ft.data.synthetic import SyntheticSpec, generate

    generate(root, train=8, val=images, seed=0, spec=SyntheticSpec(size=size, max_objects=6))


def subset_split(root: Path, name: str, n: int) -> None:
    """annotations/<name>.json: the first n images of the test split (and their objects)."""
    doc = json.loads((root / "annotations" / "test.json").read_text())
    doc["images"] = doc["images"][:n]
    keep = {im["id"] for im in doc["images"]}
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] in keep]
    (root / "annotations" / f"{name}.json").write_text(json.dumps(doc))


def train_checkpoint(root: Path, out: Path) -> Path:
    from detr_ft.config import TrainConfig
    from detr_ft.train import run_train

    run_train(TrainConfig(output_dir=str(out), data_dir=str(root), model="detr-tiny", max_steps=1, max_epochs=1,
                          batch_size=4, num_workers=0, train_only=True, max_inf_frames=0))
    return out / "last.ckpt"


def evaluate_in_child(ckpt: Path, root: Path, split: str, out: Path, batch_size: int) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(ckpt), str(root), split, str(out), str(batch_size)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"evaluation failed:\n{proc.stderr[-3000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def main() -> None:
    from detr_ft.devices import machine_facts

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--small", type=int, default=200, help="the smaller evaluation to compare with")
    p.add_argument("--size", type=int, default=128, help="long side of the synthetic images")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workdir", type=Path, default=None, help="keep the dataset and outputs here")
    args = p.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="detr-ft-eval-memory-"))
    root = work / "data"
    t0 = time.perf_counter()
    if not (root / "annotations" / "test.json").is_file():
        make_dataset(root, args.images, args.size)
    subset_split(root, "small", args.small)
    ckpt = train_checkpoint(root, work / "train")
    setup_s = time.perf_counter() - t0
    small = evaluate_in_child(ckpt, root, "small", work / "eval-small", args.batch_size)
    full = evaluate_in_child(ckpt, root, "test", work / "eval-full", args.batch_size)
    grown = full["peak_rss_mb"] - small["peak_rss_mb"]
    print(json.dumps({
        "benchmark": "eval peak RSS (detr-tiny, synthetic, CPU)",
        "image_size": args.size, "batch_size": args.batch_size,
        "small": small, "full": full,
        "peak_growth_mb": round(grown, 1),
        "peak_growth_kb_per_image": round(grown * 1024 / max(1, full["images"] - small["images"]), 2),
        "setup_seconds": round(setup_s, 1),
        "machine": machine_facts(),
        "workdir": str(work),
    }, indent=1))


if __name__ == "__main__":
    main()
