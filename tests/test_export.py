"""Export to the Hugging Face format: transformers' own loaders and pipeline agree with detr-ft.

The parity tests run models whose queries differ (the ``varied_model`` fixture: seeded weights,
checked to spread labels, scores and boxes) on a portrait, a landscape, a square and an odd-sized
image, and compare every query (threshold 0): the same label, score within 1e-4, box within half a
pixel (``assert_same_detections``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from conftest import AGREEMENT_SIZES, assert_same_detections, coco_as_detections, spread_any_family, write_checkpoint
from detr_ft.cli import main

pytestmark = pytest.mark.compat


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "hf"
    assert main(["export", "--ckpt-path", str(trained_run / "last.ckpt"), "--out", str(out)]) == 0
    return out


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


@pytest.fixture(scope="module")
def predict_and_pipeline(varied_model, tmp_path_factory) -> tuple[dict, dict]:
    """Per image name of ``varied_model.images``: the detections of ``detr-ft predict`` on the checkpoint
    and of transformers' pipeline on its export, all 20 queries (threshold 0) of each image."""
    out = tmp_path_factory.mktemp("pred")
    images = varied_model.images
    assert main(["predict", "--ckpt-path", str(varied_model.ckpt), "--images", *map(str, images.values()),
                 "--threshold", "0", "--batch-size", "1", "--output-dir", str(out)]) == 0
    config = json.loads((varied_model.export / "config.json").read_text())
    name_of = {cid: config["id2label"][str(i)] for i, cid in enumerate(config["category_ids"])}
    ours = coco_as_detections(json.loads((out / "detections.json").read_text()), name_of)
    theirs = pipeline_detections(varied_model.export, list(images.values()), threshold=0.0)
    return ({name: ours[str(path)] for name, path in images.items()},
            {name: dets for name, dets in zip(images, theirs)})


@pytest.mark.parametrize("name", ["portrait", "landscape", "square", "odd"])
def test_pipeline_on_the_export_matches_detr_ft_predict_query_by_query(name, predict_and_pipeline):
    """Each query: the same label, score within 1e-4, box within half a pixel. The pipeline writes each
    box coordinate as a whole pixel (``int()``, unclipped): ours must lie in that pixel (give or take
    detections.json's 0.01 rounding), theirs clipped to the image as detr-ft's are."""
    ours, theirs = predict_and_pipeline
    width, height = AGREEMENT_SIZES[name]
    pixel_centres = [{**d, "box": [min(max(v, 0), limit) + 0.5 for v, limit in zip(d["box"], (width, height) * 2)]}
                     for d in theirs[name]]
    assert_same_detections(pixel_centres, ours[name], box_tol=0.51, where=name)


def test_detector_on_the_export_matches_the_checkpoint_query_by_query(varied_model):
    from detr_ft import Detector

    images = list(varied_model.images.values())
    from_export = Detector.load(varied_model.export, device="cpu").predict(images, threshold=0.0)
    from_ckpt = Detector.load(varied_model.ckpt, device="cpu").predict(images, threshold=0.0)
    for name, a, b in zip(varied_model.images, from_ckpt, from_export):
        assert_same_detections(a, b, where=name)


@pytest.fixture(scope="module")
def conditional_export(varied_model, synthetic_dir, tmp_path_factory) -> Path:
    """A Conditional DETR export whose queries differ (seeded weights, ``spread_any_family``)."""
    import torch

    from detr_ft.data.coco import load_index
    from detr_ft.export import export
    from detr_ft.model.build import build_model

    out = tmp_path_factory.mktemp("conditional")
    categories = load_index(synthetic_dir, "train").categories
    with torch.random.fork_rng():
        torch.manual_seed(0)
        bundle = build_model("conditional-detr-tiny", categories.id2label)
    spread_any_family(bundle.model)
    return export(str(write_checkpoint(bundle, categories, out / "model.ckpt")), out / "hf")


