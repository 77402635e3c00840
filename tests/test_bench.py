"""``detr-ft bench``: one smoke run of every benchmark on tiny settings, the stock path's
pieces, and the CUDA-only code paths as far as a CPU can check them. No timed assertions."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

from conftest import assert_same_detections, coco_as_detections
from detr_ft.cli import main

ROOT = Path(__file__).resolve().parents[1]
RECORD_KEYS = {"benchmark", "config", "ours", "baseline", "unit", "speedup"}


@pytest.mark.slow
@pytest.mark.compat
def test_bench_runs_every_benchmark_and_writes_valid_json(tmp_path, capsys):
    out, path = tmp_path / "out", tmp_path / "records.json"
    rc = main(["bench", "--image-size", "64", "--batch-size", "2", "--steps", "1", "--warmup", "1", "--rounds", "1",
               "--images", "8", "--workers", "0,1", "--device", "cpu", "--json", str(path),
               "--output-dir", str(out)])
    assert rc == 0
    records = json.loads(path.read_text())
    assert json.loads((out / "bench.json").read_text()) == records
    assert [r["benchmark"] for r in records] == [
        "startup", "data", "data", "train", "overhead", "train_peak_rss", "static", "infer", "latency",
        "infer_peak_rss"]
    for r in records:
        assert set(r) == RECORD_KEYS
        for k in ("ours", "baseline", "speedup"):
            assert isinstance(r[k], float) and math.isfinite(r[k]) and r[k] > 0, r
        expected = r["ours"] / r["baseline"] if r["unit"] == "images/s" else r["baseline"] / r["ours"]
        assert r["speedup"] == pytest.approx(expected), r
    units = {r["benchmark"]: r["unit"] for r in records}
    assert units == {"startup": "s", "data": "images/s", "train": "images/s", "overhead": "x bare",
                     "train_peak_rss": "MiB", "static": "images/s", "infer": "images/s", "latency": "ms",
                     "infer_peak_rss": "MiB"}
    assert [r["config"].split(" workers=")[1][0] for r in records if r["benchmark"] == "data"] == ["0", "1"]
    # peak RSS is measured per side in its own process: a whole Python with torch, far above a few MiB
    assert all(r["ours"] > 100 and r["baseline"] > 100 for r in records if r["unit"] == "MiB")
    stdout = capsys.readouterr().out
    assert "speedup" in stdout and "load average" in stdout
    assert all(r["benchmark"] in stdout for r in records)
    assert "DetrImageProcessor" in stdout  # which stock image processor class ran
    env = json.loads((out / "machine.json").read_text())
    assert env["before"]["cores"] >= 1 and env["notes"]
    samples = env["samples_seconds"]  # every timed step, both sides, for whoever doubts a figure
    assert len(samples["train"]["ours"]) == len(samples["train"]["stock"]) == len(samples["train"]["bare"]) == 1
    assert min(r["ours"] for r in records if r["benchmark"] == "train") == pytest.approx(
        2 / samples["train"]["ours"][0])


@pytest.mark.compat
def test_bench_bf16_train_only(tmp_path):
    path = tmp_path / "r.json"
    rc = main(["bench", "--what", "train", "--precision", "bf16", "--no-memory", "--image-size", "64",
               "--batch-size", "2", "--steps", "1", "--warmup", "0", "--images", "4", "--device", "cpu",
               "--json", str(path), "--output-dir", str(tmp_path / "o")])
    assert rc == 0
    records = json.loads(path.read_text())
    assert [r["benchmark"] for r in records] == ["train", "overhead"]
    assert all("bf16" in r["config"] for r in records)


@pytest.mark.parametrize("argv, needle", [
    (["--what", "train,bogus"], "--what"),
    (["--image-size", "12x"], "--image-size"),
    (["--image-size", "16"], "--image-size"),
    (["--model", "yolos-tiny"], "--model"),
    (["--model", "rtdetr-tiny", "--image-size", "100"], "--image-size 128x128"),
    (["--model", "lwdetr-tiny", "--image-size", "64"], "lw_detr"),
    (["--batch-size", "0"], "--batch-size"),
    (["--workers", "a,b"], "--workers"),
    (["--images", "3", "--batch-size", "2"], "--images"),
    (["--source-size", "10"], "--source-size"),
])
def test_bench_mistakes_exit_2_with_one_line(argv, needle, tmp_path, capsys):
    assert main(["bench", *argv, "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


FAMILY_BENCH = [pytest.param(model, size, id=model,
                             marks=pytest.mark.skipif(model_type not in CONFIG_MAPPING_NAMES,
                                                      reason="not in this transformers version"))
                for model, size, model_type in (("rtdetr-tiny", "64", "rt_detr"), ("lwdetr-tiny", "96", "lw_detr"),
                                                ("deformable-detr-tiny", "64", "deformable_detr"))]


@pytest.mark.compat
@pytest.mark.parametrize("model, size", FAMILY_BENCH)
def test_bench_trains_and_infers_any_family_against_its_own_transformers_classes(model, size, tmp_path, capsys):
    """The RT-DETR line, the Group-DETR line and Deformable DETR: the stock side is the family's image
    processor, ``...ForObjectDetection`` with its own loss from ``labels`` and the pipeline."""
    from detr_ft.model.families import family_of_preset

    path = tmp_path / "r.json"
    rc = main(["bench", "--what", "train,infer", "--model", model, "--image-size", size, "--batch-size", "2",
               "--steps", "1", "--warmup", "0", "--rounds", "1", "--images", "4", "--no-memory", "--device", "cpu",
               "--json", str(path), "--output-dir", str(tmp_path / "o")])
    assert rc == 0
    records = json.loads(path.read_text())
    assert [r["benchmark"] for r in records] == ["train", "overhead", "infer", "latency"]
    assert all(r["config"].startswith(f"{model} {size}x{size}") for r in records)
    stdout = capsys.readouterr().out
    assert family_of_preset(model).processor in stdout  # the family's own image processor ran the stock side


@pytest.mark.compat
def test_bench_reads_a_model_directory_and_sizes_by_its_family(tmp_path):
    """A directory is benched as its family: a fixed resize where the family's forward takes only some
    canvases (the stock side does not pad), a size it does not take is one line naming the one to use;
    only a family with a no-object class gets the original's object-bucket padding of stock targets."""
    from detr_ft.bench.config import BenchConfig
    from detr_ft.bench.models import bench_family
    from detr_ft.errors import UserError
    from detr_ft.model.build import build_model

    build_model("rtdetr-tiny", {0: "a", 1: "b"}).model.save_pretrained(tmp_path)
    cfg = BenchConfig(model=str(tmp_path), image_size=(64, 64)).resolved()
    family, config, own = bench_family(str(tmp_path))
    assert family.model_type == "rt_detr" and not family.has_no_object_class
    assert cfg.resize(family, own).fixed == (64, 64)
    with pytest.raises(UserError, match="--image-size 96x96"):
        BenchConfig(model=str(tmp_path), image_size=(80, 80)).resolved()
    detr, detr_config, detr_own = bench_family("detr-tiny")
    assert detr.has_no_object_class
    assert BenchConfig(image_size=(64, 64)).resolved().resize(detr, detr_own).fixed is None  # DETR's proportions


