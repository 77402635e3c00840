"""The hard learning benchmark (benchmarks/hard_data.py) and the recipe runner (benchmarks/recipe_bench.py).

No training here: the runner's subprocesses are stubbed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from detr_ft.errors import UserError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import hard_data  # noqa: E402
import recipe_bench  # noqa: E402


@pytest.fixture(scope="module")
def hard_dir(tmp_path_factory) -> Path:
    """6 training and 6 test images, seed 5."""
    out = tmp_path_factory.mktemp("hard")
    hard_data.generate(out, train=6, test=6, seed=5)
    return out


def _coco(data: Path, split: str) -> dict:
    return json.loads((data / "annotations" / f"{split}.json").read_text())


def _files(data: Path) -> dict[str, bytes]:
    return {str(p.relative_to(data)): p.read_bytes() for p in sorted(data.rglob("*")) if p.is_file()}


def test_same_seed_same_files_other_seed_others(hard_dir, tmp_path):
    hard_data.generate(tmp_path / "again", train=6, test=6, seed=5)
    assert _files(tmp_path / "again") == _files(hard_dir)
    hard_data.generate(tmp_path / "other", train=6, test=6, seed=6)
    other = _files(tmp_path / "other")
    assert other.keys() == _files(hard_dir).keys()
    assert other["annotations/train.json"] != _files(hard_dir)["annotations/train.json"]


def test_classes_sizes_and_placement(hard_dir):
    for split in ("train", "test"):
        coco = _coco(hard_dir, split)
        assert len(coco["categories"]) >= 10
        sizes = {im["id"]: (im["width"], im["height"]) for im in coco["images"]}
        assert all(160 <= max(s) <= 320 for s in sizes.values())
        boxes: dict[int, list] = {}
        for a in coco["annotations"]:
            x, y, w, h = a["bbox"]
            width, height = sizes[a["image_id"]]
            assert 7 <= max(w, h) <= 50, a  # the 8-50 px (the mask may lose a pixel)
            assert 0 <= x and x + w <= width and 0 <= y and y + h <= height, a  # never clipped
            boxes.setdefault(a["image_id"], []).append((x, y, w, h))
        assert len(coco["annotations"]) >= 2 * len(coco["images"])
        for image_boxes in boxes.values():  # objects never overlap
            for i, (x, y, w, h) in enumerate(image_boxes):
                for bx, by, bw, bh in image_boxes[i + 1:]:
                    assert x + w <= bx or bx + bw <= x or y + h <= by or by + bh <= y


def test_train_and_test_backgrounds_come_from_different_families(hard_dir):
    train = {im["background"] for im in _coco(hard_dir, "train")["images"]}
    test = {im["background"] for im in _coco(hard_dir, "test")["images"]}
    assert train <= set(hard_data.BACKGROUNDS["train"]) and test <= set(hard_data.BACKGROUNDS["test"])
    assert len(train) >= 2 and len(test) >= 2 and not train & test


def test_glyphs_change_under_a_mirror():
    for _, name in hard_data.CATEGORIES:
        mask = hard_data.object_mask(name, 40, 0.0)
        assert (mask != mask[:, ::-1]).mean() > 0.1, name


@pytest.mark.parametrize(("split", "index"), [("train", 1), ("test", 5)])
def test_boxes_are_the_painted_pixels(split, index, monkeypatch):
    """Draw the image again with every object painted on a throw-away copy (the same random
    draws): the pixels that differ are the objects', and their tight boxes are the annotations."""
    image, objects, _ = hard_data.make_image(7, split, index)
    real_paint = hard_data._paint
    monkeypatch.setattr(hard_data, "_paint", lambda rng, pixels, *a: real_paint(rng, pixels.copy(), *a))
    bare, none, _ = hard_data.make_image(7, split, index)
    assert len(objects) >= 5 and none == objects
    painted = (np.asarray(image, np.int16) != np.asarray(bare, np.int16)).any(axis=2)
    covered = np.zeros_like(painted)
    for obj in objects:
        x, y, w, h = obj["bbox"]
        inside = painted[y : y + h, x : x + w]
        assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any(), obj
        covered[y : y + h, x : x + w] = True
    assert not (painted & ~covered).any()


