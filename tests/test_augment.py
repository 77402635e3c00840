"""Training augmentation (data/augment.py): boxes follow pixels, orientation and canvases hold,
draws depend on (seed, epoch, index) only, bad flags are one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from detr_ft.data.augment import AugmentSpec, augment_spec
from detr_ft.types import ResizeSpec

BLACK_FILL = ResizeSpec(64, 96, mean=(0.0, 0.0, 0.0))  # zoom-out frames black, like the background
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255)]
GEOMETRIC = {
    "flip": AugmentSpec(hflip=1.0),
    "scales": AugmentSpec(hflip=0.5, scales=(40, 80)),
    "crop": AugmentSpec(hflip=0.5, crop=1.0, crop_min=0.4, min_visibility=0.2),
    "zoom_out": AugmentSpec(hflip=0.5, zoom_out=1.0, zoom_out_max=2.5),
    "detr": AugmentSpec(hflip=0.5, scales=(40, 64), crop=0.5),
}


def painted(width: int, height: int, rng: np.random.Generator, n: int):
    """A black image with ``n`` non-overlapping boxes, box k painted COLOURS[k]; (image, cxcywh, labels)."""
    a = np.zeros((height, width, 3), np.uint8)
    boxes, cols = [], width // n
    for k in range(n):
        w, h = int(rng.integers(12, cols - 2)), int(rng.integers(12, height // 2))
        x, y = k * cols + int(rng.integers(0, cols - w)), int(rng.integers(0, height - h))
        a[y:y + h, x:x + w] = COLOURS[k]
        boxes.append([(x + w / 2) / width, (y + h / 2) / height, w / width, h / height])
    return Image.fromarray(a), np.array(boxes, np.float32).reshape(-1, 4), np.arange(n, dtype=np.int64)


def colour_box(pixels: torch.Tensor, colour) -> tuple[float, float, float, float] | None:
    """Pixel (x0, y0, x1, y1) around the pixels within 60 levels of ``colour``, None if there are none."""
    diff = (pixels.int() - torch.tensor(colour).view(3, 1, 1)).abs().amax(0)
    ys, xs = torch.nonzero(diff < 60, as_tuple=True)
    if len(xs) == 0:
        return None
    return float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1


def pixel_box(box, pixels: torch.Tensor):
    h, w = pixels.shape[1:]
    cx, cy, bw, bh = box
    return (cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h


@pytest.mark.parametrize("name", GEOMETRIC)
@pytest.mark.parametrize("landscape", [True, False])
def test_boxes_follow_their_pixels(name, landscape):
    spec, rng = GEOMETRIC[name], np.random.default_rng(0)
    kept_some = 0
    for seed in range(12):
        image, boxes, labels = painted(150, 100, rng, 3) if landscape else painted(100, 150, rng, 2)
        pixels, out, kept = spec.apply(image, boxes, labels, np.random.default_rng(seed), BLACK_FILL)
        assert pixels.dtype == torch.uint8 and out.shape == (len(kept), 4) and out.dtype == np.float32
        for box, label in zip(out, kept):
            found = colour_box(pixels, COLOURS[label])
            assert found is not None, (name, seed, label)
            assert np.abs(np.array(found) - pixel_box(box, pixels)).max() <= 1.5, (name, seed, label, found)
            kept_some += 1
        for label in set(labels) - set(kept):  # dropped: little or nothing of it left in view
            found = colour_box(pixels, COLOURS[label])
            assert spec.crop > 0 and (found is None or (found[2] - found[0]) * (found[3] - found[1]) < 0.5 * (
                pixels.shape[1] * pixels.shape[2])), (name, seed, label)
    assert kept_some >= 12


@pytest.mark.parametrize("seed", range(6))
def test_strong_with_colours_keeps_the_box_on_its_pixels(seed):
    """Photometric distortion changes colours, not places: a white box on black, found by brightness."""
    a = np.zeros((90, 140, 3), np.uint8)
    a[20:60, 30:100] = 255
    boxes = np.array([[65 / 140, 40 / 90, 70 / 140, 40 / 90]], np.float32)
    spec = augment_spec("strong", BLACK_FILL, photometric=1.0, min_visibility=0.0)
    pixels, out, kept = spec.apply(Image.fromarray(a), boxes, np.array([0]), np.random.default_rng(seed), BLACK_FILL)
    grey = pixels.float().mean(0)
    ys, xs = torch.nonzero(grey > (grey.max() + grey.min()) / 2, as_tuple=True)
    if len(kept):
        found = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=float)
        assert np.abs(found - pixel_box(out[0], pixels)).max() <= 1.5
    else:
        assert len(xs) == 0 or grey.max() - grey.min() < 40


def test_photometric_changes_colours_within_its_strengths():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))
    base = AugmentSpec(hflip=0.0).apply(image, np.zeros((0, 4), np.float32), np.zeros(0, np.int64),
                                        np.random.default_rng(1), BLACK_FILL)[0]
    still = AugmentSpec(hflip=0.0, photometric=1.0, jitter=(0, 0, 0, 0))
    assert torch.equal(still.apply(image, np.zeros((0, 4)), np.zeros(0), np.random.default_rng(1), BLACK_FILL)[0],
                       base)
    moved = AugmentSpec(hflip=0.0, photometric=1.0).apply(image, np.zeros((0, 4)), np.zeros(0),
                                                          np.random.default_rng(1), BLACK_FILL)[0]
    assert moved.shape == base.shape and (moved.int() - base.int()).abs().float().mean() > 3


@pytest.mark.parametrize("shape", [(100, 150), (150, 100), (120, 120), (121, 120), (10, 200), (200, 10)])
def test_orientation_class_and_envelope_hold(shape):
    """Landscape (h <= w) stays h <= w, portrait stays h >= w, every output within the envelope's bound."""
    h, w = shape
    resize = ResizeSpec(64, 96)
    spec = augment_spec("strong", resize, scales=[40, 80], zoom_out_max=3.0, crop_min=0.1)
    env = spec.envelope(resize)
    assert (env.shortest, env.longest) == (80, 120)
    image = Image.new("RGB", (w, h))
    for seed in range(20):
        pixels = spec.apply(image, np.zeros((0, 4)), np.zeros(0), np.random.default_rng(seed), resize)[0]
        oh, ow = pixels.shape[1:]
        assert (oh <= ow) if h <= w else (oh >= ow), (seed, oh, ow)
        assert min(oh, ow) <= env.shortest and max(oh, ow) <= env.longest, (seed, oh, ow)