def test_bench_without_pycocotools_names_the_extra(monkeypatch, tmp_path, capsys):
    """pycocotools is the [bench] extra (the stock path's COCO reader), not a dependency of training."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pycocotools" else real(name, *a))
    assert main(["bench", "--what", "startup", "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install 'detr-ft[bench]'" in err and len(err.splitlines()) == 1


def test_speedup_means_detr_ft_is_better():
    from detr_ft.bench.config import Record

    assert Record("train", "c", 30.0, 10.0, "images/s").speedup == pytest.approx(3.0)
    assert Record("startup", "c", 0.5, 10.0, "s").speedup == pytest.approx(20.0)
    assert Record("overhead", "c", 1.05, 1.4, "x bare").speedup == pytest.approx(1.4 / 1.05)
    assert Record("peak", "c", 800.0, 400.0, "MiB").speedup == pytest.approx(0.5)


def test_image_size_and_defaults_per_model():
    from detr_ft.bench.config import BenchConfig, parse_image_size

    assert parse_image_size("320") == (320, 320)
    assert parse_image_size("800x1333") == (800, 1333)
    tiny = BenchConfig().resolved()
    assert (tiny.image_size, tiny.batch_size, tiny.shortest, tiny.longest) == ((320, 320), 16, 320, 533)
    r50 = BenchConfig(model="detr-r50", image_size=(800, 1333)).resolved()
    assert (r50.batch_size, r50.shortest, r50.longest) == (2, 800, 1333)


@pytest.mark.compat
def test_stock_collate_pads_targets_to_the_bucket_as_the_original():
    from detr_ft.bench.stock import StockCollate, stock_buckets, stock_processor
    from detr_ft.types import ResizeSpec

    processor = stock_processor(ResizeSpec(32, 48))
    images = [torch.randn(3, 32, 48), torch.randn(3, 48, 32)]
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1]])
    targets = [{"class_labels": torch.tensor([2, 0]), "boxes": boxes,
                "area": torch.tensor([4.0, 1.0]), "iscrowd": torch.tensor([0, 0])},
               {"class_labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4),
                "area": torch.zeros(0), "iscrowd": torch.zeros(0, dtype=torch.long)}]
    buckets = stock_buckets([2, 0, 5], 1)
    assert buckets.tolist() == [5]
    batch = StockCollate(processor, (48, 48), buckets, pad_label=3)(list(zip(images, targets)))
    assert batch["pixel_values"].shape == (2, 3, 48, 48) and batch["pixel_mask"].shape == (2, 48, 48)
    assert batch["pixel_mask"][0, :32, :48].all() and not batch["pixel_mask"][0, 32:].any()
    assert torch.equal(batch["pixel_values"][1, :, :48, :32], images[1])
    first, empty = batch["labels"]
    assert first["class_labels"].tolist() == [2, 0, 3, 3, 3]  # padded with the no-object index
    assert torch.equal(first["boxes"][2:], first["boxes"][:1].expand(3, 4))  # by repeating the first box
    assert empty["class_labels"].tolist() == [3] * 5 and empty["boxes"].shape == (5, 4)
    assert all(len(t[k]) == 5 for t in (first, empty) for k in ("boxes", "area", "iscrowd"))


@pytest.mark.compat
def test_stock_dataset_matches_the_processor_and_contiguous_labels(synthetic_dir):
    from detr_ft.bench.stock import StockCocoDetection, stock_processor
    from detr_ft.data.coco import load_index
    from detr_ft.types import ResizeSpec

    index = load_index(synthetic_dir, "train")
    label_of = {cid: i for i, cid in enumerate(index.categories.ids)}
    resize = ResizeSpec(64, 96)
    ds = StockCocoDetection(synthetic_dir / "images", synthetic_dir / "annotations" / "train.json",
                            stock_processor(resize), label_of)
    by_id = {r.image_id: r for r in index.records}
    for i in range(4):
        pixels, target = ds[i]
        record = by_id[ds.ids[i]]
        assert tuple(pixels.shape[1:]) == resize.output_size(record.height, record.width)
        assert target["class_labels"].tolist() == record.labels.tolist()


def test_cuda_code_paths_as_far_as_a_cpu_goes():
    from detr_ft.bench.measure import autocast, latency_compile_mode, synchronize, timed

    assert latency_compile_mode(torch.device("cuda")) == "reduce-overhead"
    assert latency_compile_mode(torch.device("cpu")) is None
    with autocast(torch.device("cpu"), "bf16"):
        assert torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3)).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), "fp32"):
        assert torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3)).dtype == torch.float32
    synchronize(torch.device("cpu"))
    assert timed(lambda: time.sleep(0.05), torch.device("cpu")) >= 0.05  # the call's wall time


def test_trivial_loss_reaches_every_output_without_matching():
    from detr_ft.bench.models import trivial_loss
    from detr_ft.model.outputs import DetectionOutputs

    tensors = [torch.randn(2, 5, 4, requires_grad=True) for _ in range(4)]
    trivial_loss(DetectionOutputs(tensors[0], tensors[1], [(tensors[2], tensors[3])])).backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in tensors)


def test_a_lone_side_holds_one_model_and_starts_where_the_pair_does():
    """The peak-RSS children build one side only; its weights are the shared initial state."""
    from detr_ft.bench.config import BenchConfig
    from detr_ft.bench.models import Sides
    from detr_ft.types import Categories
    from detr_ft.model.build import build_model

    cfg = BenchConfig(model="detr-tiny").resolved()
    cats = Categories((1, 2), ("a", "b"))
    resize = build_model("detr-tiny", cats.id2label).resize
    both = Sides(cfg, cats, resize, torch.device("cpu"))
    for side in ("ours", "stock"):
        alone = Sides(cfg, cats, resize, torch.device("cpu"), only=side)
        assert list(alone.networks()) == [side] and alone.initial is None
        assert list(alone.reset()) == [side]
        mine, paired = alone.networks()[side].state_dict(), both.networks()[side].state_dict()
        assert all(torch.equal(mine[k], paired[k]) for k in paired)
    assert list(both.networks()) == list(both.reset()) == ["ours", "stock", "bare"]


def test_r50_architecture_trains_stages_2_to_4_on_both_sides():
    from detr_ft.bench.models import bench_model, trainable_backbone

    with torch.device("meta"):
        model, pretrained, note = bench_model("detr-r50", {0: "a", 1: "b"}, seed=0)
    assert pretrained and "equalised" in note and "would train 0 backbone" in note
    backbone = model.model.backbone
    frozen = {n for n, p in backbone.named_parameters() if not p.requires_grad}
    assert frozen and all("embedder" in n or "stages.0." in n for n in frozen)
    assert trainable_backbone(model) > 20_000_000  # ResNet-50 stages 2-4


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the script runs the full GPU benchmark")
@pytest.mark.parametrize("script", ["gpu.sh", "gpu_checks.sh", "gpu_families.sh"])
def test_gpu_script_fails_clearly_without_cuda(script):
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / script)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 2
    assert f"{script}: no CUDA device" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert done.stdout == ""


def test_flop_rate_script_reports_the_forward_and_a_matrix_product():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "flop_rate.py"), "--model", "detr-tiny",
                           "--batch-size", "1", "--size", "64", "96", "--repeats", "1", "--matmul", "256"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["model"] == "detr-tiny" and report["size"] == [64, 96] and report["matmul"]["size"] == 256
    ops = report["by_op"]
    assert {"convolution", "addmm"} <= set(ops)  # the backbone's and the transformer's arithmetic
    assert report["gflop_per_forward"] == pytest.approx(sum(o["gflop"] for o in ops.values()), abs=0.01 * len(ops))
    assert all(0 < o["share_of_time"] <= 1 and o["gflops"] > 0 for o in ops.values())
    assert report["forward_s"] > 0 and report["gflops"] > 0 and report["matmul"]["gflops"] > 0


def test_collator_hands_over_uint8_and_ready_normalises_exactly(monkeypatch):
    """The collate's canvas holds the uint8 pixels and zero padding, every element written (its
    memory starts as garbage here), blank images included; ``to_device_normalised()`` gives bit-for-bit
    ``(x - mean) / std`` with zero padding, as the image processor's normalise-then-pad does."""
    from detr_ft.data import batching
    from detr_ft.data.batching import Collator
    from detr_ft.data.dataset import Sample

    made = batching.empty_to_hand_over
    monkeypatch.setattr(batching, "empty_to_hand_over", lambda shape, dtype: made(shape, dtype).fill_(7))

    g = torch.Generator().manual_seed(0)
    samples = [Sample(torch.randint(0, 256, (20 + 5 * i, 30 - 3 * i, 3), generator=g, dtype=torch.uint8)
                      .permute(2, 0, 1), torch.rand(i, 4), torch.zeros(i, dtype=torch.long), i, (10, 10))
               for i in range(3)]
    c = Collator((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), canvases=[(40, 40)], fill_to=4)
    raw = c(samples)
    assert raw.pixel_values.dtype == torch.uint8 and raw.pixel_mask.dtype == torch.bool
    batch = raw.to_device_normalised("cpu")
    assert batch.norm is None and batch.to_device_normalised("cpu").pixel_values is batch.pixel_values  # normalised once
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1) * 255
    for i, s in enumerate(samples):
        _, h, w = s.image.shape
        assert torch.equal(raw.pixel_values[i, :, :h, :w], s.image)
        assert torch.equal(batch.pixel_values[i, :, :h, :w], (s.image.float() - mean) / std)
        for pixels in (raw.pixel_values, batch.pixel_values):
            assert pixels[i, :, h:].abs().sum() == 0 and pixels[i, :, :, w:].abs().sum() == 0
        assert batch.pixel_mask[i].sum() == h * w and batch.pixel_mask[i, :h, :w].all()
    assert batch.pixel_values[3].abs().sum() == 0 and batch.pixel_mask[3].sum() == 0
    assert batch.pixel_values.dtype == torch.float32


