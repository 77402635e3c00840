"""train -> checkpoint -> eval -> predict, through the CLI, on the synthetic set."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from detr_ft.cli import main
from detr_ft.config import TrainConfig
from detr_ft.data.batching import Collator
from detr_ft.data.coco import load_index
from detr_ft.data.dataset import DetectionDataset
from detr_ft.detector import Detector
from detr_ft.model.outputs import detection_outputs

ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC_IDS = {1, 2, 4, 7, 9}


def test_train_writes_every_promised_file(trained_run):
    for name in ("metrics.csv", "metrics.json", "last.ckpt", "curves.png", "config.yaml"):
        assert (trained_run / name).is_file(), name
    rows = list(csv.DictReader(open(trained_run / "metrics.csv")))
    steps = [r for r in rows if r["train_loss"]]
    vals = [r for r in rows if r.get("val_map")]
    assert len(steps) == 4  # 16 images / batch 8 = 2 full batches an epoch, x 2 epochs
    for part in ("train_loss_ce", "train_loss_bbox", "train_loss_giou", "epoch", "step"):
        assert all(r[part] != "" for r in steps)
    summary = json.loads((trained_run / "metrics.json").read_text())
    assert len(vals) == 2 and float(vals[-1]["val_map_50"]) == pytest.approx(summary["map_50"], abs=1e-6)
    for key in ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100",
                "images_per_second", "world_size", "buckets"):
        assert key in summary
    assert summary["world_size"] == 1 and summary["images_per_second"] > 0
    assert summary["buckets"] == [4]  # --num-buckets 1 (default): the largest object count
    assert list((trained_run / "predictions" / "images").glob("*.jpg"))


def test_checkpoint_reload_gives_identical_weights_and_predictions(synthetic_dir, tmp_path):
    """The checkpoint holds the trained weights exactly; the Detector built from it (batch norms
    folded, channels-last) predicts what the trained model predicts, to float rounding."""
    from detr_ft.checkpoint import model_from_checkpoint
    from detr_ft.train import fit

    cfg = TrainConfig(output_dir=str(tmp_path), data_dir=str(synthetic_dir), model="detr-tiny", max_epochs=1,
                      batch_size=8, num_workers=0, train_only=True)
    _, module, _ = fit(cfg)
    reloaded = model_from_checkpoint(tmp_path / "last.ckpt")[0].state_dict()
    trained = module.model.state_dict()
    assert set(reloaded) == set(trained)
    assert all(torch.equal(trained[k], reloaded[k]) for k in trained)
    detector = Detector.load(tmp_path / "last.ckpt", device="cpu")
    index = load_index(synthetic_dir, "test", categories=detector.categories)
    samples = [DetectionDataset(index, detector.resize)[i] for i in range(4)]
    batch = Collator(detector.resize.mean, detector.resize.std)(samples).to_device_normalised("cpu")
    module.model.eval()
    with torch.no_grad():
        before = detection_outputs(module.model, batch.pixel_values, batch.pixel_mask, with_aux=False)
        after = detection_outputs(detector.model, batch.pixel_values, batch.pixel_mask, with_aux=False)
    torch.testing.assert_close(before.logits, after.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(before.boxes, after.boxes, rtol=1e-4, atol=1e-5)


def test_eval_writes_metrics_and_detections(trained_run, synthetic_dir, tmp_path, capsys):
    rc = main(["eval", "--ckpt-path", str(trained_run / "last.ckpt"), "--data-dir", str(synthetic_dir),
               "--output-dir", str(tmp_path)])
    assert rc == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["per_class"]) == {"circle", "square", "triangle", "cross", "star"}
    dets = json.loads((tmp_path / "detections.json").read_text())
    assert dets and {d["category_id"] for d in dets} <= SYNTHETIC_IDS
    # the metrics are those of the detections written beside them
    from detr_ft.checkpoint import model_from_checkpoint
    from detr_ft.data.coco import load_index
    from detr_ft.metrics import coco_metrics, ground_truth

    categories = model_from_checkpoint(trained_run / "last.ckpt")[2]
    again = coco_metrics(ground_truth(load_index(synthetic_dir, "test").records, categories), dets, categories)
    for key in ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100"):
        assert metrics[key] == pytest.approx(again[key], abs=1e-9), key
    assert (tmp_path / "per_class_ap.png").is_file()
    assert "map_50" in capsys.readouterr().out


def test_predict_on_files_and_folders(trained_run, synthetic_dir, tmp_path):
    images = sorted((synthetic_dir / "images").glob("test_*"))
    rc = main(["predict", "--ckpt-path", str(trained_run / "last.ckpt"), "--images", str(images[0]),
               str(synthetic_dir / "images"), "--threshold", "0.0", "--max-inf-frames", "5",
               "--batch-size", "2", "--output-dir", str(tmp_path)])
    assert rc == 0
    drawn = sorted((tmp_path / "images").glob("*.jpg"))
    assert len(drawn) == 5
    dets = json.loads((tmp_path / "detections.json").read_text())
    assert dets
    for d in dets:
        assert set(d) >= {"image_id", "category_id", "bbox", "score"}
        assert d["category_id"] in SYNTHETIC_IDS
        x, y, w, h = d["bbox"]
        assert w >= 0 and h >= 0 and 0.0 <= d["score"] <= 1.0


def test_predict_on_a_split_draws_ground_truth_beside_prediction(trained_run, synthetic_dir, tmp_path):
    rc = main(["predict", "--ckpt-path", str(trained_run / "last.ckpt"), "--data-dir", str(synthetic_dir),
               "--max-inf-frames", "2", "--output-dir", str(tmp_path)])
    assert rc == 0
    from PIL import Image

    drawn = sorted((tmp_path / "images").glob("*.jpg"))
    index = load_index(synthetic_dir, "test")
    first = index.records[0]
    assert len(drawn) == 2
    assert Image.open(drawn[0]).width > 2 * first.width  # two panels side by side


def test_eval_and_predict_batch_like_shapes_and_report_in_the_datasets_order(trained_run, synthetic_dir, tmp_path,
                                                                             monkeypatch):
    """Batches never hold a landscape and a portrait image (they would pad each other to a square);
    detections.json and the annotated files still follow the dataset's order."""
    batches = []
    detect_batch = Detector.detect_batch

    def spy(self, batch, threshold=0.0):
        batches.append([h > w for h, w in batch.orig_sizes.tolist()])
        return detect_batch(self, batch, threshold)

    monkeypatch.setattr(Detector, "detect_batch", spy)
    order = [r.image_id for r in load_index(synthetic_dir, "test").records]
    ckpt, data = str(trained_run / "last.ckpt"), str(synthetic_dir)
    assert main(["eval", "--ckpt-path", ckpt, "--data-dir", data, "--batch-size", "3", "--device", "cpu",
                 "--output-dir", str(tmp_path / "eval")]) == 0
    assert main(["predict", "--ckpt-path", ckpt, "--data-dir", data, "--batch-size", "3", "--threshold", "0",
                 "--device", "cpu", "--output-dir", str(tmp_path / "predict")]) == 0
    assert len(batches) == 2 * 3 and {False, True} <= {p for b in batches for p in b}  # 8 images, both kinds
    assert all(len(set(b)) == 1 for b in batches), batches
    for run in ("eval", "predict"):
        ids = [d["image_id"] for d in json.loads((tmp_path / run / "detections.json").read_text())]
        assert ids == sorted(ids, key=order.index) and set(ids) == set(order), run


