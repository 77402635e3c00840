"""ONNX export and ONNX Runtime inference: parity with PyTorch for every preset.

A randomly initialised tiny model gives nearly the same boxes and scores for every
query (its decoder's attention is almost uniform; RT-DETR's hybrid encoder gives
the same features at every position, so its top-k query selection is all ties),
which would make parity weak or undefined: the models here have their decoder's
query/key projections scaled up (sharper attention), RT-DETR's encoder, DAB-DETR's
anchors and the heads perturbed, seeded; the tests check that the queries differ.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_families import available

pytest.importorskip("onnxruntime")

# every preset; deformable-detr-tiny and rfdetr-tiny through their families' export rewrites
PRESETS = available(("detr-tiny", "conditional-detr-tiny", "deformable-detr-tiny", "rtdetr-tiny", "rtdetr-v2-tiny",
                     "dfine-tiny", "deimv2-tiny", "dab-detr-tiny", "lwdetr-tiny", "rfdetr-tiny"))
# (height, width): portrait, landscape, square, odd
# RT-DETR line: noise on the encoder's weights, else its output is flat and its top-k query selection
# all ties; D-FINE's and DEIMv2's forward gives NaN in PyTorch (not in ONNX Runtime) at RT-DETR's 0.3
ENCODER_NOISE = {"rt_detr": 0.3, "rt_detr_v2": 0.3, "d_fine": 0.1, "deimv2": 0.1}
SIZES = [(150, 90), (96, 170), (128, 128), (97, 171)]
THRESHOLDS = {1: 0.25, 3: 0.5}
SRC = str(Path(__file__).resolve().parents[1] / "src")


def varied_checkpoint(preset: str, path: Path) -> Path:
    """A detr-ft checkpoint of ``preset`` whose queries give different outputs (see module doc)."""
    from detr_ft.types import Categories
    from detr_ft.data.synthetic import SyntheticSpec
    from detr_ft.model.build import build_model

    torch.manual_seed(0)
    cats = SyntheticSpec().categories
    categories = Categories(tuple(c[0] for c in cats), tuple(c[1] for c in cats))
    bundle = build_model(preset, categories.id2label)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in bundle.model.named_parameters():
            if re.search(r"decoder\..*\.((q|k)_\w*proj|\w*_(query|key)_content_proj)\.weight$", name):
                p.mul_(30.0)  # DAB-DETR names them cross_attn_query_content_proj, ...
            if name == "model.query_refpoint_embeddings.weight":
                p.add_(torch.randn(p.shape, generator=g))  # DAB-DETR's anchors: else its queries' scores tie
            if name.startswith("model.encoder.") and bundle.family in ENCODER_NOISE:
                p.add_(torch.randn(p.shape, generator=g) * ENCODER_NOISE[bundle.family])  # else top-k ties
            if any(k in name for k in ("class_labels_classifier", "bbox_predictor", "class_embed", "bbox_embed",
                                       "enc_score_head", "enc_bbox_head")):
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    ckpt = {"detr_ft": {"model_config": bundle.model.config.to_dict(), "categories": categories.to_dict(),
                        "family": bundle.family, "pretrained": False, "resize": asdict(bundle.resize),
                        "trainable_batch_norm": True},
            "state_dict": {"model." + k: v for k, v in bundle.model.state_dict().items()}}
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="session", params=PRESETS)
def exported(request, tmp_path_factory):
    """(preset, checkpoint, ONNX file exported with batch size 2 and per-class thresholds)."""
    from detr_ft.onnx_export import export_onnx

    out = tmp_path_factory.mktemp(f"onnx-{request.param}")
    ckpt = varied_checkpoint(request.param, out / "model.ckpt")
    return request.param, ckpt, export_onnx(str(ckpt), out / "model.onnx", batch_size=2, thresholds=THRESHOLDS)


@pytest.fixture(scope="session")
def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in SIZES]


def assert_same_detections(expected, got, image_size, box_tol=1e-3, score_tol=1e-4):
    """Same labels in the same order, boxes within ``box_tol`` of the image size, scores within ``score_tol``."""
    assert len(expected) == len(got) > 0
    assert [d["label"] for d in expected] == [d["label"] for d in got]
    assert [d["category_id"] for d in expected] == [d["category_id"] for d in got]
    boxes_e, boxes_g = np.array([d["box"] for d in expected]), np.array([d["box"] for d in got])
    assert np.abs(boxes_e - boxes_g).max() <= box_tol * max(image_size)
    assert np.abs(np.array([d["score"] for d in expected]) - np.array([d["score"] for d in got])).max() <= score_tol


def test_onnx_runtime_matches_pytorch(exported, images):
    """Every preset: ONNX Runtime's detections are the checkpoint's on the same canvas, for
    portrait, landscape, square and odd-sized images, in one batch and across batches."""
    from detr_ft.detector import Detector
    from detr_ft.onnx_runtime import OnnxDetector

    preset, ckpt, onnx_path = exported
    reference = Detector.load(ckpt, device="cpu")
    reference.use_canvas(reference.resize.max_canvas)
    runtime = Detector.load(onnx_path, device="cpu")
    assert isinstance(runtime, OnnxDetector)
    expected = reference.predict(images, threshold=0.0)
    got = runtime.predict(images, threshold=0.0, batch_size=3)  # 3 images on a batch-2 graph: filled, split
    for im, e, g in zip(images, expected, got):
        assert_same_detections(e, g, (im.height, im.width))
        scores, boxes = np.array([d["score"] for d in e]), np.array([d["box"] for d in e])
        # the queries differ by many times the tolerances
        assert scores.std() > 10 * 1e-4 and boxes.std(0).max() > 1e-3 * max(im.size)


def test_export_passes_the_checker_and_carries_metadata(exported):
    import onnx

    from detr_ft.detector import Detector

    preset, ckpt, onnx_path = exported
    onnx.checker.check_model(str(onnx_path), full_check=True)
    reference, runtime = Detector.load(ckpt, device="cpu"), Detector.load(onnx_path, device="cpu")
    assert runtime.categories == reference.categories and runtime.resize == reference.resize
    assert runtime.thresholds == THRESHOLDS
    assert runtime.info.canvas == reference.resize.max_canvas and runtime.info.batch_size == 2
    assert runtime.info.family == reference.model.config.model_type


def test_threshold_auto_on_onnx_runtime_equals_the_checkpoint(exported, images):
    """threshold="auto": the per-class thresholds of the ONNX metadata keep what the checkpoint's
    Detector keeps with the same thresholds (a score equal to its class's threshold is kept)."""
    from detr_ft.detector import Detector

    preset, ckpt, onnx_path = exported
    reference = Detector.load(ckpt, device="cpu")
    reference.use_canvas(reference.resize.max_canvas)
    reference.thresholds = THRESHOLDS
    runtime = Detector.load(onnx_path, device="cpu")
    every = runtime.predict(images, threshold=0.0)
    expected, got = reference.predict(images, threshold="auto"), runtime.predict(images, threshold="auto")
    for im, all_dets, e, g in zip(images, every, expected, got):
        wanted = [d for d in all_dets if d["score"] >= THRESHOLDS.get(d["category_id"], 0.5)]
        assert [d["category_id"] for d in g] == [d["category_id"] for d in wanted]
        if e or g:
            assert_same_detections(e, g, (im.height, im.width))


def test_export_writes_the_thresholds_beside_the_checkpoint_into_both_formats(tmp_path):
    """export --format hf,onnx: metrics.json's per-class thresholds go into config.json and the ONNX metadata."""
    from detr_ft.cli import main
    from detr_ft.detector import Detector

    ckpt = varied_checkpoint("detr-tiny", tmp_path / "last.ckpt")
    (tmp_path / "metrics.json").write_text(json.dumps({"thresholds": {
        "1": {"threshold": 0.3, "f1": 0.5}, "4": {"threshold": 0.7, "f1": 0.4}}}))
    assert main(["export", "--ckpt-path", str(ckpt), "--out", str(tmp_path / "out"), "--format", "hf,onnx"]) == 0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert {int(k): v for k, v in config["detr_ft_thresholds"].items()} == {1: 0.3, 4: 0.7}
    assert Detector.load(tmp_path / "out" / "model.onnx", device="cpu").thresholds == {1: 0.3, 4: 0.7}


def test_runtime_preprocessing_gives_the_checkpoints_pixels(exported, images):
    """The runtime's PIL + NumPy sample and canvas batch are the torch path's ``Collator`` +
    ``Batch.to_device_normalised`` to float rounding (normalised pixels, padding, mask)."""
    from detr_ft.detector import Detector

    preset, ckpt, onnx_path = exported
    reference = Detector.load(ckpt, device="cpu")
    reference.use_canvas(reference.resize.max_canvas)
    runtime = Detector.load(onnx_path, device="cpu")
    pixels, mask = runtime.canvas_batch([runtime.sample(im) for im in images])
    batch = reference.collator([reference.sample(im) for im in images]).to_device_normalised(torch.device("cpu"))
    assert np.array_equal(mask, batch.pixel_mask.numpy().astype(np.int64))
    assert np.abs(pixels - batch.pixel_values.numpy()).max() < 1e-5


def run_cli(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "detr_ft", *args], capture_output=True, text=True,
                          env={"PYTHONPATH": SRC, "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})


def test_predict_and_eval_with_onnx_equal_the_checkpoint(synthetic_dir, tmp_path):
    """CLI end to end: export --format hf,onnx --dynamic-batch, then predict's detections.json from
    the ONNX file equals the checkpoint's with --pad (the same canvas); eval runs on it; an int8
    export is smaller and keeps its metadata."""
    from detr_ft.cli import main

    ckpt = varied_checkpoint("detr-tiny", tmp_path / "model.ckpt")
    assert main(["export", "--ckpt-path", str(ckpt), "--out", str(tmp_path / "exp"), "--format", "hf,onnx",
                 "--dynamic-batch"]) == 0
    assert (tmp_path / "exp" / "config.json").is_file()
    onnx_path = tmp_path / "exp" / "model.onnx"
    common = ["--data-dir", str(synthetic_dir), "--split", "test", "--threshold", "0.0", "--batch-size", "3",
              "--device", "cpu"]
    assert main(["predict", "--ckpt-path", str(ckpt), "--pad", *common, "--output-dir", str(tmp_path / "a")]) == 0
    assert main(["predict", "--ckpt-path", str(onnx_path), *common, "--output-dir", str(tmp_path / "b")]) == 0
    a = json.loads((tmp_path / "a" / "detections.json").read_text())
    b = json.loads((tmp_path / "b" / "detections.json").read_text())
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert (x["image_id"], x["category_id"], x["file_name"]) == (y["image_id"], y["category_id"], y["file_name"])
        assert np.allclose(x["bbox"], y["bbox"], atol=0.011) and abs(x["score"] - y["score"]) <= 1e-4
    from detr_ft.detector import Detector
    from detr_ft.onnx_export import export_onnx

    int8 = export_onnx(str(ckpt), tmp_path / "int8" / "model.onnx", quantize="int8")  # checked as it is written
    assert int8.stat().st_size < 0.6 * onnx_path.stat().st_size
    quantized = Detector.load(int8, device="cpu")
    assert quantized.categories == Detector.load(onnx_path, device="cpu").categories
    assert len(quantized.predict(str(Path(a[0]["file_name"])), threshold=0.0)) > 0
    assert main(["eval", "--ckpt-path", str(onnx_path), "--data-dir", str(synthetic_dir), "--split", "test",
                 "--device", "cpu", "--output-dir", str(tmp_path / "e")]) == 0
    assert 0.0 <= json.loads((tmp_path / "e" / "metrics.json").read_text())["map"] <= 1.0


@pytest.mark.parametrize("exported", ["detr-tiny"], indirect=True)  # one family is enough
def test_runtime_needs_no_torch(exported, images, tmp_path):
    """``OnnxDetector`` predicts in a process that never imports torch."""
    preset, _, onnx_path = exported
    images[0].save(tmp_path / "a.png")
    code = (f"import sys; from detr_ft.onnx_runtime import OnnxDetector; "
            f"d = OnnxDetector({str(onnx_path)!r}, device='cpu').predict({str(tmp_path / 'a.png')!r}, threshold=0.0); "
            f"assert len(d) > 0; assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": SRC})
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_bad_onnx_file_is_one_line(tmp_path, images):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not an onnx model")
    images[0].save(tmp_path / "a.png")
    done = run_cli(["predict", "--ckpt-path", str(bad), "--images", str(tmp_path / "a.png"), "--device", "cpu",
                    "--output-dir", str(tmp_path / "out")])
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.onnx" in lines[0] and "cannot load" in lines[0], done.stderr


def test_export_failure_names_operator_and_family(tmp_path, monkeypatch):
    """An exporter failure is one line naming the operator and the family."""
    from detr_ft.errors import UserError
    from detr_ft.onnx_export import export_onnx

    def refuse(*args, **kwargs):
        raise RuntimeError("Exporting the operator 'aten::grid_sampler' to ONNX opset version 17 is not supported.")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    ckpt = varied_checkpoint("rtdetr-tiny", tmp_path / "model.ckpt")
    with pytest.raises(UserError, match=r"rt_detr family does not export .*aten::grid_sampler"):
        export_onnx(str(ckpt), tmp_path / "model.onnx")


def test_two_stage_deformable_detr_with_box_refinement_exports(tmp_path, images):
    """The hub's two-stage Deformable DETR (proposals from the encoder, boxes refined layer by layer)
    exports through the same rewrite, and ONNX Runtime gives the checkpoint's detections."""
    from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection

    from detr_ft.detector import Detector
    from detr_ft.onnx_export import export_onnx

    ckpt = varied_checkpoint("deformable-detr-tiny", tmp_path / "one-stage.ckpt")
    saved = torch.load(ckpt, weights_only=False)
    config = DeformableDetrConfig.from_dict({**saved["detr_ft"]["model_config"], "two_stage": True,
                                             "with_box_refine": True})
    torch.manual_seed(0)
    model = DeformableDetrForObjectDetection(config)
    with torch.no_grad():  # sharper decoder attention, as varied_checkpoint: queries that differ
        for name, p in model.named_parameters():
            if re.search(r"decoder\..*\.(q|k)_proj\.weight$", name):
                p.mul_(30.0)
    saved["detr_ft"]["model_config"] = config.to_dict()
    saved["state_dict"] = {"model." + k: v for k, v in model.state_dict().items()}
    torch.save(saved, tmp_path / "model.ckpt")
    onnx_path = export_onnx(str(tmp_path / "model.ckpt"), tmp_path / "model.onnx")  # its parity check passes
    reference = Detector.load(tmp_path / "model.ckpt", device="cpu")
    reference.use_canvas(reference.resize.max_canvas)
    expected = reference.predict(images, threshold=0.0)
    got = Detector.load(onnx_path, device="cpu").predict(images, threshold=0.0)
    for im, e, g in zip(images, expected, got):
        assert_same_detections(e, g, (im.height, im.width))


def test_a_graph_onnx_runtime_cannot_run_is_one_line_and_leaves_no_file(tmp_path, monkeypatch):
    """A graph that exports but that ONNX Runtime cannot load (here: it has no kernel for a node, as for
    Deformable DETR's GridSample with a float64 grid before its rewrite): one line naming the operator
    and the family, and no file left behind."""
    import onnxruntime

    from detr_ft.errors import UserError
    from detr_ft.onnx_export import export_onnx

    def no_kernel(*args, **kwargs):
        raise RuntimeError("[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Could not find an implementation for "
                           "GridSample(16) node with name '/model/encoder/layers.0/self_attn/attn/GridSample'")

    monkeypatch.setattr(onnxruntime, "InferenceSession", no_kernel)
    ckpt = varied_checkpoint("detr-tiny", tmp_path / "model.ckpt")
    with pytest.raises(UserError, match=r"detr family exports, but ONNX Runtime cannot run .*operator GridSample\(16\)"):
        export_onnx(str(ckpt), tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()


def test_unfaithful_export_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    """An export whose ONNX Runtime outputs differ from PyTorch's is refused in one line naming
    the family, and leaves no file (here: a tolerance no export meets)."""
    from detr_ft import onnx_export
    from detr_ft.cli import main

    monkeypatch.setattr(onnx_export, "PARITY_TOLERANCE", -1.0)
    ckpt = varied_checkpoint("detr-tiny", tmp_path / "model.ckpt")
    assert main(["export", "--ckpt-path", str(ckpt), "--out", str(tmp_path / "exp"), "--format", "onnx"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "detr family does not export faithfully" in lines[0]
    assert not (tmp_path / "exp" / "model.onnx").exists()


@pytest.mark.slow
def test_bench_infer_onnx_times_both_runtimes_on_the_same_batches(tmp_path):
    """``bench --what infer-onnx``: both records, finite ratios that are what they say, and the
    two runtimes finding the same number of detections on the batch they were timed on."""
    from detr_ft.cli import main

    path, out = tmp_path / "r.json", tmp_path / "out"
    rc = main(["bench", "--what", "infer-onnx", "--image-size", "64", "--batch-size", "2", "--steps", "1",
               "--warmup", "1", "--rounds", "1", "--images", "4", "--no-memory", "--device", "cpu",
               "--json", str(path), "--output-dir", str(out)])
    assert rc == 0
    records = json.loads(path.read_text())
    assert [(r["benchmark"], r["unit"]) for r in records] == [("infer-onnx", "images/s"), ("latency-onnx", "ms")]
    for r in records:
        assert all(np.isfinite(r[k]) and r[k] > 0 for k in ("ours", "baseline", "speedup")), r
    assert records[0]["speedup"] == pytest.approx(records[0]["ours"] / records[0]["baseline"])
    assert records[1]["speedup"] == pytest.approx(records[1]["baseline"] / records[1]["ours"])
    note = next(n for n in json.loads((out / "machine.json").read_text())["notes"] if n.startswith("infer-onnx"))
    found = re.search(r"detections onnx (\d+), torch (\d+)", note)
    assert found and found.group(1) == found.group(2), note
