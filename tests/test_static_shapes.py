"""--pad, --num-buckets, --pad-canvases, --compile, --deterministic, --autocast."""

import csv
import json
import multiprocessing

import numpy as np
import pytest
import lightning as L
import torch

from detr_ft.cli import main
from detr_ft.data.batching import (Collator, batch_padding_fraction, bucket_size, compute_buckets,
                                  padded_pixel_fraction)
from detr_ft.data.coco import load_index
from detr_ft.data.dataset import DetectionDataset
from detr_ft.data.sampling import EpochSampler, ShapeBatchSampler, _shard, aspect_sorted_batches
from detr_ft.engine import DetrModule, OptimConfig
from detr_ft.model.build import PRESETS, build_model
from detr_ft.types import ResizeSpec
from test_families import ALL_PRESETS, available, small_images

RESIZE = ResizeSpec(96, 144)


def test_buckets_from_counts_percentiles_top_is_max():
    counts = [0, 0, 1, 1, 2, 2, 3, 5, 8, 13]
    assert compute_buckets(counts, 0) == []
    assert compute_buckets(counts, 1) == [13]
    b3 = compute_buckets(counts, 3)
    assert b3[-1] == 13 and b3 == sorted(set(b3)) and len(b3) <= 3
    assert compute_buckets([0, 0, 0], 2) == [1]  # at least one slot
    assert [bucket_size(c, [2, 5, 13]) for c in (0, 2, 3, 13)] == [2, 2, 5, 13]


def test_collator_static_shapes(synthetic_dir):
    index = load_index(synthetic_dir, "train")
    ds = DetectionDataset(index, RESIZE)
    samples = [ds[i] for i in range(3)]
    batch = Collator(RESIZE.mean, RESIZE.std, canvases=[(144, 144)], buckets=[2, 9], fill_to=4)(samples)
    assert batch.pixel_values.shape == (4, 3, 144, 144) and batch.pixel_mask.shape == (4, 144, 144)
    assert batch.labels.shape == (4, 9) and batch.boxes.shape == (4, 9, 4)
    counts = [len(s.labels) for s in samples]
    assert batch.valid.sum(1).tolist() == counts + [0]
    assert batch.image_ids[-1] == -1 and batch.pixel_mask[-1].sum() == 0
    for i, s in enumerate(samples):
        h, w = s.image.shape[1:]
        assert batch.pixel_mask[i].sum() == h * w
        assert torch.equal(batch.boxes[i, : counts[i]], s.boxes)
    dynamic = Collator(RESIZE.mean, RESIZE.std)(samples)
    assert dynamic.labels.shape[1] == max(max(counts), 1)
    assert tuple(dynamic.pixel_values.shape[2:]) == (max(s.image.shape[1] for s in samples),
                                                      max(s.image.shape[2] for s in samples))


def test_object_padding_changes_nothing_end_to_end(synthetic_dir):
    """The same images through the model and criterion: targets padded to 12 slots or not."""
    index = load_index(synthetic_dir, "train")
    torch.manual_seed(0)
    bundle = build_model("detr-tiny", index.categories.id2label)
    module = DetrModule(bundle, index.categories, OptimConfig()).eval()
    ds = DetectionDataset(index, bundle.resize)
    samples = [ds[i] for i in range(4)]
    tight = Collator(bundle.resize.mean, bundle.resize.std)(samples).to_device_normalised("cpu")
    padded = Collator(bundle.resize.mean, bundle.resize.std, buckets=[12])(samples).to_device_normalised("cpu")
    assert padded.labels.shape[1] == 12 > tight.labels.shape[1]
    a, b = module.compute_loss(tight), module.compute_loss(padded)
    for k in ("loss", "loss_ce", "loss_bbox", "loss_giou"):
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_auto_canvases_pad_fewer_pixels_than_the_square(synthetic_dir):
    index = load_index(synthetic_dir, "train")
    sizes = [RESIZE.output_size(r.height, r.width) for r in index.records]
    assert len({h > w for h, w in sizes}) == 2  # the synthetic set mixes orientations
    square = padded_pixel_fraction(sizes, [RESIZE.max_canvas])
    auto = padded_pixel_fraction(sizes, [(96, 144), (144, 96)])
    assert 0 <= auto < square