def test_commands_import_only_the_libraries_they_use(trained_run, tmp_path):
    """Importing Lightning takes seconds: only the commands that train import it, and `data`
    imports neither torch nor transformers (it took 6 s to write three images, now a fraction),
    `data check` included."""
    ckpt, data = str(trained_run / "last.ckpt"), str(tmp_path / "data")
    script = f"""
import sys
from detr_ft.cli import main
loaded = lambda: sorted(m for m in ("lightning", "torchmetrics", "torch", "transformers") if m in sys.modules)
assert main(["data", "synthetic", "--out", {data!r}, "--train", "2", "--val", "2", "--size", "64"]) == 0
print("data", loaded())
assert main(["data", "check", "--data-dir", {data!r}, "--output-dir", {str(tmp_path / "check")!r}]) == 0
print("data-check", loaded())
for argv in (["predict", "--ckpt-path", {ckpt!r}, "--data-dir", {data!r}],
             ["eval", "--ckpt-path", {ckpt!r}, "--data-dir", {data!r}],
             ["export", "--ckpt-path", {ckpt!r}, "--out", {str(tmp_path / "hf")!r}]):
    assert main([*argv, "--device", "cpu"] if argv[0] != "export" else argv) == 0
    print(argv[0], loaded())
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [line for line in run.stdout.splitlines()
             if line.split(" ")[0] in ("data", "data-check", "predict", "eval", "export") and line.endswith("]")]
    assert lines == ["data []", "data-check []", "predict ['torch', 'transformers']", "eval ['torch', 'transformers']",
                     "export ['torch', 'transformers']"], run.stdout[-2000:]


@pytest.mark.parametrize("argv, needle", [
    (["train", "--data-dir", "/nonexistent/data", "--model", "detr-tiny"], "/nonexistent/data"),
    (["train", "--batch-size", "0"], "--batch-size"),
    (["train", "--batch-size", "x"], "--batch-size"),
    (["train", "--threshold", "2"], "--threshold"),
    (["train", "--device", "tpu"], "--device"),
    (["train", "--pad-size", "10", "10"], "--pad-size"),
    (["eval", "--ckpt-path", "/nonexistent.ckpt", "--data-dir", "/tmp"], "/nonexistent.ckpt"),
    (["predict", "--ckpt-path", "x.ckpt", "--images", "/nonexistent.png"], "x.ckpt"),
])
def test_cli_mistakes_exit_2_with_one_line(argv, needle, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        raise SystemExit(main([*argv, "--output-dir", str(tmp_path / "out")]))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err


def test_cli_mistake_from_a_real_process_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "detr_ft", "train", "--data-dir", str(tmp_path / "missing"),
                           "--model", "detr-tiny", "--output-dir", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "missing" in proc.stderr.strip().splitlines()[-1]


def test_original_command_lines_run_unchanged(synthetic_dir, tmp_path):
    """detr_ft.py / detr_inference.py accept the original flags (plus an offline model and data)."""
    env_args = ["--data-dir", str(synthetic_dir)]
    train = subprocess.run([sys.executable, str(ROOT / "detr_ft.py"), "--max-epochs", "1", "--pad",
                            "--num-buckets", "1", "--ckpt-store-interval-epochs", "1", "--model", "detr-tiny",
                            "--num-workers", "0", "--batch-size", "8", "--output-dir", str(tmp_path / "t"),
                            *env_args], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert train.returncode == 0, train.stderr[-2000:]
    assert (tmp_path / "t" / "last.ckpt").is_file() and (tmp_path / "t" / "epoch000.ckpt").is_file()
    infer = subprocess.run([sys.executable, str(ROOT / "detr_inference.py"), "--pad", "--num-buckets", "0",
                            "--use-ckpt", "--ckpt-path", str(tmp_path / "t" / "last.ckpt"), "--max-inf-frames",
                            "2", "--output-dir", str(tmp_path / "p"), *env_args],
                           capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert infer.returncode == 0, infer.stderr[-2000:]
    assert len(list((tmp_path / "p" / "images").glob("*.jpg"))) == 2


def test_predict_on_a_static_canvas_and_cuda_graph_errors(trained_run, synthetic_dir, tmp_path, capsys):
    ckpt = str(trained_run / "last.ckpt")
    base = ["predict", "--ckpt-path", ckpt, "--data-dir", str(synthetic_dir), "--max-inf-frames", "3",
            "--batch-size", "2", "--threshold", "0"]
    assert main([*base, "--pad", "--output-dir", str(tmp_path / "static")]) == 0
    assert main([*base, "--output-dir", str(tmp_path / "dynamic")]) == 0
    static = json.loads((tmp_path / "static" / "detections.json").read_text())
    dynamic = json.loads((tmp_path / "dynamic" / "detections.json").read_text())
    assert {d["image_id"] for d in static} == {d["image_id"] for d in dynamic}  # blank fill images report nothing
    capsys.readouterr()
    assert main([*base, "--cuda-graphs", "--output-dir", str(tmp_path / "x")]) == 2
    assert "--pad" in capsys.readouterr().err
    assert main([*base, "--cuda-graphs", "--pad", "--device", "cpu", "--output-dir", str(tmp_path / "y")]) == 2
    assert "CUDA" in capsys.readouterr().err
