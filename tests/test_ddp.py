"""Multi-process training: the criterion normalises over the global batch, and
a 2-process CPU (gloo) run matches one process over the same global batch: losses,
weights after several steps, and validation mAP from detections gathered across processes."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from detr_ft.model.criterion import SetCriterion
from detr_ft.model.matcher import HungarianMatcher

QUERIES, CLASSES = 6, 3


def make_inputs():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, QUERIES, CLASSES + 1, generator=g, dtype=torch.float64)
    boxes = torch.rand(4, QUERIES, 4, generator=g, dtype=torch.float64) * 0.5 + 0.25
    counts = [3, 1, 1, 0]  # uneven halves: 4 and 1 objects, so their cross-entropy weight sums differ
    T = max(counts)
    labels = torch.zeros(4, T, dtype=torch.long)
    tboxes = torch.full((4, T, 4), 0.5, dtype=torch.float64)
    valid = torch.zeros(4, T, dtype=torch.bool)
    for i, n in enumerate(counts):
        labels[i, :n] = torch.randint(0, CLASSES, (n,), generator=g)
        tboxes[i, :n] = torch.rand(n, 4, generator=g, dtype=torch.float64) * 0.3 + 0.2
        valid[i, :n] = True
    return logits, boxes, labels, tboxes, valid


def criterion():
    return SetCriterion(CLASSES, HungarianMatcher(1.0, 5.0, 2.0), eos_coef=0.1, aux_loss=False)


def grads(logits, boxes, labels, tboxes, valid):
    logits = logits.clone().requires_grad_()
    boxes = boxes.clone().requires_grad_()
    loss = criterion().double()(logits, boxes, labels, tboxes, valid)["loss"]
    loss.backward()
    return loss.detach(), logits.grad, boxes.grad


def _worker(rank, world, store, out):
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        tensors = make_inputs()
        half = [t[2 * rank: 2 * rank + 2] for t in tensors]
        loss, g_logits, g_boxes = grads(*half)
        # DDP averages gradients over processes; the loss we log is the mean too
        dist.all_reduce(loss)
        torch.save({"loss": loss / world, "g_logits": g_logits, "g_boxes": g_boxes}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_criterion_under_ddp_equals_one_process_over_the_global_batch(tmp_path):
    mp.start_processes(_worker, args=(2, tmp_path / "store", tmp_path / "out"), nprocs=2, start_method="spawn")
    parts = [torch.load(f"{tmp_path / 'out'}.{r}") for r in range(2)]
    loss, g_logits, g_boxes = grads(*make_inputs())
    torch.testing.assert_close(parts[0]["loss"], loss, rtol=0, atol=1e-10)
    # DDP's averaged gradient of the shared parameters is the mean of the processes' gradients; on these
    # per-image outputs that means each half's gradient / world_size equals the single-process one.
    torch.testing.assert_close(torch.cat([p["g_logits"] for p in parts]) / 2, g_logits, rtol=0, atol=1e-10)
    torch.testing.assert_close(torch.cat([p["g_boxes"] for p in parts]) / 2, g_boxes, rtol=0, atol=1e-10)


def step_losses(out) -> list[float]:
    return [float(r["train_loss"]) for r in csv.DictReader(open(out / "metrics.csv")) if r["train_loss"]]


def data_the_model_finds(varied_model, synthetic_dir, out):
    """synthetic_dir's training split, and a test split whose one object per image is the varied model's
    most confident detection there: the model's validation mAP50 is high, and it counts only if every
    image's detections reach the evaluation (half of them from each of two processes)."""
    import shutil

    from detr_ft import Detector
    from detr_ft.data.coco import load_index

    shutil.copytree(synthetic_dir, out)
    doc = json.loads((out / "annotations" / "test.json").read_text())
    index = load_index(out, "test")
    detector = Detector.load(varied_model.ckpt, device="cpu")
    found = detector.predict([index.load_image(r) for r in index.records], threshold=0.0)
    doc["annotations"] = []
    for record, dets in zip(index.records, found):
        x0, y0, x1, y1 = dets[0]["box"]
        doc["annotations"].append({"id": len(doc["annotations"]) + 1, "image_id": record.image_id, "iscrowd": 0,
                                   "category_id": dets[0]["category_id"], "bbox": [x0, y0, x1 - x0, y1 - y0],
                                   "area": (x1 - x0) * (y1 - y0)})
    (out / "annotations" / "test.json").write_text(json.dumps(doc))
    return out


