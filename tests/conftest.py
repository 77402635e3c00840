"""Shared fixtures: small synthetic datasets and one briefly trained checkpoint.

Everything is offline: models come from configs, data from the generator.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """16 training and 8 validation images, long side 96 px."""
    from detr_ft.data.synthetic import SyntheticSpec, generate

    out = tmp_path_factory.mktemp("synthetic")
    generate(out, train=16, val=8, seed=3, spec=SyntheticSpec(size=96, max_objects=4))
    return out


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    """4 training and 2 validation images, long side 64 px: the per-family training runs
    (resume, --compile, --autocast, DDP), 2 steps an epoch at batch 2."""
    from detr_ft.data.synthetic import SyntheticSpec, generate

    out = tmp_path_factory.mktemp("tiny")
    generate(out, train=4, val=2, seed=3, spec=SyntheticSpec(size=64, max_objects=4))
    return out


@pytest.fixture(scope="session")
def trained_run(synthetic_dir, tmp_path_factory) -> Path:
    """A detr-tiny run of a few steps through the CLI; its output dir."""
    from detr_ft.cli import main

    out = tmp_path_factory.mktemp("run")
    rc = main(["train", "--data-dir", str(synthetic_dir), "--model", "detr-tiny", "--max-epochs", "2",
               "--batch-size", "8", "--num-workers", "0", "--output-dir", str(out), "--max-inf-frames", "2"])
    assert rc == 0
    return out


@pytest.fixture
def torch_load_weights_only(monkeypatch) -> list:
    """Spies on ``torch.load``: the list of its calls' ``weights_only`` arguments, in order."""
    import torch

    seen: list = []
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    return seen


# Images of every orientation, including odd sizes, for the agreement tests: (width, height).
AGREEMENT_SIZES = {"portrait": (120, 200), "landscape": (200, 120), "square": (160, 160), "odd": (170, 96)}


class VariedModel(NamedTuple):
    """A detr-tiny whose 20 queries disagree: a checkpoint, its Hugging Face export and images to compare on."""

    ckpt: Path
    export: Path
    images: dict[str, Path]  # AGREEMENT_SIZES' names -> PNG files


def write_checkpoint(bundle, categories, path: Path) -> Path:
    """A detr-ft checkpoint of ``bundle``'s model as training writes it (state dict and model description)."""
    from detr_ft.checkpoint import atomic_torch_save
    from detr_ft.engine import DetrModule, OptimConfig

    module = DetrModule(bundle, categories, OptimConfig())
    ckpt = {"state_dict": module.state_dict(), "epoch": 0, "global_step": 0}
    module.on_save_checkpoint(ckpt)
    atomic_torch_save(ckpt, path)
    return path