def _collate_samples():
    from detr_ft.data.batching import Collator
    from detr_ft.data.dataset import Sample

    g = torch.Generator().manual_seed(1)
    samples = [Sample(torch.randint(0, 256, (3, 24 - 4 * i, 16 + 6 * i), generator=g, dtype=torch.uint8),
                      torch.rand(i + 1, 4, generator=g), torch.arange(i + 1), i, (10, 10)) for i in range(3)]
    return Collator((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), canvases=[(160, 160)], buckets=[4], fill_to=4), samples  # a canvas of 400 kB: over BY_VALUE_BYTES


class _CollateInWorker(torch.utils.data.Dataset):
    """Collates in a DataLoader worker; says whether the canvas was made in shared memory there."""

    def __len__(self):
        return 1

    def __getitem__(self, i):
        collate, samples = _collate_samples()
        batch = collate(samples)
        one_block = batch.pixel_values.untyped_storage().data_ptr() == batch.pixel_mask.untyped_storage().data_ptr()
        return batch, batch.pixel_values.is_shared() and one_block


def test_worker_batches_are_made_in_shared_memory_and_equal_the_main_process_batch():
    """A worker builds its canvas (pixels and mask, one block) in shared memory, so it is handed
    over without a copy; the small fields travel by value (a shared-memory segment each would
    cost more than they weigh). The batch that arrives equals the main process's own."""
    from dataclasses import fields

    from detr_ft.data.batching import BY_VALUE_BYTES

    collate, samples = _collate_samples()
    here = collate(samples)
    assert not here.pixel_values.is_shared()  # outside a worker: ordinary memory
    (there, shared_in_worker), = list(torch.utils.data.DataLoader(_CollateInWorker(), batch_size=None, num_workers=1))
    assert shared_in_worker and here.pixel_values.untyped_storage().nbytes() > BY_VALUE_BYTES
    assert there.pixel_values.is_shared() and there.pixel_mask.is_shared()
    assert not any(t.is_shared() for t in (there.labels, there.boxes, there.valid, there.image_ids,
                                           there.orig_sizes, there.norm))
    for f in fields(here):
        assert torch.equal(getattr(here, f.name), getattr(there, f.name)), f.name
        assert getattr(here, f.name).dtype == getattr(there, f.name).dtype, f.name