@pytest.mark.parametrize("name", ["portrait", "landscape", "square", "odd"])
def test_pipeline_parity_of_another_family_query_by_query(name, conditional_export, varied_model):
    """Conditional DETR: sigmoid scores and top-100 (query, class) pairs, as its processor does."""
    from detr_ft import Detector

    path = varied_model.images[name]
    ours = Detector.load(conditional_export, device="cpu").predict(path, threshold=0.0, batch_size=1)
    (theirs,) = pipeline_detections(conditional_export, [path], threshold=0.0)
    width, height = AGREEMENT_SIZES[name]
    pixel_centres = [{**d, "box": [min(max(v, 0), limit) + 0.5 for v, limit in zip(d["box"], (width, height) * 2)]}
                     for d in theirs]
    assert_same_detections(pixel_centres, ours, box_tol=0.51, where=name)


def test_model_dir_fine_tunes_further_from_the_export(varied_model, synthetic_dir, tmp_path):
    """--model DIR starts from the exported weights: with a learning rate of ~0 the
    fine-tuned checkpoint predicts what the export predicts, query by query."""
    from detr_ft import Detector

    out = tmp_path / "again"
    assert main(["train", "--data-dir", str(synthetic_dir), "--model", str(varied_model.export), "--max-steps", "2",
                 "--batch-size", "4", "--num-workers", "0", "--lr", "1e-12", "--lr-backbone", "1e-12",
                 "--train-only", "--max-inf-frames", "0", "--output-dir", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["steps"] == 2
    images = list(varied_model.images.values())
    before = Detector.load(varied_model.export, device="cpu").predict(images, threshold=0.0)
    after = Detector.load(out / "last.ckpt", device="cpu").predict(images, threshold=0.0)
    for name, a, b in zip(varied_model.images, after, before):
        assert_same_detections(b, a, where=name)


def test_export_mistakes_exit_2_with_one_line(trained_run, tmp_path, capsys):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert main(["export", "--ckpt-path", str(trained_run / "last.ckpt"), "--out", str(busy)]) == 2
    assert main(["export", "--ckpt-path", str(tmp_path / "nope.ckpt"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "not a model directory" in err[0] and "nope.ckpt" in err[1]
    assert (busy / "notes.txt").read_text() == "mine" and len(list(busy.iterdir())) == 1


@pytest.mark.parametrize("family", ["detr", "conditional_detr"])
def test_detector_matches_transformers_post_processing_of_the_same_pixels(family, varied_model, request):
    """Passes while the pipeline's preprocessing differs (above): the pixels detr-ft feeds, through the
    export's model and its image processor's ``post_process_object_detection``, give detr-ft's detections,
    query by query (Conditional DETR: its top 100 (query, class) pairs)."""
    import torch
    from transformers import AutoImageProcessor

    from detr_ft import Detector
    from detr_ft.export import load_export

    model_dir = varied_model.export if family == "detr" else request.getfixturevalue("conditional_export")
    detector = Detector.load(model_dir, device="cpu")
    model, _, categories = load_export(model_dir)
    processor = AutoImageProcessor.from_pretrained(str(model_dir))
    labels = set()
    for name, path in varied_model.images.items():
        ours = detector.predict(path, threshold=0.0)
        image = Image.open(path).convert("RGB")
        batch = detector.collator([detector.sample(image)]).to_device_normalised("cpu")
        with torch.no_grad():
            outputs = model(pixel_values=batch.pixel_values, pixel_mask=batch.pixel_mask.long())
        found = processor.post_process_object_detection(outputs, threshold=0.0,
                                                        target_sizes=[(image.height, image.width)])[0]
        width, height = image.size
        theirs = [{"label": categories.names[int(label)], "score": float(score),
                   "box": [min(max(v, 0.0), limit) for v, limit in zip(box.tolist(), (width, height) * 2)]}
                  for score, label, box in zip(found["scores"], found["labels"], found["boxes"])]
        assert_same_detections(theirs, ours, where=name)
        labels |= {d["label"] for d in ours}
    assert len(labels) >= 2  # queries that differ