def spread_any_family(model, seed: int = 0, gain: float = 2.0) -> None:
    """Seeded weights for any DETR family that spread its queries' outputs: every linear layer
    re-drawn at ``gain`` times the unit-variance scale, embeddings N(0, 1), batch-norm statistics off
    (0, 1) so that folding them has work to do."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.num_features, generator=g) * 0.1)
                module.running_var.copy_(torch.rand(module.num_features, generator=g) + 0.5)
            elif isinstance(module, nn.Linear):
                module.weight.copy_(torch.randn(module.weight.shape, generator=g) * gain / module.in_features ** 0.5)
            elif isinstance(module, nn.Embedding):
                module.weight.copy_(torch.randn(module.weight.shape, generator=g))


def _spread_the_queries(model, seed: int = 4) -> None:
    """Seeded weights that make a random detr-tiny's queries differ (a fresh one gives all queries the
    same answer within ~1e-4): each decoder query attends to its own part of the image (sharper
    cross-attention), the class head is confident and the box head moves boxes by tens of pixels."""
    import torch

    spread_any_family(model, seed, gain=1.0)
    with torch.no_grad():
        model.class_labels_classifier.weight.mul_(4)
        for layer in model.model.decoder.layers:
            layer.encoder_attn.q_proj.weight.mul_(6)
        model.bbox_predictor.layers[-1].weight.mul_(2)


@pytest.fixture(scope="session")
def varied_model(synthetic_dir, tmp_path_factory) -> VariedModel:
    """detr-tiny with seeded weights whose queries differ in label, score and box (checked here),
    as a detr-ft checkpoint and an export, with a portrait, a landscape, a square and an odd-sized
    image made from synthetic test images. Built without training (~2 s)."""
    import torch
    from PIL import Image

    from detr_ft.data.coco import load_index
    from detr_ft.detector import Detector
    from detr_ft.export import export
    from detr_ft.model.build import build_model

    out = tmp_path_factory.mktemp("varied")
    categories = load_index(synthetic_dir, "train").categories
    with torch.random.fork_rng():  # the convolutions' initial weights too, without touching the global seed
        torch.manual_seed(4)  # a seed whose queries spread well (checked below)
        bundle = build_model("detr-tiny", categories.id2label)
    _spread_the_queries(bundle.model)
    write_checkpoint(bundle, categories, out / "varied.ckpt")
    export(str(out / "varied.ckpt"), out / "hf")

    doc = load_index(synthetic_dir, "test")
    images = {}
    for (name, size), record in zip(AGREEMENT_SIZES.items(), doc.records):
        with Image.open(synthetic_dir / "images" / record.file_name) as src:
            images[name] = out / f"{name}.png"
            src.convert("RGB").resize(size, Image.BILINEAR).save(images[name])

    # the queries must differ, or comparing detections compares one box per image
    per_image = Detector.load(out / "varied.ckpt", device="cpu").predict(list(images.values()), threshold=0.0)
    labels = set()
    for name, dets in zip(images, per_image):
        scores = torch.tensor([d["score"] for d in dets])
        boxes = torch.tensor([d["box"] for d in dets])
        assert len(dets) == 20 and scores.max() - scores.min() > 0.05, (name, scores)
        assert (boxes.max(0).values - boxes.min(0).values).max() > 5, (name, boxes)  # pixels
        labels |= {d["label"] for d in dets}
    assert len(labels) >= 2, labels
    return VariedModel(out / "varied.ckpt", out / "hf", images)


def assert_same_detections(expected: list[dict], actual: list[dict], score_tol: float = 1e-4,
                           box_tol: float = 0.5, where: str = "", labels_from: float = 0.0) -> None:
    """Detections (dicts with label, score, box [x0, y0, x1, y1] px) agree query by query: as many,
    and each of ``expected`` has its own partner in ``actual`` with the same label, a score within
    ``score_tol`` and every box coordinate within ``box_tol`` pixels. Partners are found by score
    (both lists come sorted by score; two queries of near-equal score may come in either order).
    ``labels_from``: labels must agree only where the expected score is at least this (bf16 may
    swap a query's two near-equal classes; above 0.5 + score_tol it cannot without moving the score)."""
    assert len(expected) == len(actual) > 0, (where, len(expected), len(actual))
    free = list(actual)
    for det in sorted(expected, key=lambda d: -d["score"]):
        same_label = det["score"] < labels_from or None
        errors = [max(abs(a - b) for a, b in zip(det["box"], other["box"]))
                  if (same_label or other["label"] == det["label"]) and abs(other["score"] - det["score"]) <= score_tol
                  else float("inf") for other in free]
        best = min(range(len(free)), key=errors.__getitem__)
        assert errors[best] <= box_tol, (where, "no partner for", det, "nearest by score:",
                                         min(free, key=lambda o: abs(o["score"] - det["score"])))
        free.pop(best)


def coco_as_detections(records: list[dict], name_of=None) -> dict[int | str, list[dict]]:
    """detections.json records (COCO bbox x, y, w, h) -> per image (``file_name`` where present, else
    ``image_id``) the dicts ``assert_same_detections`` compares; ``name_of`` maps category ids to labels."""
    out: dict = {}
    for r in records:
        x, y, w, h = r["bbox"]
        label = name_of[r["category_id"]] if name_of else r["category_id"]
        out.setdefault(r.get("file_name", r["image_id"]), []).append(
            {"label": label, "score": r["score"], "box": [x, y, x + w, y + h]})
    return out