@pytest.mark.parametrize("preset", ["flip", "detr", "strong"])
def test_a_fixed_size_rule_gives_its_size_at_each_scale_within_the_canvas(preset):
    """RT-DETR-line processors resize to a fixed height x width: every augmented image has that shape
    scaled by the drawn short side, and fits the envelope's (enlarged) fixed canvas."""
    resize = ResizeSpec.fixed_size(48, 64)
    spec = augment_spec(preset, resize, scales=[32, 64])
    env = spec.envelope(resize)
    assert env.max_canvas == (64, 85)
    for seed in range(12):
        for w, h in ((100, 60), (60, 100)):
            pixels = spec.apply(Image.new("RGB", (w, h)), np.zeros((0, 4)), np.zeros(0),
                                np.random.default_rng(seed), resize)[0]
            oh, ow = pixels.shape[1:]
            assert abs(ow / oh - 64 / 48) < 0.05 and oh <= 64 and ow <= 85, (preset, seed, oh, ow)


def test_empty_images_and_everything_cropped_away():
    full = np.array([[0.5, 0.5, 1.0, 1.0]], np.float32)
    spec = AugmentSpec(hflip=0.5, crop=1.0, crop_min=0.3, min_visibility=0.99, photometric=1.0)
    image = Image.new("RGB", (80, 60), (90, 20, 200))
    emptied = 0
    for seed in range(8):
        for boxes in (np.zeros((0, 4), np.float32), full):
            pixels, out, labels = spec.apply(image, boxes, np.zeros(len(boxes), np.int64),
                                             np.random.default_rng(seed), BLACK_FILL)
            assert out.shape == (len(labels), 4) and labels.dtype == np.int64 and pixels.shape[0] == 3
            emptied += len(boxes) == 1 and len(labels) == 0
    assert emptied >= 6  # a 99 %-visible whole-image box survives only near-full crops


def test_collated_batch_of_images_without_objects(synthetic_dir):
    from detr_ft.data.batching import Collator
    from detr_ft.data.coco import load_index
    from detr_ft.data.dataset import DetectionDataset

    index = load_index(synthetic_dir, "train")
    spec = AugmentSpec(hflip=0.5, crop=1.0, crop_min=0.05, min_visibility=1.0)
    ds = DetectionDataset(index, ResizeSpec(48, 72), train=True, augment=spec)
    samples = [ds[(i, 0)] for i in range(4)]
    batch = Collator(ResizeSpec(48, 72).mean, ResizeSpec(48, 72).std, canvases=[(72, 72)], buckets=[4])(samples)
    assert batch.pixel_values.shape == (4, 3, 72, 72)
    assert int(batch.valid.sum()) == sum(len(s.labels) for s in samples)


