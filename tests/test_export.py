"""Export to the Hugging Face format: transformers' own loaders and pipeline agree with detr-ft.

The parity tests run a briefly trained detr-tiny (the ``trained_run`` fixture) and
compare every detection (threshold 0: all queries, so no detection sits on a
threshold boundary) without relying on their order, since a briefly trained DETR
gives near-equal scores to many queries. The images are the synthetic test
images scaled up to ~240 px: the pipeline rounds boxes to whole pixels, which
must stay well inside "1 % of the image size".
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detr_ft.cli import main

pytestmark = pytest.mark.compat

SCORE_TOL = 0.01
BOX_TOL = 0.01  # of the image's longer side


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "hf"
    assert main(["export", "--ckpt-path", str(trained_run / "last.ckpt"), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def big_images(synthetic_dir, tmp_path_factory) -> list[Path]:
    """The 8 test images, 2.5x larger (PNG, so no new compression artefacts)."""
    out = tmp_path_factory.mktemp("big")
    doc = json.loads((synthetic_dir / "annotations" / "test.json").read_text())
    paths = []
    for im in doc["images"]:
        with Image.open(synthetic_dir / "images" / im["file_name"]) as src:
            big = src.convert("RGB").resize((round(src.width * 2.5), round(src.height * 2.5)), Image.BILINEAR)
        paths.append(out / (Path(im["file_name"]).stem + ".png"))
        big.save(paths[-1])
    return paths


def unmatched(expected: list[dict], actual: list[dict], size: int) -> list[dict]:
    """The detections of ``expected`` with no partner in ``actual`` (same label, score within
    SCORE_TOL, box within BOX_TOL * size); each partner is used once. Boxes are [x0, y0, x1, y1]."""
    free = list(actual)
    missing = []
    for det in sorted(expected, key=lambda d: -d["score"]):
        errors = [max(abs(a - b) for a, b in zip(det["box"], other["box"])) / size
                  if other["label"] == det["label"] and abs(other["score"] - det["score"]) <= SCORE_TOL else np.inf
                  for other in free]
        best = int(np.argmin(errors)) if errors else -1
        if best < 0 or errors[best] > BOX_TOL:
            missing.append(det)
        else:
            free.pop(best)
    return missing


def pipeline_detections(model_dir: Path, images: list[Path], threshold: float) -> list[list[dict]]:
    from transformers import pipeline

    detector = pipeline("object-detection", model=str(model_dir), threshold=threshold)
    out = detector([str(p) for p in images])
    return [[{"label": d["label"], "score": d["score"],
              "box": [d["box"][k] for k in ("xmin", "ymin", "xmax", "ymax")]} for d in dets] for dets in out]


def test_export_directory_contents(exported, trained_run):
    from detr_ft.checkpoint import model_from_checkpoint

    _, resize, categories, _ = model_from_checkpoint(trained_run / "last.ckpt")
    names = sorted(p.name for p in exported.iterdir())
    assert names == ["README.md", "config.json", "model.safetensors", "preprocessor_config.json"]
    config = json.loads((exported / "config.json").read_text())
    assert {int(k): v for k, v in config["id2label"].items()} == dict(enumerate(categories.names))
    assert config["label2id"] == {n: i for i, n in enumerate(categories.names)}
    assert config["category_ids"] == list(categories.ids)
    # written out so that transformers 4.x does not default to a timm resnet50, and 5.x gets a bool
    assert config["use_timm_backbone"] is False and config["backbone"] is None
    assert isinstance(config["dilation"], bool) and config.get("backbone_kwargs", {}) is not None
    processor = json.loads((exported / "preprocessor_config.json").read_text())
    assert processor["image_processor_type"] == "DetrImageProcessor"
    assert processor["size"] == {"shortest_edge": resize.shortest, "longest_edge": resize.longest}
    assert processor["image_mean"] == pytest.approx(list(resize.mean))
    assert processor["image_std"] == pytest.approx(list(resize.std))
    for name in categories.names:
        assert name in (exported / "README.md").read_text()


def test_from_pretrained_loads_every_weight(exported, trained_run):
    import torch
    from transformers import DetrForObjectDetection

    from detr_ft.checkpoint import model_from_checkpoint

    model, info = DetrForObjectDetection.from_pretrained(str(exported), output_loading_info=True)
    assert all(not keys for keys in info.values()), info
    ours, *_ = model_from_checkpoint(trained_run / "last.ckpt")
    theirs = model.state_dict()
    for key, value in ours.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(theirs[key], value), key


def test_pipeline_matches_detr_ft_predict(exported, trained_run, big_images, tmp_path):
    # One image per batch, as the pipeline runs: in a batch, images are padded to a common size,
    # which moves a DETR's scores by ~1e-3, enough to swap the near-equal classes of a briefly
    # trained model (the pipeline with batch_size > 1 pads the same way).
    out = tmp_path / "pred"
    assert main(["predict", "--ckpt-path", str(trained_run / "last.ckpt"), "--images", *map(str, big_images),
                 "--threshold", "0", "--batch-size", "1", "--output-dir", str(out)]) == 0
    records = json.loads((out / "detections.json").read_text())
    config = json.loads((exported / "config.json").read_text())
    name_of = {cid: config["id2label"][str(i)] for i, cid in enumerate(config["category_ids"])}
    ours = [[{"label": name_of[r["category_id"]], "score": r["score"],
              "box": [r["bbox"][0], r["bbox"][1], r["bbox"][0] + r["bbox"][2], r["bbox"][1] + r["bbox"][3]]}
             for r in records if r["file_name"] == str(p)] for p in big_images]
    theirs = pipeline_detections(exported, big_images, threshold=0.0)
    for path, a, b in zip(big_images, ours, theirs):
        size = max(Image.open(path).size)
        assert len(a) == len(b) > 0
        assert not unmatched(b, a, size), (path.name, unmatched(b, a, size)[:3])


def test_detector_on_the_export_matches_the_pipeline(exported, big_images):
    from detr_ft import Detector

    detector = Detector.load(exported)
    ours = detector.predict(big_images, threshold=0.0, batch_size=1)
    theirs = pipeline_detections(exported, big_images, threshold=0.0)
    labels = set()
    for path, a, b in zip(big_images, ours, theirs):
        assert len(a) == len(b) > 0
        assert not unmatched(b, a, max(Image.open(path).size))
        labels |= {d["label"] for d in b}
    assert labels <= set(detector.categories.names)


@pytest.mark.parametrize("preset", ["conditional-detr-tiny"])
def test_pipeline_parity_of_another_family(preset, synthetic_dir, big_images, tmp_path):
    """Conditional DETR: sigmoid scores and top-100 (query, class) pairs, as its processor does."""
    from detr_ft import Detector
    from detr_ft.config import TrainConfig
    from detr_ft.export import export
    from detr_ft.train import fit

    fit(TrainConfig(output_dir=str(tmp_path / "run"), data_dir=str(synthetic_dir), model=preset, max_steps=1,
                    max_epochs=-1, batch_size=2, num_workers=0, train_only=True, max_inf_frames=0, device="cpu"))
    model_dir = export(str(tmp_path / "run" / "last.ckpt"), tmp_path / "hf")
    images = big_images[:3]
    ours = Detector.load(model_dir).predict(images, threshold=0.0, batch_size=1)
    theirs = pipeline_detections(model_dir, images, threshold=0.0)
    for path, a, b in zip(images, ours, theirs):
        assert len(a) == len(b) > 0
        assert not unmatched(b, a, max(Image.open(path).size))


def test_model_dir_fine_tunes_further_from_the_export(exported, synthetic_dir, big_images, tmp_path):
    """--model DIR starts from the exported weights: with a learning rate of ~0 the
    fine-tuned checkpoint predicts what the export predicts."""
    from detr_ft import Detector

    out = tmp_path / "again"
    assert main(["train", "--data-dir", str(synthetic_dir), "--model", str(exported), "--max-steps", "2",
                 "--batch-size", "4", "--num-workers", "0", "--lr", "1e-12", "--lr-backbone", "1e-12",
                 "--train-only", "--output-dir", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["steps"] == 2
    before = Detector.load(exported).predict(big_images[:2], threshold=0.0, batch_size=1)
    after = Detector.load(out / "last.ckpt").predict(big_images[:2], threshold=0.0, batch_size=1)
    for path, a, b in zip(big_images, after, before):
        assert not unmatched(b, a, max(Image.open(path).size))


def test_export_mistakes_exit_2_with_one_line(trained_run, tmp_path, capsys):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert main(["export", "--ckpt-path", str(trained_run / "last.ckpt"), "--out", str(busy)]) == 2
    assert main(["export", "--ckpt-path", str(tmp_path / "nope.ckpt"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "not a model directory" in err[0] and "nope.ckpt" in err[1]
    assert (busy / "notes.txt").read_text() == "mine" and len(list(busy.iterdir())) == 1