def test_hard_data_cli_bad_count_is_one_line(tmp_path, capsys):
    assert hard_data.main(["--out", str(tmp_path / "d"), "--train", "-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--train must be at least 0" in err


# --- the runner ---------------------------------------------------------------------------------


def test_config_options_and_files(tmp_path):
    assert recipe_bench.parse_config_option('ema=--ema --ema-decay 0.99') == ("ema", ["--ema", "--ema-decay", "0.99"])
    assert recipe_bench.parse_config_option("today=") == ("today", [])
    for bad in ("no-equals-sign", "a/b=--ema", 'x=--config "open'):
        with pytest.raises(UserError):
            recipe_bench.parse_config_option(bad)
    (tmp_path / "r.yaml").write_text("size: --image-size 160 256\nboth: [--ema, --hflip, 0]\n")
    (tmp_path / "r.json").write_text('{"size": "--image-size 128", "today": ""}')
    chosen = recipe_bench.select_configs(["ema=--ema"], [tmp_path / "r.yaml", tmp_path / "r.json"], None)
    assert chosen == {"size": ["--image-size", "128"], "both": ["--ema", "--hflip", "0"], "today": [],
                      "ema": ["--ema"]}
    defaults = recipe_bench.select_configs([], [], "today,full")
    assert list(defaults) == ["today", "full"] and defaults["today"] == ["--augment", "flip", "--no-ema"]
    assert len(recipe_bench.select_configs([], [], None)) == len(recipe_bench.DEFAULT_CONFIGS)
    (tmp_path / "bad.json").write_text("[1, 2]")
    for options, files, only in (([], [tmp_path / "bad.json"], None), ([], [tmp_path / "missing.yaml"], None),
                                 ([], [], "today,nope")):
        with pytest.raises(UserError):
            recipe_bench.select_configs(options, files, only)


def _stub_detr_ft(calls: list):
    """A stand-in for ``subprocess.run``: train fails with argparse's exit 2 when given ``--augment``,
    else writes last.ckpt (and best.ckpt for ``--ema``) and metrics.json; eval writes metrics by split."""

    def run(cmd, stdout, stderr, timeout):
        calls.append(cmd)
        command, out = cmd[3], Path(cmd[cmd.index("--output-dir") + 1])
        if command == "train" and "--augment" in cmd:
            stdout.write("detr-ft: error: unrecognized arguments: --augment detr (see 'detr-ft --help')\n")
            return subprocess.CompletedProcess(cmd, 2)
        out.mkdir(parents=True, exist_ok=True)
        if command == "train":
            for name in ("last.ckpt", "best.ckpt") if "--ema" in cmd else ("last.ckpt",):
                (out / name).write_text("weights")
            (out / "metrics.json").write_text(json.dumps({"steps": 40, "epochs": 2, "images_per_second": 9.5}))
        else:
            split = cmd[cmd.index("--split") + 1]
            score = {"test": 0.25, "train": 0.5}[split] + ("best" in cmd[cmd.index("--ckpt-path") + 1]) * 0.1
            (out / "metrics.json").write_text(json.dumps({"map_50": score, "map": score / 2}))
        return subprocess.CompletedProcess(cmd, 0)

    return run


def test_runner_reports_a_missing_flag_and_evaluates_the_rest(tmp_path, monkeypatch, capsys):
    calls: list = []
    monkeypatch.setattr(recipe_bench.subprocess, "run", _stub_detr_ft(calls))
    monkeypatch.setattr(recipe_bench, "machine", lambda: {"cpu": "test cpu", "cores": 2, "torch": "t",
                                                          "transformers": "x", "date_utc": "today"})
    data = tmp_path / "data"
    (data / "annotations").mkdir(parents=True)
    (data / "annotations" / "test.json").write_text("{}")
    rc = recipe_bench.main(["--data-dir", str(data), "--minutes", "0.5", "--out", str(tmp_path / "out"),
                            "--config", "today=", "--config", "aug=--augment detr", "--config", "ema=--ema"])
    assert rc == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    today, aug, ema = results["configs"]
    assert aug["status"] == "flag not available" and "--augment" in aug["reason"] and "test" not in aug
    assert all(r["load_average"]["samples"] >= 1 for r in results["configs"])
    assert today["status"] == "ok" and today["checkpoint"] == "last.ckpt" and today["steps"] == 40
    assert today["test"] == {"map_50": 0.25, "map": 0.125} and today["train"] == {"map_50": 0.5, "map": 0.25}
    assert ema["checkpoint"] == "best.ckpt" and ema["test"]["map_50"] == pytest.approx(0.35)
    train_cmd = calls[0]
    assert train_cmd[3:5] == ["train", "--data-dir"] and train_cmd[train_cmd.index("--max-minutes") + 1] == "0.5"
    assert train_cmd[-len(recipe_bench.BASE_ARGS.split()):] == recipe_bench.BASE_ARGS.split()  # "today": base only
    aug_cmd = next(c for c in calls if "--augment" in c)
    assert aug_cmd[-2:] == ["--augment", "detr"]  # after the base, so a configuration's flags win
    table = capsys.readouterr().out
    assert "| aug | flag not available: detr-ft: error: unrecognized arguments: --augment detr" in table
    assert "| today | ok | 0.250 | 0.125 | 0.500 | 0.250 | 40 | " in table


def test_runner_bad_input_is_one_line(tmp_path, capsys):
    assert recipe_bench.main(["--data-dir", str(tmp_path), "--config", "x=--ema"]) == 2
    assert "no annotations/test.json" in capsys.readouterr().err
    assert recipe_bench.failure_status(2, "detr-ft train: error: --lr must be above 0") == "bad input"
    assert recipe_bench.failure_status(1, "RuntimeError: boom") == "failed"