def test_one_shape_plan_decides_canvases_buckets_fill_and_batch_order(synthetic_dir):
    """``ShapePlan`` is where the static shapes are decided, for training and for inference; the
    data module, ``Detector`` and predict --pad read theirs from it."""
    from detr_ft.config import TrainConfig
    from detr_ft.data.augment import augment_spec
    from detr_ft.data.shape_plan import ShapePlan
    from detr_ft.engine import DetectionData

    train, val = load_index(synthetic_dir, "train"), load_index(synthetic_dir, "test")
    flip = augment_spec("flip", RESIZE)
    plans = {mode: ShapePlan.for_training(TrainConfig(pad=True, pad_canvases=mode, num_buckets=2, batch_size=3),
                                          RESIZE, flip, train, val) for mode in ("square", "auto")}
    assert plans["square"].canvases == ((144, 144),) and not plans["square"].like_shape_batches
    assert plans["auto"].canvases == ((96, 144), (144, 96)) and plans["auto"].like_shape_batches
    for plan in plans.values():
        assert plan.static and plan.fill_to == 3 and len(plan.buckets) <= 2

    class Crowded:  # a validation split with more objects in an image than any training image has
        def __len__(self):
            return 1

        def object_counts(self):
            return np.array([train.object_counts().max() + 5])

    crowded = ShapePlan.for_training(TrainConfig(pad=True, num_buckets=2, batch_size=3), RESIZE, flip, train, Crowded())
    assert crowded.buckets[-1] == train.object_counts().max() + 5  # its top bucket holds them
    dynamic = ShapePlan.for_training(TrainConfig(pad=False, num_buckets=0, batch_size=3), RESIZE, flip, train, val)
    assert dynamic == ShapePlan() and dynamic.like_shape_batches and not dynamic.static

    assert len(train) % 3 and len(val) % 3  # a short last batch in each split
    data = DetectionData(train, val, RESIZE, 3, 0, plans["square"], seed=0)
    train_batches = list(data.train_dataloader())
    assert {tuple(b.pixel_values.shape) for b in train_batches} == {(3, 3, 144, 144)}  # the short batch dropped
    assert len(train_batches) == len(train) // 3
    val_batches = list(data.val_dataloader())  # every image, the last batch filled with blank images
    assert {tuple(b.pixel_values.shape) for b in val_batches} == {(3, 3, 144, 144)}
    assert sum(int((b.image_ids >= 0).sum()) for b in val_batches) == len(val)
    assert {b.labels.shape[1] for b in train_batches + val_batches} <= set(plans["square"].buckets)
    dynamic_data = DetectionData(train, val, RESIZE, 3, 0, dynamic, seed=0)
    assert sum(map(len, dynamic_data.train_dataloader())) == len(train)  # dynamic shapes drop nothing

    inference = ShapePlan.for_inference(RESIZE, pad=True, batch_size=3)
    assert inference == ShapePlan.fixed((144, 144), fill_to=3) and ShapePlan.for_inference(RESIZE, False, 3) == ShapePlan()
    aspects = [r.aspect for r in val.records]
    assert inference.inference_batches(aspects, 3) == aspect_sorted_batches(aspects, 3)
    collate = inference.collator(RESIZE)
    assert (collate.canvases, collate.fill_to, collate.buckets) == ([(144, 144)], 3, [])


def test_shape_batches_cover_everything_once_and_never_mix_orientations():
    aspects = [1.5 if i % 3 == 0 else 0.75 + i / 100 for i in range(23)]  # every third image portrait
    sampler = ShapeBatchSampler(aspects, batch_size=4, shuffle=True, seed=1)
    sampler.set_epoch(2)
    batches = list(sampler)
    seen = [i for b in batches for i, epoch in b]
    assert sorted(seen) == list(range(23)) and all(e == 2 for b in batches for _, e in b)
    assert all(len({aspects[i] > 1 for i, _ in b}) == 1 for b in batches)
    sampler.set_epoch(3)
    assert [i for b in sampler for i, _ in b] != seen  # a new order every epoch
    dropped = ShapeBatchSampler(aspects, batch_size=4, shuffle=False, drop_last=True)
    assert all(len(b) == 4 for b in dropped)
    # not shuffled (validation): sorted by aspect ratio, the same every epoch, orientations apart
    fixed = ShapeBatchSampler(aspects, batch_size=4, shuffle=False)
    order = [i for b in fixed for i, _ in b]
    assert order == sorted(range(23), key=aspects.__getitem__)
    assert all(len({aspects[i] > 1 for i, _ in b}) == 1 for b in fixed)
    assert aspect_sorted_batches(aspects, 4) == [[i for i, _ in b] for b in fixed]
    # merge_short: 9 landscape and 7 portrait images leave short batches of 1 and 3, which make one
    # mixed batch: the epoch has 16 / 4 batches, as without grouping
    nine_seven = [0.5] * 9 + [2.0] * 7
    merged = list(ShapeBatchSampler(nine_seven, batch_size=4, shuffle=True, merge_short=True))
    assert [len(b) for b in merged] == [4] * 4 and sorted(i for b in merged for i, _ in b) == list(range(16))
    assert sum(len({nine_seven[i] > 1 for i, _ in b}) == 2 for b in merged) == 1
    assert sorted(map(len, ShapeBatchSampler(nine_seven, 4, shuffle=True))) == [1, 3, 4, 4, 4]  # not merged