def test_batch_pickles_whole_before_and_after_ready():
    """Pickling keeps every field (value, dtype, shape), raw and normalised; a normalised
    batch's absent ``norm`` stays absent."""
    import pickle
    from dataclasses import fields

    collate, samples = _collate_samples()
    for batch in (collate(samples), collate(samples).to_device_normalised("cpu")):
        back = pickle.loads(pickle.dumps(batch))
        for f in fields(batch):
            a, b = getattr(batch, f.name), getattr(back, f.name)
            assert (a is None and b is None) or (torch.equal(a, b) and a.dtype == b.dtype), f.name


@pytest.mark.parametrize("workers, device, threads_inside", [(2, "cpu", 1), (0, "cpu", 2), (2, "cuda", 2)])
def test_cpu_batches_from_workers_are_normalised_on_one_thread(workers, device, threads_inside, monkeypatch):
    """``to_device_normalised_from_loader``: while loader workers keep the CPU's cores busy, the main process
    normalises a batch with one intra-op thread, then has its threads back; the batch is the
    same as ``to_device_normalised()``'s. Without workers, or for another device, nothing changes."""
    from detr_ft.data.batching import Batch, to_device_normalised_from_loader

    collate, samples = _collate_samples()
    seen, plain_ready = [], Batch.to_device_normalised

    def ready(batch, dev, non_blocking=False):  # on the CPU whatever the device asked (none here)
        seen.append(torch.get_num_threads())
        return plain_ready(batch, "cpu")

    monkeypatch.setattr(Batch, "to_device_normalised", ready)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = to_device_normalised_from_loader(collate(samples), torch.device(device), workers)
        assert seen == [threads_inside] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    expected = plain_ready(collate(samples), "cpu")
    assert out.norm is None and torch.equal(out.pixel_values, expected.pixel_values)