def epoch_samples(dataset, workers: int, epoch: int):
    from torch.utils.data import DataLoader

    from detr_ft.data.sampling import EpochSampler

    sampler = EpochSampler(len(dataset), shuffle=True, seed=5)
    sampler.set_epoch(epoch)
    loader = DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=workers)
    return {s.image_id: s for s in loader}


def test_draws_depend_on_seed_epoch_and_index_only(synthetic_dir):
    from detr_ft.data.coco import load_index
    from detr_ft.data.dataset import DetectionDataset

    index = load_index(synthetic_dir, "train")
    spec = augment_spec("strong", ResizeSpec(48, 72))
    ds = DetectionDataset(index, ResizeSpec(48, 72), train=True, seed=7, augment=spec)
    one, two = epoch_samples(ds, 0, 3), epoch_samples(ds, 2, 3)
    assert one.keys() == two.keys() and len(one) == len(index)
    for k in one:
        assert torch.equal(one[k].image, two[k].image) and torch.equal(one[k].boxes, two[k].boxes)
        assert torch.equal(one[k].labels, two[k].labels)
    other = epoch_samples(ds, 0, 4)
    assert sum(not torch.equal(one[k].image, other[k].image) for k in one) >= len(one) // 2


def test_flip_preset_draws_the_flips_of_before():
    """--augment flip is the old hflip path: flip iff the (seed, epoch, index) draw's first number is < p."""
    spec = augment_spec("flip", BLACK_FILL)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 50, 3), dtype=np.uint8))
    plain = spec.apply(image, np.zeros((0, 4)), np.zeros(0), np.random.default_rng(0), BLACK_FILL)[0]
    for key in [(1, 0, 0), (1, 0, 1), (1, 2, 3), (9, 9, 9)]:
        flipped = np.random.default_rng(key).random() < 0.5
        pixels = spec.apply(image, np.zeros((0, 4)), np.zeros(0), np.random.default_rng(key), BLACK_FILL)[0]
        assert torch.equal(pixels, plain.flip(-1) if flipped else plain)


@pytest.mark.parametrize("flags,name", [
    (["--augment", "heavy"], "--augment"),
    (["--scales", "300", "200"], "--scales"),
    (["--scales", "16", "64"], "--scales"),
    (["--crop", "1.5"], "--crop"),
    (["--photometric", "-0.1"], "--photometric"),
    (["--hflip", "2"], "--hflip"),
    (["--min-visibility", "1.2"], "--min-visibility"),
    (["--crop-min", "0"], "--crop-min"),
    (["--zoom-out-max", "0.5"], "--zoom-out-max"),
    (["--jitter", "0.1", "0.1", "0.1", "0.9"], "--jitter"),
    (["--image-size", "16"], "--image-size"),
    (["--image-size", "200", "100"], "--image-size"),
])
def test_bad_augmentation_flags_are_one_line(flags, name, capsys, tmp_path):
    from detr_ft.cli import main

    with pytest.raises(SystemExit) if name == "--augment" else _no_raise():
        rc = main(["train", "--data-dir", str(tmp_path), "--model", "detr-tiny", "--output-dir", str(tmp_path / "o"),
                   *flags])
        assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and name in err, err


class _no_raise:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_shape_batches_never_mix_orientations_after_augmentation(synthetic_dir):
    """--no-pad / --pad-canvases auto group by the JSON's aspect before augmentation: crops keep the
    orientation class, so no batch holds a landscape (h < w) and a portrait (h > w) image, and each
    batch fits the envelope's canvas of its orientation."""
    from detr_ft.data.batching import Collator
    from detr_ft.data.coco import load_index
    from detr_ft.data.dataset import DetectionDataset
    from detr_ft.data.sampling import ShapeBatchSampler

    index, resize = load_index(synthetic_dir, "train"), ResizeSpec(48, 72)
    spec = augment_spec("strong", resize, crop=1.0, crop_min=0.1, scales=[32, 64])
    ds = DetectionDataset(index, resize, train=True, seed=1, augment=spec)
    env = spec.envelope(resize)
    collate = Collator(resize.mean, resize.std, canvases=env.orientation_canvases)
    sampler = ShapeBatchSampler([r.aspect for r in index.records], 4, shuffle=True, seed=1)
    assert {r.aspect > 1 for r in index.records} == {True, False}  # both orientations present
    for epoch in range(2):
        sampler.set_epoch(epoch)
        for keys in sampler:
            samples = [ds[k] for k in keys]
            shapes = [tuple(s.image.shape[1:]) for s in samples]
            assert not (any(h > w for h, w in shapes) and any(h < w for h, w in shapes)), shapes
            collate(samples)  # fits a canvas (raises otherwise)


