"""Interoperability and reports: 🤗 datasets input, the metric cross-check against
pycocotools, YAML configs, plots and the ``Detector`` API."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from detr_ft.cli import main

TRAIN_FAST = ["--model", "detr-tiny", "--batch-size", "4", "--num-workers", "0"]


# --- 🤗 datasets --------------------------------------------------------------------


def coco_split_to_rows(data_dir: Path, split: str) -> tuple[dict, list[str]]:
    """One COCO split as CPPE-5 hub columns (objects as a dict of lists) and the class names."""
    doc = json.loads((data_dir / "annotations" / f"{split}.json").read_text())
    cats = sorted(doc["categories"], key=lambda c: c["id"])
    index = {c["id"]: i for i, c in enumerate(cats)}
    rows = {"image": [], "image_id": [], "width": [], "height": [], "objects": []}
    for im in doc["images"]:
        anns = [a for a in doc["annotations"] if a["image_id"] == im["id"]]
        with Image.open(data_dir / "images" / im["file_name"]) as src:
            rows["image"].append(src.copy())
        rows["image_id"].append(im["id"])
        rows["width"].append(im["width"])
        rows["height"].append(im["height"])
        rows["objects"].append({"id": [a["id"] for a in anns], "area": [a["bbox"][2] * a["bbox"][3] for a in anns],
                                "bbox": [a["bbox"] for a in anns], "category": [index[a["category_id"]] for a in anns]})
    return rows, [c["name"] for c in cats]


def cppe5_features(names: list[str]):
    from datasets import ClassLabel, Features, List, Value
    from datasets import Image as HfImage

    return Features({"image": HfImage(), "image_id": Value("int64"), "width": Value("int32"),
                     "height": Value("int32"),
                     "objects": {"id": List(Value("int64")), "area": List(Value("float32")),
                                 "bbox": List(List(Value("float32"), length=4)),
                                 "category": List(ClassLabel(names=names))}})


@pytest.fixture(scope="module")
def hf_dir(synthetic_dir, tmp_path_factory) -> Path:
    """The synthetic dataset as a CPPE-5-schema DatasetDict on disk ('train' and 'validation')."""
    from datasets import Dataset, DatasetDict

    splits = {}
    for ours, theirs in (("train", "train"), ("test", "validation")):
        rows, names = coco_split_to_rows(synthetic_dir, ours)
        splits[theirs] = Dataset.from_dict(rows, features=cppe5_features(names))
    out = tmp_path_factory.mktemp("hf") / "shapes"
    DatasetDict(splits).save_to_disk(str(out))
    return out


def test_hf_dataset_gives_the_same_batches_as_the_coco_reader(hf_dir, synthetic_dir):
    from detr_ft.data.batching import Collator
    from detr_ft.data.coco import load_index
    from detr_ft.data.dataset import DetectionDataset
    from detr_ft.data.hf_dataset import load_hf_index
    from detr_ft.model.build import PRESETS

    resize = PRESETS["detr-tiny"][1]
    for split in ("train", "test"):
        coco, hf = load_index(synthetic_dir, split), load_hf_index(str(hf_dir), split)
        assert hf.categories.names == coco.categories.names and hf.categories.ids == tuple(range(5))
        assert [(r.image_id, r.width, r.height) for r in hf.records] == \
               [(r.image_id, r.width, r.height) for r in coco.records]
        for a, b in zip(hf.records, coco.records):
            np.testing.assert_array_equal(a.labels, b.labels)
            np.testing.assert_allclose(a.boxes, b.boxes, rtol=0, atol=1e-4)
        collate = Collator(resize.mean, resize.std, canvases=[resize.max_canvas], buckets=[4])
        for train in (False, True):
            ds_hf = DetectionDataset(hf, resize, train=train, seed=1)
            ds_coco = DetectionDataset(coco, resize, train=train, seed=1)
            keys = [(i, 3) for i in range(len(ds_coco))]
            batch_hf, batch_coco = collate([ds_hf[k] for k in keys]), collate([ds_coco[k] for k in keys])
            for name in ("pixel_values", "pixel_mask", "labels", "valid", "image_ids", "orig_sizes"):
                assert torch.equal(getattr(batch_hf, name), getattr(batch_coco, name)), (split, name)
            torch.testing.assert_close(batch_hf.boxes, batch_coco.boxes, rtol=0, atol=1e-5)


def test_train_eval_predict_on_a_hf_dataset_through_the_cli(hf_dir, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--hf-dataset", str(hf_dir), *TRAIN_FAST, "--batch-size", "8", "--max-epochs", "1",
                 "--max-inf-frames", "2", "--output-dir", str(run)]) == 0
    summary = json.loads((run / "metrics.json").read_text())
    last_val = [r for r in csv.DictReader(open(run / "metrics.csv")) if r.get("val_map")][-1]
    assert summary["steps"] == 2 and summary["map"] == pytest.approx(float(last_val["val_map"]), abs=1e-6)
    assert len(list((run / "predictions" / "images").glob("*.jpg"))) == 2
    assert main(["eval", "--ckpt-path", str(run / "last.ckpt"), "--hf-dataset", str(hf_dir),
                 "--output-dir", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["images"] == 8 and set(metrics["per_class"]) == {"circle", "square", "triangle", "cross", "star"}
    assert main(["predict", "--ckpt-path", str(run / "last.ckpt"), "--hf-dataset", str(hf_dir),
                 "--max-inf-frames", "3", "--output-dir", str(tmp_path / "pred")]) == 0
    assert len(list((tmp_path / "pred" / "images").glob("*.jpg"))) == 3


def test_list_of_objects_plain_categories_and_no_size_columns(tmp_path):
    """Another common layout: objects as a list of dicts, integer categories, no
    image_id/width/height (the sizes come from the image headers)."""
    from datasets import Dataset, DatasetDict

    from detr_ft.data.hf_dataset import load_hf_index

    images = [Image.new("RGB", (40, 30), "red"), Image.new("RGB", (20, 50), "blue")]
    objects = [[{"bbox": [1.0, 2.0, 10.0, 5.0], "category": 3}, {"bbox": [30.0, 20.0, 20.0, 20.0], "category": 8}],
               []]
    split = Dataset.from_dict({"image": images, "objects": objects})
    DatasetDict({"train": split, "test": split}).save_to_disk(str(tmp_path / "ds"))
    index = load_hf_index(str(tmp_path / "ds"), "train")
    assert index.categories.ids == (3, 8) and index.categories.names == ("3", "8")
    assert [(r.image_id, r.width, r.height) for r in index.records] == [(0, 40, 30), (1, 20, 50)]
    np.testing.assert_allclose(index.records[0].boxes, [[1, 2, 10, 5], [30, 20, 10, 10]])  # second one clipped
    assert index.report.clipped_boxes == 1
    assert index.load_image(index.records[1]).size == (20, 50)


def test_hf_images_are_sized_upright_and_a_broken_one_is_a_clear_error(tmp_path):
    """Without size columns, an EXIF-rotated JPEG is sized as displayed (from its header); an
    image whose header does not read is a bad row; one that does not decode is one UserError
    naming its image_id."""
    import io

    from datasets import Dataset, DatasetDict, Features, Image as ImageFeature, Sequence, Value

    from detr_ft.data.hf_dataset import load_hf_index
    from detr_ft.errors import UserError

    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned a quarter: 30 wide, 60 high
    rotated = io.BytesIO()
    Image.new("RGB", (60, 30), "red").save(rotated, format="JPEG", exif=exif.tobytes())
    features = Features({"image": ImageFeature(), "objects": {"bbox": Sequence(Sequence(Value("float32"))),
                                                              "category": Sequence(Value("int64"))}})
    split = Dataset.from_dict({"image": [{"bytes": rotated.getvalue(), "path": None},
                                         {"bytes": b"\xff\xd8 not really a JPEG", "path": None}],
                               "objects": [{"bbox": [[1.0, 1.0, 5.0, 5.0]], "category": [0]},
                                           {"bbox": [], "category": []}]}, features=features)
    DatasetDict({"train": split}).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(UserError, match=r"1 bad row\(s\): row 1 \(image_id 1\): image not readable"):
        load_hf_index(str(tmp_path / "ds"), "train")
    index = load_hf_index(str(tmp_path / "ds"), "train", on_bad_data="skip")
    assert [(r.width, r.height) for r in index.records] == [(30, 60)]
    assert index.load_image(index.records[0]).size == (30, 60)
    # a cell that breaks after indexing (here: swapped under the index) fails at decoding, as clearly
    index.images = Dataset.from_dict({"image": [{"bytes": b"broken", "path": None}]},
                                     features=Features({"image": ImageFeature(decode=False)}))
    with pytest.raises(UserError, match="image of image_id 0: not a readable image"):
        index.load_image(index.records[0])


def test_bad_rows_error_or_skip(tmp_path):
    from datasets import Dataset, DatasetDict

    from detr_ft.types import Categories
    from detr_ft.data.hf_dataset import load_hf_index
    from detr_ft.errors import UserError

    split = Dataset.from_dict({"image": [Image.new("RGB", (32, 32))] * 3, "objects": [
        {"bbox": [[1, 1, 5, 5]], "category": [0]},
        {"bbox": [[1, 1, 5]], "category": [0]},
        {"bbox": [[1, 1, 5, 5]], "category": [7]}]})
    DatasetDict({"train": split}).save_to_disk(str(tmp_path / "bad"))
    classes = Categories((0, 1), ("0", "1"))
    with pytest.raises(UserError, match=r"2 bad row\(s\): row 1 .*four numbers.*row 2 .*category 7 .*skip"):
        load_hf_index(str(tmp_path / "bad"), "train", categories=classes)
    index = load_hf_index(str(tmp_path / "bad"), "train", on_bad_data="skip", categories=classes)
    assert len(index) == 1 and index.report.skipped_records == 2
    with pytest.raises(UserError, match="no 'test' split \\(nor 'validation', 'val', 'valid'\\); it has 'train'"):
        load_hf_index(str(tmp_path / "bad"), "test")


def test_classes_must_match_between_splits(tmp_path):
    from datasets import Dataset, DatasetDict

    from detr_ft.data.hf_dataset import load_hf_index
    from detr_ft.errors import UserError

    def split(names):
        rows = {"image": [Image.new("RGB", (8, 8))], "image_id": [1], "width": [8], "height": [8],
                "objects": [{"id": [1], "area": [4.0], "bbox": [[0, 0, 2, 2]], "category": [0]}]}
        return Dataset.from_dict(rows, features=cppe5_features(names))

    DatasetDict({"train": split(["cat", "dog"]), "test": split(["dog", "cat"])}).save_to_disk(str(tmp_path / "d"))
    train = load_hf_index(str(tmp_path / "d"), "train")
    with pytest.raises(UserError, match=r"\[test\]: classes \['dog', 'cat'\] differ"):
        load_hf_index(str(tmp_path / "d"), "test", categories=train.categories)


def test_without_the_datasets_library_one_line_names_the_extra(hf_dir, monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    assert main(["train", "--hf-dataset", str(hf_dir), *TRAIN_FAST, "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'detr-ft[hub]'" in err[0] and "--hf-dataset" in err[0]


def test_unreachable_hub_dataset_is_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert main(["train", "--hf-dataset", "nobody/no-such-dataset", *TRAIN_FAST, "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nobody/no-such-dataset" in err[0] and "save_to_disk" in err[0]


# --- metric cross-check ---------------------------------------------------------------


def test_eval_map_equals_pycocotools_on_its_own_detections(trained_run, synthetic_dir, tmp_path):
    """``detr-ft eval``'s map against pycocotools' COCOeval on the same annotation file and
    eval's own detections.json. The ground truth is built around the model's own top
    detections (shifted boxes, a wrong class, a missed object, an image without objects)
    so that the mAP is neither 0 nor 1 and every part of the matching counts."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from detr_ft import Detector

    src = json.loads((synthetic_dir / "annotations" / "test.json").read_text())
    data = tmp_path / "data"
    (data / "annotations").mkdir(parents=True)
    shutil.copytree(synthetic_dir / "images", data / "images")
    detector = Detector.load(trained_run / "last.ckpt")
    top = [detector.predict(synthetic_dir / "images" / im["file_name"], threshold=0.0)[0] for im in src["images"]]
    ids = list(detector.categories.ids)
    annotations = []
    for k, (im, det) in enumerate(zip(src["images"], top)):
        x0, y0, x1, y1 = det["box"]
        w, h = x1 - x0, y1 - y0
        shift = [0.0, 0.1, 0.2, 0.3, 0.0, 0.05, 0.0, 0.15][k % 8] * w  # IoU about 1, .82, .67, .54, ...
        boxes = [] if k == 6 else [[min(x0 + shift, im["width"] - w), y0, w, h]]
        category = det["category_id"] if k != 4 else ids[(ids.index(det["category_id"]) + 1) % len(ids)]
        if k == 5:  # a second, missed object
            boxes.append([0.0, 0.0, im["width"] / 4, im["height"] / 4])
        for box in boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": im["id"], "category_id": category,
                                "bbox": [round(v, 2) for v in box], "area": box[2] * box[3], "iscrowd": 0})
    doc = {"images": src["images"], "annotations": annotations, "categories": src["categories"]}
    (data / "annotations" / "test.json").write_text(json.dumps(doc))

    out = tmp_path / "eval"
    assert main(["eval", "--ckpt-path", str(trained_run / "last.ckpt"), "--data-dir", str(data),
                 "--output-dir", str(out)]) == 0
    ours = json.loads((out / "metrics.json").read_text())
    gt = COCO(str(data / "annotations" / "test.json"))
    ev = COCOeval(gt, gt.loadRes(str(out / "detections.json")), iouType="bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert 0.01 < ev.stats[0] < 0.99 and 0 < ev.stats[2] < ev.stats[1], ev.stats  # non-trivial scores
    for name, k in (("map", 0), ("map_50", 1), ("map_75", 2), ("mar_1", 6), ("mar_100", 8)):
        assert ours[name] == pytest.approx(ev.stats[k], abs=1e-3), name


# --- configs ------------------------------------------------------------------------------


def train_dests() -> set[str]:
    from detr_ft.cli import build_parser

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    return {a.dest for a in train._actions} - {"help", "config", "output_dir", "debug"}


def step_losses(run: Path) -> list[tuple[str, str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return [(r["step"], r["train_loss"], r["train_loss_giou"]) for r in csv.DictReader(f) if r.get("train_loss")]


def test_config_yaml_reproduces_the_run(synthetic_dir, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["train", "--data-dir", str(synthetic_dir), *TRAIN_FAST, "--max-steps", "3", "--deterministic",
                 "--train-only", "--seed", "7", "--lr", "3e-4", "--no-pad", "--num-buckets", "0", "--hflip", "0.7",
                 "--logger", "tensorboard", "--output-dir", str(a)]) == 0
    saved = yaml.safe_load((a / "config.yaml").read_text())
    assert train_dests() <= set(saved), train_dests() - set(saved)  # every flag is in config.yaml
    assert saved["lr"] == 3e-4 and saved["pad"] is False and saved["seed"] == 7
    assert main(["train", "--config", str(a / "config.yaml"), "--output-dir", str(b)]) == 0
    losses = step_losses(a)
    assert len(losses) == 3 and losses == step_losses(b)
    for run in (a, b):  # --logger tensorboard: event files beside the CSV
        assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    again = yaml.safe_load((b / "config.yaml").read_text())
    assert again.pop("output_dir") == str(b) and saved.pop("output_dir") == str(a)
    assert again == saved


def test_config_file_accepts_every_train_flag_and_flags_override_it(tmp_path, monkeypatch):
    from detr_ft.cli import build_parser, train_config
    from detr_ft.config import TrainConfig

    assert train_dests() <= {f for f in TrainConfig.__dataclass_fields__}
    settings = {"max-steps": 9, "lr": "2e-4", "pad_size": [64, 96], "pad": False, "device": "cpu",
                "hf-dataset": "some/data", "logger": "tensorboard", "max_minutes": 1.5}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(settings))

    def resolve(*flags):
        parser = build_parser()
        argv = ["train", "--config", str(path), *flags]
        args = parser.parse_args(argv)
        args._argv = argv
        return train_config(args)

    cfg = resolve()
    assert (cfg.max_steps, cfg.lr, cfg.pad_size, cfg.pad, cfg.device, cfg.hf_dataset, cfg.logger, cfg.max_minutes) \
        == (9, 2e-4, [64, 96], False, "cpu", "some/data", "tensorboard", 1.5)
    assert cfg.batch_size == TrainConfig().batch_size  # not in the file: the default
    cfg = resolve("--max-st", "4", "--pad", "--lr=0.5")  # abbreviated, negated and = forms all override
    assert (cfg.max_steps, cfg.pad, cfg.lr, cfg.device) == (4, True, 0.5, "cpu")


@pytest.mark.parametrize("text, needle", [
    ("nope: 1\n", "unknown setting(s) nope"),
    ("lr: [\n", "not valid YAML at line 2"),
    ("- lr\n", "expected a mapping"),
    ("batch_size: four\n", "batch_size: 'four' is not an integer, as --batch-size needs"),
    ("batch_size: 2.5\n", "is not an integer"),
    ("pad: maybe\n", "is not true or false"),
    ("device: tpu\n", "is not one of auto, cpu"),
    ("pad_size: 64\n", "is not a list of 2 values"),
])
def test_bad_config_exits_2_with_one_line(text, needle, tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert main(["train", "--config", str(path), "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and str(path) in err[0]
    assert not (tmp_path / "out").exists()


def test_tensorboard_logger_without_tensorboard_is_one_line(synthetic_dir, tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("tensorboard") else real(name, *a))
    assert main(["train", "--data-dir", str(synthetic_dir), *TRAIN_FAST, "--max-steps", "1", "--train-only",
                 "--logger", "tensorboard", "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install tensorboard" in err[0]


def test_missing_config_file_exits_2(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "none.yaml"), "--output-dir", str(tmp_path / "o")]) == 2
    assert "file not found" in capsys.readouterr().err


# --- plots and annotated images -------------------------------------------------------------


def assert_image(path: Path, min_size: tuple[int, int]) -> Image.Image:
    assert path.is_file(), path
    with Image.open(path) as im:
        im.verify()
    im = Image.open(path)
    assert im.width >= min_size[0] and im.height >= min_size[1], (path, im.size)
    assert np.asarray(im.convert("L")).std() > 5, f"{path} is blank"
    return im


def test_curves_per_class_chart_and_annotated_images(trained_run, synthetic_dir, tmp_path):
    assert_image(trained_run / "curves.png", (800, 300))
    assert main(["eval", "--ckpt-path", str(trained_run / "last.ckpt"), "--data-dir", str(synthetic_dir),
                 "--output-dir", str(tmp_path / "eval")]) == 0
    assert_image(tmp_path / "eval" / "per_class_ap.png", (400, 200))
    sizes = {im["id"]: (im["width"], im["height"])
             for im in json.loads((synthetic_dir / "annotations" / "test.json").read_text())["images"]}
    annotated = sorted((trained_run / "predictions" / "images").glob("*.jpg"))
    assert annotated
    for path in annotated:  # ground truth | prediction side by side under a title bar; small images enlarged
        width, height = sizes[int(path.name.split("_")[0])]
        im = assert_image(path, (2 * 2 * width, 2 * height + 10))
        assert im.width / im.height > width / height * 1.5


def test_plot_curves_from_a_longer_log(tmp_path):
    """Several epochs of loss parts and validation mAP, with the CSV's empty cells."""
    from detr_ft.plots import plot_curves

    rows, step = [], 0
    for epoch in range(6):
        for _ in range(5):
            loss = 3.0 / (1 + step / 10)
            rows.append({"step": step, "epoch": epoch, "train_loss": loss, "train_loss_ce": loss / 3,
                         "train_loss_bbox": loss / 2, "train_loss_giou": loss / 6, "val_map": "", "val_map_50": ""})
            step += 1
        rows.append({"step": step - 1, "epoch": epoch, "train_loss": "", "train_loss_ce": "", "train_loss_bbox": "",
                     "train_loss_giou": "", "val_map": 0.1 * epoch, "val_map_50": 0.15 * epoch})
    with open(tmp_path / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert plot_curves(tmp_path / "metrics.csv", tmp_path / "curves.png") == tmp_path / "curves.png"
    assert_image(tmp_path / "curves.png", (800, 300))
    assert plot_curves(tmp_path / "missing.csv", tmp_path / "none.png") is None


# --- the inference API ---------------------------------------------------------------------


def test_import_detr_ft_does_not_import_torch():
    code = ("import sys, detr_ft; assert 'torch' not in sys.modules, 'torch imported'; "
            "from detr_ft import Detector; assert 'torch' in sys.modules; print(Detector.__name__)")
    src = str(Path(__file__).resolve().parents[1] / "src")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"}, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "Detector", done.stderr


def test_detector_on_pil_images_paths_and_arrays(trained_run, synthetic_dir):
    from detr_ft import Detector, UserError

    detector = Detector.load(trained_run / "last.ckpt", device="cpu")
    paths = sorted((synthetic_dir / "images").glob("*"))[:3]
    by_path = detector.predict(paths, threshold=0.0)
    by_str = detector.predict([str(p) for p in paths], threshold=0.0)
    pil = [Image.open(p) for p in paths]
    by_pil = detector.predict(pil, threshold=0.0)
    by_array = detector.predict([np.asarray(im.convert("RGB")) for im in pil], threshold=0.0)
    assert by_path == by_str == by_pil == by_array
    single = detector.predict(paths[0], threshold=0.0)
    assert isinstance(single, list) and single == detector.predict([paths[0]], threshold=0.0)[0]
    for det in single:
        assert set(det) == {"label", "category_id", "score", "box"}
        assert det["label"] == detector.categories.names[detector.categories.ids.index(det["category_id"])]
        x0, y0, x1, y1 = det["box"]
        assert 0 <= x0 <= x1 <= pil[0].width and 0 <= y0 <= y1 <= pil[0].height
    assert [d["score"] for d in single] == sorted((d["score"] for d in single), reverse=True)
    cut = np.median([d["score"] for d in single])
    assert all(d["score"] > cut for d in detector.predict(paths[0], threshold=float(cut)))
    with pytest.raises(UserError, match="no such checkpoint file or model directory"):
        Detector.load(synthetic_dir / "nothing.ckpt")
    with pytest.raises(UserError, match="threshold must be between 0 and 1"):
        detector.predict(paths[0], threshold=2)
