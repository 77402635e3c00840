"""The whole pipeline learns: a tiny DETR overfits a handful of images."""

import json
import shutil

import pytest

from detr_ft.config import TrainConfig
from detr_ft.data.synthetic import SyntheticSpec, generate
from detr_ft.evaluate import run_eval
from detr_ft.train import fit


def repeat_split(data, copies: int) -> None:
    """train.json lists each training image ``copies`` times (as distinct files and ids), so an
    epoch is many steps; test.json holds the originals once, to measure how well they were learned."""
    doc = json.loads((data / "annotations" / "train.json").read_text())
    images, annotations = [], []
    for k in range(copies):
        for img in doc["images"]:
            name = f"copy{k}_{img['file_name']}"
            shutil.copy(data / "images" / img["file_name"], data / "images" / name)
            images.append({**img, "id": img["id"] + 1000 * (k + 1), "file_name": name})
        annotations += [{**a, "id": a["id"] + 1000 * (k + 1), "image_id": a["image_id"] + 1000 * (k + 1)}
                        for a in doc["annotations"]]
    (data / "annotations" / "test.json").write_text(json.dumps(doc))
    (data / "annotations" / "train.json").write_text(json.dumps({**doc, "images": images,
                                                                 "annotations": annotations}))


@pytest.mark.slow
def test_detr_tiny_overfits_six_images(tmp_path):
    data = tmp_path / "data"
    generate(data, train=6, val=1, seed=1, spec=SyntheticSpec(size=64, min_objects=1, max_objects=3, textured=False))
    repeat_split(data, copies=25)  # 150 listed images, 25 steps an epoch (checkpoint writes stay rare)
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), data_dir=str(data), model="detr-tiny", max_epochs=100000,
                      max_steps=1200, batch_size=6, num_workers=0, train_only=True, lr=1e-3, lr_backbone=1e-3,
                      grad_clip=1.0, hflip=0.0, pad=False, num_buckets=0, seed=42)
    fit(cfg)
    metrics = run_eval(str(tmp_path / "run" / "last.ckpt"), str(data), tmp_path / "eval", split="test")
    assert metrics["map_50"] >= 0.9, metrics
