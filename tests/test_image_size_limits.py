"""The smallest image a two-stage family reads, and a model directory's resize read without its processor.

LW-DETR and RF-DETR (and the RT-DETR line) pick their queries among the encoder's tokens: an
``--image-size`` that gives fewer tokens than queries is one line naming the family, the size and the
smallest size that works (exit 2), before any training. A directory whose image processor transformers
cannot build here (RF-DETR's needs torchvision) gets its resize from ``preprocessor_config.json``; where
that says no size, a one-line warning names the resize assumed.
"""

from __future__ import annotations

import json
import logging

import pytest

from conftest import write_checkpoint
from detr_ft.cli import main
from detr_ft.errors import UserError
from detr_ft.model.build import DETR_RESIZE, build_model, resize_from_processor
from detr_ft.model.families import family_of_preset
from detr_ft.types import Categories, ResizeSpec
from test_families import GROUP_DETR_LINE, RTDETR_LINE

pytestmark = pytest.mark.compat


def require(model_type: str) -> None:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if model_type not in CONFIG_MAPPING_NAMES:
        pytest.skip(f"{model_type} is not in this transformers version")


@pytest.mark.parametrize("preset", GROUP_DETR_LINE)
def test_group_detr_encoder_tokens_are_the_patch_grid_of_the_window_canvas(preset):
    family = family_of_preset(preset)
    config = family.preset_config(3)
    assert config.num_queries == 20
    assert family.encoder_tokens(config, 128, 128) == 64  # 8 x 8 patches of 16 px
    assert family.encoder_tokens(config, 64, 64) == 16  # fewer than the 20 queries
    assert family.encoder_tokens(config, 65, 65) == 36  # padded to the 96 x 96 canvas (patch 16 x 2 windows)


@pytest.mark.parametrize("preset", RTDETR_LINE)
def test_rtdetr_encoder_tokens_are_the_cells_of_its_three_levels(preset):
    family = family_of_preset(preset)
    config = family.preset_config(3)
    assert family.encoder_tokens(config, 64, 64) == 64 + 16 + 4  # strides 8, 16 and 32
    assert family.encoder_tokens(config, 32, 32) == 16 + 4 + 1 < config.num_queries
    with pytest.raises(UserError, match="smallest size that works is 33"):
        family.check_image_size(config, ResizeSpec(32, 48), "--image-size 32")


@pytest.mark.parametrize("preset", GROUP_DETR_LINE)
def test_check_names_the_family_the_size_and_the_smallest_that_works(preset):
    family = family_of_preset(preset)
    config = family.preset_config(3)
    family.check_image_size(config, family.resize, "--model")  # the preset's own 128 x 128
    family.check_image_size(config, ResizeSpec.fixed_size(65, 65), "--image-size 65")
    with pytest.raises(UserError) as e:
        family.check_image_size(config, ResizeSpec.fixed_size(64, 64), "--image-size 64")
    message = str(e.value)
    assert len(message.splitlines()) == 1
    assert family.model_type in message and "64x64" in message and "--image-size 65" in message


def test_families_without_a_token_limit_take_any_size():
    for preset in ("detr-tiny", "conditional-detr-tiny", "deformable-detr-tiny", "dab-detr-tiny"):
        family = family_of_preset(preset)
        assert family.encoder_tokens is None and family.canvas is None
        family.check_image_size(family.preset_config(3), ResizeSpec(32, 32), "--image-size 32")


@pytest.mark.parametrize("preset", GROUP_DETR_LINE)
def test_train_with_too_small_an_image_size_fails_early_with_one_line(preset, synthetic_dir, tmp_path, capsys):
    rc = main(["train", "--model", preset, "--data-dir", str(synthetic_dir), "--image-size", "64", "--train-only",
               "--max-steps", "1", "--batch-size", "2", "--num-workers", "0", "--device", "cpu",
               "--output-dir", str(tmp_path / "run")])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert family_of_preset(preset).model_type in err and "64x64" in err and "65" in err
    assert not list((tmp_path / "run").glob("*.ckpt"))  # nothing trained


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_eval_and_predict_with_too_small_an_image_size_fail_early(command, synthetic_dir, tmp_path, capsys):
    require("lw_detr")
    categories = Categories((1, 2, 4), ("circle", "square", "triangle"))
    ckpt = write_checkpoint(build_model("lwdetr-tiny", categories.id2label), categories, tmp_path / "lw.ckpt")
    source = ["--data-dir", str(synthetic_dir)] + (["--split", "train"] if command == "eval" else [])
    rc = main([command, "--ckpt-path", str(ckpt), *source, "--image-size", "48", "--device", "cpu",
               "--output-dir", str(tmp_path / "out")])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "lw_detr" in err and "48x48" in err and "65" in err, err


def _rfdetr_folder(path, processor: dict) -> str:
    """A save_pretrained-style RF-DETR folder (config.json, preprocessor_config.json), no weights."""
    family = family_of_preset("rfdetr-tiny")
    family.preset_config(3).save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps(processor))
    return str(path)


@pytest.fixture
def processor_needs_torchvision(monkeypatch):
    """AutoImageProcessor failing as RF-DETR's does without torchvision (whether or not it is installed)."""
    from transformers import AutoImageProcessor

    def refuse(*args, **kwargs):
        raise ImportError("RfDetrImageProcessor requires the Torchvision library but it was not found")

    monkeypatch.setattr(AutoImageProcessor, "from_pretrained", refuse)


def test_rfdetr_directory_resize_is_read_from_its_processor_json(tmp_path, processor_needs_torchvision):
    require("rf_detr")
    folder = _rfdetr_folder(tmp_path, {"image_processor_type": "RfDetrImageProcessor",
                                       "size": {"height": 96, "width": 96}, "do_normalize": True,
                                       "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]})
    spec = resize_from_processor(folder, {})
    assert spec.fixed == (96, 96) and spec.mean == (0.5, 0.5, 0.5) and spec.std == (0.25, 0.25, 0.25)


def test_unreadable_processor_without_a_size_warns_what_was_assumed(tmp_path, processor_needs_torchvision, caplog):
    require("rf_detr")
    folder = _rfdetr_folder(tmp_path, {"image_processor_type": "RfDetrImageProcessor"})
    with caplog.at_level(logging.WARNING, logger="detr_ft"):
        assert resize_from_processor(folder, {}) == DETR_RESIZE
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and len(warnings[0].splitlines()) == 1
    assert "Torchvision" in warnings[0] and "800" in warnings[0] and "1333" in warnings[0]


def test_a_directory_without_a_processor_config_stays_detr_silently(tmp_path, caplog):
    family_of_preset("detr-tiny").preset_config(3).save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="detr_ft"):
        assert resize_from_processor(str(tmp_path), {}) == DETR_RESIZE
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