@pytest.mark.slow
def test_two_cpu_processes_match_one_in_weights_and_validation(varied_model, synthetic_dir, tmp_path):
    """4 steps (global batch 4) and a validation: the same losses step by step, the same weights after the
    4 steps (at a learning rate low enough that the model still finds its objects), and the same validation mAP, which each process computes from the detections of all 8 images
    (gathered across processes; each process saw 4)."""
    data = data_the_model_finds(varied_model, synthetic_dir, tmp_path / "data")
    # the export as a local model: its batch norms frozen, so per-process batch statistics play no part
    common = [sys.executable, "-m", "detr_ft", "train", "--data-dir", str(data), "--model", str(varied_model.export),
              "--device", "cpu", "--max-epochs", "1", "--pad", "--num-buckets", "1", "--num-workers", "0",
              "--seed", "3", "--hflip", "0", "--max-inf-frames", "0", "--lr", "1e-6", "--lr-backbone", "1e-6"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([*common, "--batch-size", "4", "--output-dir", str(tmp_path / "one")],
                         capture_output=True, text=True, timeout=300, env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([*common, "--batch-size", "2", "--devices", "2", "--strategy", "ddp",
                          "--output-dir", str(tmp_path / "two")], capture_output=True, text=True, timeout=300, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    summary = {n: json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("one", "two")}
    assert summary["two"]["world_size"] == 2 and summary["one"]["steps"] == summary["two"]["steps"] == 4
    assert two.stdout.count("detr-ft train: outputs in") == 1  # only rank 0 reports
    np.testing.assert_allclose(step_losses(tmp_path / "two"), step_losses(tmp_path / "one"), rtol=0, atol=1e-4)
    weights = {n: torch.load(tmp_path / n / "last.ckpt", weights_only=True)["state_dict"] for n in ("one", "two")}
    assert weights["one"].keys() == weights["two"].keys()
    start = torch.load(varied_model.ckpt, weights_only=True)["state_dict"]
    for key in weights["one"]:  # Adam moves each weight by ~lr a step: compare the moves, which float32 resolves
        moved = (weights["one"][key] - start[key]).abs().max().item()
        apart = (weights["two"][key] - weights["one"][key]).abs().max().item()
        assert apart <= 0.05 * moved + 1e-7, (key, moved, apart)
    assert max((weights["one"][k] - start[k]).abs().max().item() for k in weights["one"]) > 2e-6
    assert summary["one"]["map_50"] > 0.5
    assert summary["two"]["map_50"] == pytest.approx(summary["one"]["map_50"], abs=1e-6)
    assert summary["two"]["map"] == pytest.approx(summary["one"]["map"], abs=1e-6)


# --- every family under DDP: the processes' replicas stay one model ---------------------------


def rank_weights_callback():
    """A Lightning callback that writes each process's parameters when training ends (rank<R>.pt in
    the run's directory): DDP's replicas must end equal."""
    import lightning as L

    class RankWeights(L.Callback):
        def on_train_end(self, trainer, module):
            torch.save({n: p.detach().clone() for n, p in module.model.named_parameters()},
                       os.path.join(trainer.default_root_dir, f"rank{trainer.global_rank}.pt"))

    return RankWeights()


def train_families_under_ddp(out: str, data: str, presets: list[str]) -> None:
    """Train each preset in turn, 2 CPU processes (gloo), one process group for all: the script half of
    the test below (Lightning starts the second process by running this file again)."""
    from detr_ft.config import TrainConfig
    from detr_ft.train import fit
    from test_families import small_images

    for preset in presets:
        size = small_images(preset)[1:]
        fit(TrainConfig(output_dir=os.path.join(out, preset), data_dir=data, model=preset, device="cpu", devices=2,
                        strategy="ddp", batch_size=1, max_epochs=1, num_workers=0, train_only=True, seed=3,
                        image_size=[int(v) for v in size] or None), (rank_weights_callback(),))


@pytest.mark.slow
def test_every_family_trains_under_ddp_with_the_replicas_equal(tiny_data_dir, tmp_path):
    """Every preset, each 2 steps on 2 CPU processes (global batch 2): training runs, the losses are
    finite, and the two processes end with bit-identical parameters (DDP averaged the gradients of every
    parameter). Conditional DETR and RF-DETR leave parameters out of every loss, the RT-DETR line on a
    batch without objects: DDP runs with find_unused_parameters (devices.ddp_tolerating_unused). One
    launch trains them all in turn (the processes start once)."""
    from test_families import ALL_PRESETS, installed

    presets = installed(ALL_PRESETS)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, __file__, str(tmp_path), str(tiny_data_dir), *presets], capture_output=True,
                         text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    for preset in presets:
        out = tmp_path / preset
        summary = json.loads((out / "metrics.json").read_text())
        assert summary["world_size"] == 2 and summary["steps"] == 2, preset
        assert len(step_losses(out)) == 2 and np.isfinite(step_losses(out)).all(), preset
        ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]
        assert ranks[0].keys() == ranks[1].keys() and ranks[0], preset
        assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0]), preset


if __name__ == "__main__":  # the script half of test_every_family_trains_under_ddp_with_the_replicas_equal
    train_families_under_ddp(sys.argv[1], sys.argv[2], sys.argv[3:])