def test_training_and_eval_hand_batches_over_with_their_worker_count(varied_model, synthetic_dir, tmp_path,
                                                                     monkeypatch):
    """Training's hook (``DetectionData.transfer_batch_to_device``) and ``detr-ft eval`` (here
    ``--num-workers 1``: the same detections, query by query, as without) both go through
    ``to_device_normalised_from_loader``."""
    from detr_ft import engine, evaluate
    from detr_ft.cli import main
    from detr_ft.data.batching import to_device_normalised_from_loader
    from detr_ft.data.coco import load_index
    from detr_ft.data.shape_plan import ShapePlan
    from detr_ft.types import ResizeSpec

    calls = []

    def spy(batch, device, num_workers):
        calls.append((device.type, num_workers))
        return to_device_normalised_from_loader(batch, device, num_workers)

    monkeypatch.setattr(engine, "to_device_normalised_from_loader", spy)
    monkeypatch.setattr(evaluate, "to_device_normalised_from_loader", spy)
    collate, samples = _collate_samples()
    data = engine.DetectionData(load_index(synthetic_dir, "train"), None, ResizeSpec(64, 64), 2, 3, ShapePlan())
    assert data.transfer_batch_to_device(collate(samples), torch.device("cpu"), 0).norm is None
    assert calls == [("cpu", 3)]
    calls.clear()
    metrics, detections = {}, {}
    for workers in (1, 0):
        out = tmp_path / f"workers-{workers}"
        assert main(["eval", "--ckpt-path", str(varied_model.ckpt), "--data-dir", str(synthetic_dir),
                     "--device", "cpu", "--num-workers", str(workers), "--output-dir", str(out)]) == 0
        metrics[workers] = json.loads((out / "metrics.json").read_text())
        detections[workers] = coco_as_detections(json.loads((out / "detections.json").read_text()))
        assert calls and set(calls) == {("cpu", workers)}
        calls.clear()
    assert metrics[1]["map"] == pytest.approx(metrics[0]["map"], abs=1e-6)
    assert metrics[1]["images"] == metrics[0]["images"] == len(detections[0]) == len(detections[1]) > 0
    for image_id, dets in detections[0].items():
        assert_same_detections(dets, detections[1][image_id], where=image_id)