def test_image_size_is_saved_and_used_by_eval_predict_and_export(synthetic_dir, tmp_path):
    import json

    from detr_ft.cli import main
    from detr_ft.detector import Detector
    from detr_ft.export import export

    out = tmp_path / "run"
    assert main(["train", "--data-dir", str(synthetic_dir), "--model", "detr-tiny", "--max-steps", "1",
                 "--batch-size", "4", "--num-workers", "0", "--train-only", "--image-size", "80", "112",
                 "--augment", "detr", "--scales", "48", "100", "--output-dir", str(out)]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["canvases"] == [[140, 140]]  # scales above SHORT enlarge the canvas: 112 x 100 / 80
    assert summary["resize"] == [80, 112] and summary["augment"]["scales"] == [48, 100]
    assert summary["augment"]["crop"] == 0.5 and summary["augment"]["hflip"] == 0.5  # the detr preset's
    ckpt = out / "last.ckpt"
    resize = Detector.load(ckpt, device="cpu").resize
    assert (resize.shortest, resize.longest) == (80, 112)
    smaller = Detector.load(ckpt, device="cpu", image_size=[64]).resize
    assert (smaller.shortest, smaller.longest) == (64, 90)  # the saved long/short ratio
    config = json.loads((export(str(ckpt), tmp_path / "hf") / "preprocessor_config.json").read_text())
    assert config["size"] == {"shortest_edge": 80, "longest_edge": 112}
    assert Detector.load(tmp_path / "hf", device="cpu").resize.shortest == 80


@pytest.mark.parametrize("preset", ["flip", "strong"])
def test_bench_stock_side_augments_alike(preset, synthetic_dir):
    """bench --what data --augment: the stock side (processor after albumentations, or a NumPy flip)
    yields images at the preset's scales and boxes that stay normalised."""
    if preset != "flip":
        pytest.importorskip("albumentations")
    from detr_ft.bench.stock import StockCocoDetection, stock_augmentation, stock_processor
    from detr_ft.data.coco import load_index

    resize = ResizeSpec(48, 72)
    spec = augment_spec(preset, resize, hflip=1.0)
    index = load_index(synthetic_dir, "train")
    label_of = {cid: i for i, cid in enumerate(index.categories.ids)}
    plain = StockCocoDetection(synthetic_dir / "images", synthetic_dir / "annotations" / "train.json",
                               stock_processor(resize), label_of)
    augmented = StockCocoDetection(synthetic_dir / "images", synthetic_dir / "annotations" / "train.json",
                                   stock_processor(resize), label_of, stock_augmentation(spec, resize))
    for i in range(4):
        (p0, t0), (p1, t1) = plain[i], augmented[i]
        hi = spec.scales[1] if spec.scales else 48
        assert min(p1.shape[1:]) <= hi and max(p1.shape[1:]) <= spec.envelope(resize).longest
        assert len(t1["boxes"]) <= len(t0["boxes"]) and ((t1["boxes"] >= 0) & (t1["boxes"] <= 1)).all()
        if preset == "flip":  # mirrored pixels and boxes
            assert torch.allclose(p1, p0.flip(-1)) and torch.allclose(t1["boxes"][:, 0], 1 - t0["boxes"][:, 0])


def test_canvas_check_names_the_real_sizes():
    """A 200 x 1000 strip at DETR's 800/1333 fits the default canvas (it became 267 x 1335 and failed
    with "--pad-size None: smaller than the resized images"); a small --pad-size names what fits."""
    from types import SimpleNamespace

    from detr_ft.config import TrainConfig
    from detr_ft.errors import UserError
    from detr_ft.data.padding import pad_canvases
    from detr_ft.data.shape_plan import check_canvases, largest_sizes

    records = [SimpleNamespace(height=200, width=1000), SimpleNamespace(height=600, width=800)]
    resize = ResizeSpec(800, 1333)
    for cfg in (TrainConfig(), TrainConfig(pad_canvases="auto")):
        check_canvases(cfg.pad_size, pad_canvases(resize, cfg.pad_canvases, cfg.pad_size),
                       largest_sizes(records, resize, False), resize)
    small = TrainConfig(pad_size=[800, 1200])
    with pytest.raises(UserError, match=r"--pad-size 800 1200: the canvas 800x1200 is smaller than a training "
                                        r"image of 267x1333 .* at least 800x1333"):
        check_canvases(small.pad_size, pad_canvases(resize, small.pad_canvases, small.pad_size),
                       largest_sizes(records, resize, False), resize)
    crops = largest_sizes(records, augment_spec("detr", resize).envelope(resize), True)
    assert crops == [(800, 1333), (800, 1333)]  # a crop may take any landscape shape within the envelope