def test_batch_padding_fraction_counts_the_pixels_each_batch_pads():
    sizes = [(10, 20), (20, 10), (10, 10)]
    assert batch_padding_fraction(sizes, [[0], [1], [2]]) == 0.0
    assert batch_padding_fraction(sizes, [[0, 1], [2]]) == pytest.approx(1 - 500 / 900)  # two 20x20 + 10x10


def test_sharding_splits_one_global_order_evenly():
    items = list(range(10))
    shards = [_shard(items, r, 3) for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]
    assert sorted(set(sum(shards, []))) == items
    assert len(EpochSampler(10, shuffle=False)) == 10  # one process: everything


def run_train(synthetic_dir, out, *extra):
    rc = main(["train", "--data-dir", str(synthetic_dir), "--model", "detr-tiny", "--batch-size", "4",
               "--num-workers", "0", "--output-dir", str(out), "--max-inf-frames", "0", *extra])
    assert rc == 0
    return json.loads((out / "metrics.json").read_text())


def step_losses(out):
    return [r["train_loss"] for r in csv.DictReader(open(out / "metrics.csv")) if r["train_loss"]]


@pytest.mark.slow
def test_compile_compiles_the_train_and_eval_forward_once_each_with_uneven_splits(tmp_path, capsys):
    """18 training and 7 validation images, batch 4, ``--pad --num-buckets 2``: the training loader drops its
    short last batch and validation fills its last one (3 images) with a blank image, so the compiled
    forward sees one shape in training and one in validation: 2 compilations, the README's figure (at most
    K + 1; "2, train and eval forward"). A short batch that got through would compile a third. Every
    augmentation is on (multi-scale, crops, zoom-outs): all on one canvas, no new shapes."""
    from detr_ft.data.synthetic import SyntheticSpec, generate

    data = tmp_path / "data"
    generate(data, train=18, val=7, seed=3, spec=SyntheticSpec(size=96, max_objects=4))
    k = 2
    summary = run_train(data, tmp_path / "run", "--max-epochs", "1", "--pad", "--num-buckets", str(k), "--compile",
                        "--augment", "strong")
    assert summary["canvases"] == [[192, 192]]
    assert len(summary["buckets"]) <= k and summary["steps"] == 18 // 4
    assert summary["recompiles"] == 2
    assert "  recompiles: 2\n" in capsys.readouterr().out  # told, not only in the file
    assert np.isfinite([float(x) for x in step_losses(tmp_path / "run")]).all()


# One preset per kind of compiled forward (model/outputs.py, Family.compile_parts): --compile is too costly
# on 2 cores for all ten. Stand-ins: RT-DETR for RT-DETRv2, D-FINE and DEIMv2 (the same compiled parts:
# backbone and hybrid encoder), LW-DETR for RF-DETR (the Group-DETR path), Deformable DETR for DAB-DETR and
# Conditional DETR (whole DETR-like base models; one-off runs of D-FINE, DAB-DETR and Conditional DETR
# compiled once too); DETR: the test above, with inductor.
COMPILE_LINES = available(("deformable-detr-tiny", "rtdetr-tiny", "lwdetr-tiny"))


@pytest.mark.parametrize("preset", COMPILE_LINES)
def test_compile_with_pad_compiles_each_family_line_once(preset, tiny_data_dir, tmp_path, monkeypatch):
    """``--compile --pad``, one family per line of forward code (COMPILE_LINES): 4 training steps,
    one compilation, none after the first step, finite losses. Dynamo traces the forward and AOTAutograd
    the backward as in a real run; the graphs then run eagerly (``aot_eager``): inductor's code
    generation, a minute a family on 2 cores, runs for DETR above. Sees graph breaks that hide a shape
    guard, data-dependent shapes and code dynamo cannot trace."""
    real_compile = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile",
                        lambda self, **kwargs: real_compile(self, **{**kwargs, "backend": "aot_eager"}))
    out = tmp_path / "run"
    summary = run_train(tiny_data_dir, out, "--model", preset, *small_images(preset), "--batch-size", "2",
                        "--max-steps", "4", "--train-only", "--pad", "--num-buckets", "1", "--compile")
    assert summary["steps"] == 4 and summary["recompiles"] == 1
    losses = [float(x) for x in step_losses(out)]
    assert len(losses) == 4 and np.isfinite(losses).all()


def test_pad_canvases_auto_reports_the_saving(synthetic_dir, tmp_path):
    summary = run_train(synthetic_dir, tmp_path, "--max-steps", "3", "--pad", "--pad-canvases", "auto",
                        "--num-buckets", "1", "--train-only")
    assert summary["canvases"] == [[128, 192], [192, 128]]
    assert summary["padded_pixel_fraction"] < summary["padded_pixel_fraction_square"]