def test_predict_batches_by_orientation_and_keeps_the_order_given(tmp_path):
    """Detector.predict groups similar shapes into a batch (a landscape and a portrait image
    would pad each other to a square) and returns the results in the order of the input."""
    from PIL import Image

    from detr_ft.types import Categories, ResizeSpec
    from detr_ft.data.shape_plan import ShapePlan
    from detr_ft.detector import Detector, aspect_ratio
    from detr_ft.model.postprocess import Detections

    batches = []

    class Probe(Detector):
        def __init__(self):  # no model: detect_samples reports each image's size as its box
            self.resize, self.categories = ResizeSpec(32, 64), Categories((7,), ("thing",))
            self.shapes = ShapePlan()

        def detect_samples(self, samples, threshold=0.0):
            batches.append([s.orig_size for s in samples])
            return [Detections(torch.tensor([[0.0, 0.0, float(w), float(h)]]), torch.tensor([0.9]),
                               torch.tensor([0]), torch.tensor([7])) for h, w in (s.orig_size for s in samples)]

    sizes = [(40, 60), (60, 40), (50, 70), (70, 50), (45, 45), (30, 90)]  # (height, width)
    images = []
    for i, (h, w) in enumerate(sizes):
        im = Image.new("RGB", (w, h), (i * 30, 0, 0))
        if i % 3 == 0:
            images.append(im)
        elif i % 3 == 1:
            im.save(tmp_path / f"{i}.png")
            images.append(str(tmp_path / f"{i}.png"))
        else:
            images.append(np.asarray(im))
    out = Probe().predict(images, threshold=0.5, batch_size=2)
    assert [r[0]["box"][2:] for r in out] == [[w, h] for h, w in sizes]
    assert all(r[0]["category_id"] == 7 for r in out)
    for batch in batches:
        assert len({h > w for h, w in batch}) == 1, batches  # never a portrait beside a landscape

    rotated = Image.new("RGB", (60, 40))  # stored landscape, displayed portrait (EXIF orientation 6)
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated.save(tmp_path / "rotated.jpg", exif=exif)
    assert aspect_ratio(str(tmp_path / "rotated.jpg")) == pytest.approx(1.5)
    assert aspect_ratio(str(tmp_path / "missing.jpg")) == 1.0
