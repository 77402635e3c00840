"""``detr-ft demo``: its data design, its time-budgeted schedule, and the whole flow on a tiny budget."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest

from detr_ft.data.synthetic import CATEGORIES, SyntheticSpec, generate
from detr_ft.errors import UserError


def test_synthetic_classes_subset(tmp_path):
    spec = SyntheticSpec(size=64, min_objects=2, max_objects=4, classes=("cross", "circle", "triangle"))
    assert spec.categories == ((1, "circle"), (4, "triangle"), (7, "cross"))  # CATEGORIES order and ids
    summary = generate(tmp_path, train=12, val=4, seed=0, spec=spec)
    for split in ("train", "test"):
        coco = json.loads((tmp_path / "annotations" / f"{split}.json").read_text())
        assert [c["id"] for c in coco["categories"]] == [1, 4, 7]
        assert {a["category_id"] for a in coco["annotations"]} <= {1, 4, 7}
    assert summary["train"]["objects"] >= 24
    default = SyntheticSpec()
    assert default.categories == CATEGORIES  # the default still draws all five


@pytest.mark.parametrize("classes", [(), ("circle", "circle"), ("hexagon",)])
def test_synthetic_classes_must_be_known_and_distinct(classes):
    with pytest.raises(UserError, match="synthetic classes"):
        SyntheticSpec(classes=classes)


def test_demo_data_is_a_real_detection_task_with_a_held_out_split():
    from detr_ft.demo import DEMO_SPEC, DEMO_TRAIN_IMAGES, DEMO_VAL_IMAGES, demo_train_config

    assert len(DEMO_SPEC.categories) >= 3 and DEMO_SPEC.max_objects >= 3 and DEMO_SPEC.min_objects == 0
    assert DEMO_SPEC.empty_fraction > 0 and DEMO_TRAIN_IMAGES > 10 * DEMO_VAL_IMAGES > 0
    cfg = demo_train_config("data", "out", 5.0)
    assert not cfg.train_only  # validation runs on the held-out split (annotations/test.json)


def test_cosine_follows_the_time_budget():
    """With --max-minutes the cosine ends when the time runs out, even when far fewer steps than planned ran."""
    from lightning.pytorch.callbacks import Timer

    from detr_ft.types import Categories
    from detr_ft.engine import DetrModule, OptimConfig
    from detr_ft.model.build import build_model

    bundle = build_model("detr-tiny", {0: "a", 1: "b", 2: "c"})
    module = DetrModule(bundle, Categories((1, 2, 3), ("a", "b", "c")),
                        OptimConfig(lr=1e-3, lr_backbone=1e-3, schedule="cosine", warmup_steps=10))
    timer = Timer(duration={"minutes": 10})
    module._trainer = SimpleNamespace(estimated_stepping_batches=100_000, callbacks=[timer])
    scheduler = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    factor = scheduler.lr_lambdas[0]
    assert factor(4) == pytest.approx(0.5)  # warm-up by steps
    assert factor(20) == pytest.approx(1.0, abs=1e-3)  # the timer has not started: by steps, barely begun
    for elapsed_fraction in (0.25, 0.5, 0.9, 1.0):
        timer.load_state_dict({"time_elapsed": {"train": elapsed_fraction * 600}})  # as after that much training
        expected = 0.5 * (1 + math.cos(math.pi * elapsed_fraction))
        assert factor(20) == pytest.approx(expected, abs=1e-3)


def test_demo_end_to_end_on_a_tiny_budget(tmp_path, monkeypatch, capsys):
    import detr_ft.demo as demo

    monkeypatch.setattr(demo, "DEMO_TRAIN_IMAGES", 24)
    monkeypatch.setattr(demo, "DEMO_VAL_IMAGES", 6)
    monkeypatch.setattr(demo, "RESERVE_MINUTES", 0.0)
    result = demo.run_demo(tmp_path, minutes=0.25)
    printed = capsys.readouterr().out
    assert "validation mAP50:" in printed and f"{result['map_50']:.3f}" in printed
    saved = json.loads((tmp_path / "demo.json").read_text())
    assert saved["map_50"] == result["map_50"]
    assert saved["curve"] and saved["curve"][-1]["final"] and saved["curve"][-1]["map_50"] == round(result["map_50"], 4)
    assert [p["minutes"] for p in saved["curve"]] == sorted(p["minutes"] for p in saved["curve"])
    assert saved["machine"]["cpus"] >= 1 and saved["recipe"]["model"] == demo.DEMO_MODEL
    assert (tmp_path / "train" / "last.ckpt").is_file() and any((tmp_path / "predict" / "images").iterdir())
    eval_metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert eval_metrics["images"] == 6 and eval_metrics["split"] == "test"