def test_no_pad_batches_images_of_like_shape(synthetic_dir, tmp_path, capsys):
    summary = run_train(synthetic_dir, tmp_path, "--max-steps", "2", "--no-pad", "--num-buckets", "0",
                        "--train-only", "--seed", "4")
    records = load_index(synthetic_dir, "train").records
    resize = PRESETS["detr-tiny"][1]
    sizes = [resize.output_size(r.height, r.width) for r in records]
    mixed = [[i for i, _ in b] for b in torch.utils.data.BatchSampler(EpochSampler(len(sizes), True, 4), 4, False)]
    # the first epoch's batches pad under half the pixels that batches in plain shuffled order would
    # (here 14 % vs 40 %)
    assert 0 <= summary["padded_pixel_fraction"] < batch_padding_fraction(sizes, mixed) / 2
    assert f"padded pixels: {summary['padded_pixel_fraction']:.1%}" in capsys.readouterr().out


class _DuringTraining(L.Callback):
    """What each training step saw: the loader's worker count, live child processes, whether
    deterministic algorithms were on, and the output dtypes of every convolution and linear layer."""

    def __init__(self):
        self.steps: list[dict] = []
        self._hooks: list = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        step = {"workers": trainer.train_dataloader.num_workers, "children": len(multiprocessing.active_children()),
                "deterministic": torch.are_deterministic_algorithms_enabled(), "conv": set(), "linear": set()}
        self.steps.append(step)
        for layer in module.model.modules():
            kind = "conv" if isinstance(layer, torch.nn.Conv2d) else "linear" if isinstance(layer, torch.nn.Linear) else ""
            if kind:
                self._hooks.append(layer.register_forward_hook(
                    lambda m, i, o, kind=kind: step[kind].add(o.dtype)))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()


def train_watched(monkeypatch, synthetic_dir, out, *extra) -> list[dict]:
    """``run_train`` through the CLI with a ``_DuringTraining`` callback inside the run; its steps."""
    from detr_ft import train

    watch = _DuringTraining()
    real_fit = train.fit
    monkeypatch.setattr(train, "fit", lambda cfg, extra_callbacks=(): real_fit(cfg, (*extra_callbacks, watch)))
    run_train(synthetic_dir, out, *extra)
    return watch.steps


def test_deterministic_runs_are_bit_identical_with_single_process_loading(synthetic_dir, tmp_path, monkeypatch):
    """``--deterministic --num-workers 2``: inside the run, no loader worker and deterministic algorithms
    on; two runs give bit-identical losses and weights; after the run, the process's setting is its own again."""
    torch.use_deterministic_algorithms(False)  # whatever an earlier test left
    args = ["--max-epochs", "2", "--deterministic", "--num-workers", "2", "--pad", "--num-buckets", "1",
            "--train-only", "--seed", "5"]
    for run in ("a", "b"):
        steps = train_watched(monkeypatch, synthetic_dir, tmp_path / run, *args)
        assert len(steps) == 8 and all(s["workers"] == 0 and s["children"] == 0 and s["deterministic"]
                                       for s in steps), steps
        assert not torch.are_deterministic_algorithms_enabled()  # restored when the run ended
    assert step_losses(tmp_path / "a") == step_losses(tmp_path / "b")
    wa = torch.load(tmp_path / "a" / "last.ckpt", weights_only=True)["state_dict"]
    wb = torch.load(tmp_path / "b" / "last.ckpt", weights_only=True)["state_dict"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("preset", ALL_PRESETS)
def test_autocast_trains_in_bf16_on_cpu(preset, synthetic_dir, tmp_path, monkeypatch):
    """``--autocast``, every family: every convolution and linear layer of each training step's forward
    runs in bfloat16 (forward hooks inside the run); the losses stay finite. Without it, float32."""
    model = ["--model", preset, *small_images(preset)]  # after run_train's --model: argparse takes the last
    steps = train_watched(monkeypatch, synthetic_dir, tmp_path / "bf16", "--max-steps", "2", "--autocast",
                          "--train-only", *model)
    assert len(steps) == 2 and all(s["conv"] == s["linear"] == {torch.bfloat16} for s in steps), steps
    losses = [float(x) for x in step_losses(tmp_path / "bf16")]
    assert len(losses) == 2 and np.isfinite(losses).all()
    assert "autocast: true" in (tmp_path / "bf16" / "config.yaml").read_text()
    if preset == "detr-tiny":  # the default is float32 (one family shows it: no family sets it)
        steps = train_watched(monkeypatch, synthetic_dir, tmp_path / "fp32", "--max-steps", "1", "--train-only",
                              *model)
        assert steps[0]["conv"] == steps[0]["linear"] == {torch.float32}
