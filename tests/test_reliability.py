"""Bad data, bad flags, unsafe checkpoints and non-finite losses: clear errors, no tracebacks, nothing run.

Issue 5 items 1, 2, 4, 5 (and the CLI path of 6). Resume is in test_resume.py,
the fuzz tests in test_fuzz.py.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detr_ft.cli import main
from detr_ft.config import TrainConfig
from detr_ft.data.coco import load_index
from detr_ft.data.jpeg_check import jpeg_is_complete
from detr_ft.errors import UserError

CATS = [{"id": 4, "name": "mask"}, {"id": 11, "name": "gloves"}]


def image_bytes(fmt: str, size=(40, 30), **save) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, fmt, **save)
    return buf.getvalue()


def write_split(root: Path, images: list[dict], annotations: list[dict], split: str = "train") -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    doc = {"images": images, "annotations": annotations, "categories": CATS}
    (root / "annotations" / f"{split}.json").write_text(json.dumps(doc))
    return root


def run_cli(argv: list[str], capsys, with_stdout: bool = False):
    """Exit code and stderr (and stdout) of ``detr-ft ARGV`` run in-process."""
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    captured = capsys.readouterr()
    return (rc, captured.err, captured.out) if with_stdout else (rc, captured.err)


# -- 1. image files checked when the dataset is opened --------------------------------------------------

@pytest.fixture
def mixed_files(tmp_path) -> Path:
    """Three good image records (one in a subfolder, one a link inside images/) and seven bad ones."""
    root = tmp_path / "data"
    img = root / "images"
    (img / "sub").mkdir(parents=True)
    png, jpg = image_bytes("PNG"), image_bytes("JPEG", quality=90)
    (img / "ok.png").write_bytes(png)
    (img / "sub" / "deep.jpg").write_bytes(jpg)
    os.symlink(img / "ok.png", img / "link_in.png")
    (img / "text.png").write_text("this is not an image")
    (img / "trunc.png").write_bytes(png[: len(png) // 2])
    (img / "trunc.jpg").write_bytes(jpg[: len(jpg) - 200])
    (img / "folder.png").mkdir()
    outside = tmp_path / "secret.png"
    outside.write_bytes(png)
    os.symlink(outside, img / "link_out.png")
    os.symlink(img / "gone.png", img / "dangling.png")
    names = ["ok.png", "sub/deep.jpg", "link_in.png", "missing.png", "text.png", "trunc.png", "trunc.jpg",
             "folder.png", "link_out.png", "dangling.png"]
    images = [{"id": 100 + i, "file_name": n, "width": 40, "height": 30} for i, n in enumerate(names)]
    anns = [{"id": i, "image_id": 100 + i, "category_id": 4, "bbox": [2, 2, 10, 10]} for i in range(len(names))]
    return write_split(root, images, anns)


def test_bad_image_files_stop_the_run_with_one_line_naming_each(mixed_files):
    with pytest.raises(UserError) as e:
        load_index(mixed_files, "train")
    msg = str(e.value)
    assert "\n" not in msg and "train.json: 7 bad record(s)" in msg and "--on-bad-data skip" in msg
    for name, why in [("missing.png", "image file missing"), ("text.png", "not an image"),
                      ("trunc.png", "unreadable or truncated"), ("trunc.jpg", "truncated JPEG"),
                      ("folder.png", "not a regular file"),
                      ("link_out.png", "is a link that leaves the images folder"),
                      ("dangling.png", "image file missing")]:
        assert f"'{name}'): {why}" in msg, name
    for good in ("'ok.png'", "'sub/deep.jpg'", "'link_in.png'"):
        assert good not in msg


@pytest.mark.parametrize("threads", [1, 3])
def test_bad_image_files_are_left_out_and_counted_under_skip(mixed_files, monkeypatch, threads):
    import detr_ft.threads as threads_module

    monkeypatch.setattr(threads_module, "THREADS", threads)
    monkeypatch.setattr(threads_module, "THREADS_FROM", 1)  # the threaded path for a few files too
    index = load_index(mixed_files, "train", on_bad_data="skip")
    assert [r.file_name for r in index.records] == ["ok.png", "sub/deep.jpg", "link_in.png"]
    assert index.report.to_dict() == {"skipped_records": 7, "skipped_objects": 7, "dropped_boxes": 0,
                                      "clipped_boxes": 0}
    assert all(r.num_objects == 1 for r in index.records)


def test_predict_checks_image_files_before_running_any(mixed_files, trained_run, tmp_path, capsys, caplog):
    """--images: the files are checked as a dataset's are (a link out of the folder is the user's
    choice here), before the first image is run; --on-bad-data skip leaves the bad ones out."""
    argv = ["predict", "--ckpt-path", str(trained_run / "last.ckpt"), "--images", str(mixed_files / "images"),
            "--device", "cpu", "--threshold", "0"]
    rc, err = run_cli([*argv, "--output-dir", str(tmp_path / "stop")], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "--images: 3 bad image(s)" in err and "--on-bad-data skip" in err
    for name, why in [("text.png", "not an image"), ("trunc.png", "unreadable or truncated"),
                      ("trunc.jpg", "truncated JPEG")]:
        assert f"{name}: {why}" in err, name
    assert not list((tmp_path / "stop").rglob("*.jpg"))  # stopped before running any image
    rc, err = run_cli([*argv, "--on-bad-data", "skip", "--output-dir", str(tmp_path / "skip")], capsys)
    assert rc == 0, err
    assert "left out 3 bad image(s)" in caplog.text
    drawn = sorted(p.name.split("_", 1)[1] for p in (tmp_path / "skip" / "images").glob("*.jpg"))
    assert drawn == ["deep.jpg", "link_in.jpg", "link_out.jpg", "ok.jpg"]
    dets = json.loads((tmp_path / "skip" / "detections.json").read_text())
    files = {d["file_name"].split("/images/")[1] for d in dets}
    assert files == {"ok.png", "sub/deep.jpg", "link_in.png", "link_out.png"}


def test_jpeg_completeness_check():
    jpg = image_bytes("JPEG", quality=90)
    assert jpeg_is_complete(jpg)
    assert jpeg_is_complete(jpg + b"\x00" * 64 + b"camera trailer")  # bytes after the end marker are fine
    assert not jpeg_is_complete(jpg[:-2])
    progressive = image_bytes("JPEG", quality=90, progressive=True)
    assert jpeg_is_complete(progressive) and not jpeg_is_complete(progressive[: len(progressive) * 2 // 3])
    # an end marker inside a segment before the scan (an EXIF thumbnail's) does not count
    thumbnail = b"\xff\xe1" + (2 + 6).to_bytes(2, "big") + b"ab\xff\xd9cd"
    truncated = jpg[:2] + thumbnail + jpg[2: len(jpg) // 2]
    assert not jpeg_is_complete(truncated)
    assert jpeg_is_complete(jpg[:2] + thumbnail + jpg[2:])


@pytest.mark.parametrize("small_blocks", [False, True])
def test_jpeg_file_check_reads_head_and_tail_and_agrees_with_the_whole_file_check(tmp_path, monkeypatch, small_blocks):
    """The file check reads only the head and tail where that settles it; its answer is always the full check's."""
    import detr_ft.data.jpeg_check as jpeg_check

    if small_blocks:  # force the fall-backs: a head that ends before the scan, a tail without the end marker
        monkeypatch.setattr(jpeg_check, "JPEG_HEAD_BYTES", 16)
        monkeypatch.setattr(jpeg_check, "JPEG_TAIL_BYTES", 8)
    jpg = image_bytes("JPEG", quality=90)
    progressive = image_bytes("JPEG", quality=90, progressive=True)
    thumbnail = b"\xff\xe1" + (2 + 6).to_bytes(2, "big") + b"ab\xff\xd9cd"
    cases = {
        "whole": jpg, "trailer": jpg + b"\x00" * 64 + b"camera trailer",
        "long_trailer": jpg + b"\x07" * 10_000, "cut": jpg[:-2], "half": jpg[: len(jpg) // 2],
        "progressive": progressive, "progressive_cut": progressive[: len(progressive) * 2 // 3],
        "thumbnail": jpg[:2] + thumbnail + jpg[2:], "thumbnail_cut": jpg[:2] + thumbnail + jpg[2: len(jpg) // 2],
        "header_only": jpg[:20], "not_jpeg": b"\xff\xd8" + b"\x00" * 50,
    }
    for name, data in cases.items():
        path = tmp_path / f"{name}.jpg"
        path.write_bytes(data)
        assert jpeg_check.jpeg_file_is_complete(path) == jpeg_is_complete(data), name
    assert jpeg_check.jpeg_file_is_complete(tmp_path / "long_trailer.jpg")
    assert not jpeg_check.jpeg_file_is_complete(tmp_path / "thumbnail_cut.jpg")


def test_link_to_the_images_folder_itself_is_fine(tmp_path):
    """A DATA/images that is itself a link (e.g. to a bigger disk) holds no link leaving it."""
    real = tmp_path / "disk" / "pictures"
    real.mkdir(parents=True)
    (real / "a.png").write_bytes(image_bytes("PNG"))
    root = tmp_path / "data"
    (root / "annotations").mkdir(parents=True)
    os.symlink(real, root / "images")
    write_split(root, [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}], [])
    assert len(load_index(root, "train")) == 1


def test_legitimate_variety_passes_the_checks(tmp_path):
    """Any Pillow mode and format, EXIF-rotated JPEGs, subfolders, non-contiguous ids: nothing is left out."""
    from detr_ft.data.dataset import DetectionDataset
    from detr_ft.types import ResizeSpec

    root = tmp_path / "data"
    (root / "images" / "a" / "b").mkdir(parents=True)
    files = {"l.png": ("L", {}), "la.png": ("LA", {}), "p.gif": ("P", {}), "rgba.webp": ("RGBA", {}),
             "cmyk.jpg": ("CMYK", {}), "cmyk.tif": ("CMYK", {}), "i16.png": ("I;16", {}), "i16.tif": ("I;16", {}),
             "a/b/deep.bmp": ("RGB", {}), "prog.jpg": ("RGB", {"progressive": True})}
    for name, (mode, kw) in files.items():
        Image.new(mode, (40, 30)).save(root / "images" / name, **kw)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated: 30 wide, 40 high
    Image.new("RGB", (40, 30)).save(root / "images" / "rotated.jpg", exif=exif.tobytes())
    names = [*files, "rotated.jpg"]
    images = [{"id": 7 * i + 3, "file_name": n, "width": 30 if n == "rotated.jpg" else 40,
               "height": 40 if n == "rotated.jpg" else 30} for i, n in enumerate(names)]
    anns = [{"id": i, "image_id": im["id"], "category_id": 11, "bbox": [1, 1, 5, 5]} for i, im in enumerate(images)]
    index = load_index(write_split(root, images, anns), "train")
    assert len(index) == len(names) and index.report.skipped_records == 0
    dataset = DetectionDataset(index, ResizeSpec(64, 96))
    sizes = {r.file_name: dataset[i].orig_size for i, r in enumerate(index.records)}
    assert sizes["rotated.jpg"] == (40, 30) and sizes["i16.tif"] == (30, 40)


def test_dataset_without_any_object_trains_and_reports_skipped_records_of_both_splits(tmp_path):
    """No image has an object (the criterion handles all-empty batches); one bad record per split is
    skipped under --on-bad-data skip (by the sample predictions of the test split too), and
    metrics.json counts them per split."""
    from detr_ft.data.synthetic import SyntheticSpec, generate

    root = tmp_path / "empty"
    generate(root, train=6, val=3, seed=1, spec=SyntheticSpec(size=64, min_objects=0, max_objects=0))
    for split, count in (("train", 6), ("test", 3)):
        path = root / "annotations" / f"{split}.json"
        doc = json.loads(path.read_text())
        assert doc["annotations"] == [] and len(doc["images"]) == count
        doc["images"].append({"id": 999, "file_name": "not-there.png", "width": 64, "height": 64})
        path.write_text(json.dumps(doc))
    out = tmp_path / "run"
    cfg = TrainConfig(output_dir=str(out), data_dir=str(root), model="detr-tiny", max_steps=2, max_epochs=2,
                      batch_size=2, num_workers=0, on_bad_data="skip", max_inf_frames=2)
    from detr_ft.train import fit

    trainer, module, summary = fit(cfg)
    assert trainer.global_step == 2
    assert all(torch.isfinite(p).all() for p in module.model.parameters())
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["data"]["train"]["skipped_records"] == 1 and saved["data"]["test"]["skipped_records"] == 1
    assert len(list((out / "predictions" / "images").glob("*.jpg"))) == 2  # the samples skip the bad record too
    with pytest.raises(UserError, match="not-there.png'\\): image file missing"):
        fit(TrainConfig(**{**cfg.__dict__, "on_bad_data": "error", "output_dir": str(tmp_path / "run2")}))


# -- 2. every invalid flag or path: one line, exit 2, no traceback -----------------------------------------

BAD_FLAGS = [
    (["train", "--seed", "-1"], "--seed"),
    (["train", "--lr", "inf"], "--lr"),
    (["train", "--lr-backbone", "0"], "--lr-backbone"),
    (["train", "--weight-decay", "nan"], "--weight-decay"),
    (["train", "--grad-clip", "nan"], "--grad-clip"),
    (["train", "--max-minutes", "nan"], "--max-minutes"),
    (["train", "--max-epochs", "0", "--max-steps", "-1"], "--max-epochs"),
    (["train", "--num-workers", "-1"], "--num-workers"),
    (["train", "--warmup-steps", "-2"], "--warmup-steps"),
    (["train", "--hflip", "1.5"], "--hflip"),
    (["train", "--strategy", "bogus"], "--strategy bogus"),
    (["train", "--devices", "0"], "--devices"),
    (["train", "--pad-size", "64", "99999999"], "--pad-size"),
    (["train", "--on-non-finite", "ignore"], "--on-non-finite"),
    (["train", "--on-bad-data", "maybe"], "--on-bad-data"),
    (["train", "--use-ckpt"], "--use-ckpt needs --ckpt-path"),
    (["train", "--use-ckpt", "--ckpt-path", "{missing}"], "{missing}"),
    (["train", "--model", "{file}"], "--model"),
    (["train", "--config", "{missing}"], "--config"),
    (["train", "--data-dir", "{missing}"], "{missing}"),
    (["train", "--output-dir", "{file}"], "--output-dir"),
    (["train", "--output-dir", "{file}/sub"], "is a file"),
    (["train", "--resume"], "--resume: no checkpoint"),
    (["eval", "--ckpt-path", "{missing}", "--data-dir", "{data}"], "{missing}"),
    (["eval", "--ckpt-path", "{file}", "--data-dir", "{data}"], "truncated or corrupt"),
    (["eval", "--ckpt-path", "{ckpt}", "--data-dir", "{data}", "--split", "nosuch"], "nosuch.json"),
    (["eval", "--ckpt-path", "{ckpt}", "--data-dir", "{data}", "--batch-size", "0"], "--batch-size"),
    (["eval", "--ckpt-path", "{ckpt}", "--data-dir", "{data}", "--num-workers", "-1"], "--num-workers"),
    (["eval", "--ckpt-path", "{ckpt}", "--data-dir", "{data}", "--device", "mps"], "--device mps"),
    (["predict", "--ckpt-path", "{ckpt}", "--images", "{data}/images", "--device", "hpu"], "--device hpu needs"),
    (["train", "--device", "hpu"], "--device hpu needs lightning-habana"),
    pytest.param(["eval", "--ckpt-path", "{ckpt}", "--data-dir", "{data}", "--device", "cuda"], "--device cuda",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here")),
    pytest.param(["train", "--device", "cuda"], "--device cuda",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here")),
    (["eval", "--ckpt-path", "{ckpt}", "--data-dir", "{data}", "--output-dir", "{file}"], "--output-dir"),
    (["predict", "--ckpt-path", "{ckpt}", "--images", "{missing}"], "{missing}"),
    (["predict", "--ckpt-path", "{ckpt}", "--images", "{file}"], "{file}: not an image (unknown format)"),
    (["predict", "--ckpt-path", "{ckpt}", "--images", "{data}/images", "--max-inf-frames", "-2"],
     "--max-inf-frames"),
    (["predict", "--ckpt-path", "{ckpt}", "--images", "{data}/images", "--threshold", "nan"], "--threshold"),
    (["predict", "--ckpt-path", "{ckpt}", "--data-dir", "{missing}"], "{missing}"),
    (["export", "--ckpt-path", "{ckpt}", "--out", "{file}"], "--out"),
    (["export", "--ckpt-path", "{ckpt}", "--out", "{file}/x/y"], "Not a directory"),
    (["demo", "--minutes", "0"], "--minutes"),
    (["demo", "--minutes", "nan"], "--minutes"),
    (["data", "synthetic", "--out", "{file}"], "{file}"),
    (["data", "synthetic", "--out", "{missing}", "--size", "8"], "size"),
    (["data", "cppe5", "--out", "{missing}", "--url", "http://127.0.0.1:9/dataset.tar.gz"], "cannot reach"),
    (["data", "cppe5", "--out", "{file}"], "not a dataset folder"),
    (["train", "--batch-size", "many"], "--batch-size"),
]


@pytest.mark.parametrize("argv, needle", BAD_FLAGS,
                         ids=[" ".join((c.values if hasattr(c, "values") else c)[0][:3]) for c in BAD_FLAGS])
def test_invalid_flag_or_path_is_one_line_and_exit_2(argv, needle, synthetic_dir, trained_run, tmp_path, capsys):
    names = {"data": str(synthetic_dir), "ckpt": str(trained_run / "last.ckpt"), "missing": str(tmp_path / "nope"),
             "file": str(tmp_path / "a-file")}
    (tmp_path / "a-file").write_text("")
    argv = [a.format(**names) for a in argv]
    needle = needle.format(**names)
    if argv[0] == "train":
        argv = [*argv[:1], "--model", "detr-tiny", "--data-dir", names["data"], "--num-workers", "0", *argv[1:]]
    if "--output-dir" not in argv and argv[0] != "data":
        argv += ["--output-dir", str(tmp_path / "out")]
    rc, err, out = run_cli(argv, capsys, with_stdout=True)
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err
    assert not (tmp_path / "out" / "last.ckpt").exists()
    if argv[0] == "train":  # found before any work starts: nothing else printed
        assert out == "", out


@pytest.mark.parametrize("debug", [False, True])
def test_hub_retry_warnings_stay_quiet_unless_debugging(debug, monkeypatch):
    """Offline, a hub id fails after huggingface_hub's retries, each of which it warns about;
    detr-ft's one error line is all a user sees (``--debug`` shows the retries)."""
    import logging

    from huggingface_hub import constants
    from huggingface_hub.utils._http import http_backoff

    from detr_ft.log_policy import HUB_RETRY_LOGGER, configure_logging

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the suite runs offline; this test is "online"
    seen = []
    handler = logging.Handler()
    handler.emit = seen.append
    logger = logging.getLogger(HUB_RETRY_LOGGER)
    logger.addHandler(handler)
    try:
        configure_logging(debug)
        with pytest.raises(Exception, match="[Cc]onnect"):  # a closed port, as offline
            http_backoff("HEAD", "http://127.0.0.1:9/config.json", max_retries=1, base_wait_time=0.01)
    finally:
        logger.removeHandler(handler)
        configure_logging(False)
    retries = [r for r in seen if "thrown while requesting" in r.getMessage()]
    assert len(retries) == (2 if debug else 0)


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(UserError, match="--seed"):
        main(["train", "--seed", "-1", "--debug", "--output-dir", str(tmp_path)])


# -- 4. a checkpoint whose unpickling would run code is refused, and nothing runs -------------------------

class RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def evil_ckpt(trained_run, tmp_path) -> tuple[Path, Path]:
    """A real detr-ft checkpoint with one extra entry that would run ``touch MARKER`` when unpickled."""
    marker = tmp_path / "code-ran"
    ckpt = torch.load(trained_run / "last.ckpt", weights_only=True)
    ckpt["callbacks"]["extra"] = RunsCode(marker)
    path = tmp_path / "evil" / "last.ckpt"
    path.parent.mkdir()
    torch.save(ckpt, path)
    return path, marker


@pytest.mark.parametrize("command", ["eval", "predict", "export", "use-ckpt", "resume"])
def test_checkpoint_that_would_run_code_is_refused(command, evil_ckpt, synthetic_dir, tmp_path, capsys):
    path, marker = evil_ckpt
    data = ["--data-dir", str(synthetic_dir)]
    train = ["train", "--model", "detr-tiny", "--max-epochs", "1", "--num-workers", "0", *data]
    argv = {
        "eval": ["eval", "--ckpt-path", str(path), *data, "--output-dir", str(tmp_path / "o")],
        "predict": ["predict", "--ckpt-path", str(path), *data, "--output-dir", str(tmp_path / "o")],
        "export": ["export", "--ckpt-path", str(path), "--out", str(tmp_path / "o")],
        "use-ckpt": [*train, "--use-ckpt", "--ckpt-path", str(path), "--output-dir", str(tmp_path / "o")],
        "resume": [*train, "--resume", "--output-dir", str(path.parent)],
    }[command]
    rc, err = run_cli(argv, capsys)
    assert rc == 2
    assert "refused: loading it would import posix.system" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()
    # the same file does run code with weights_only=False: the test would notice a loader that allowed it
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_lightning_resume_path_loads_with_weights_only(trained_run, torch_load_weights_only):
    """trainer.fit(ckpt_path=...) reads through AtomicCheckpointIO -> load_checkpoint (weights_only=True)."""
    from detr_ft.resume import AtomicCheckpointIO

    ckpt = AtomicCheckpointIO().load_checkpoint(trained_run / "last.ckpt", weights_only=False)
    assert "state_dict" in ckpt and "optimizer_states" in ckpt and torch_load_weights_only == [True]


def test_export_writes_safetensors_only(trained_run, tmp_path):
    from safetensors.torch import load_file

    assert main(["export", "--ckpt-path", str(trained_run / "last.ckpt"), "--out", str(tmp_path / "hf")]) == 0
    files = {p.name for p in (tmp_path / "hf").iterdir()}
    assert "model.safetensors" in files and not {"pytorch_model.bin", "model.pt"} & files
    weights = load_file(tmp_path / "hf" / "model.safetensors")
    assert weights and all(isinstance(v, torch.Tensor) for v in weights.values())


# -- 5. non-finite loss: stop naming the step and keep the last good checkpoint, or skip the batch ----------

def inject_nan(monkeypatch, at_call: int) -> list[dict]:
    """Make the ``at_call``-th training loss (1-based) NaN; returns a log of what happened at that call."""
    from detr_ft.engine import DetrModule

    real = DetrModule.compute_loss
    calls: list[int] = []
    seen: list[dict] = []

    def compute_loss(self, batch, *args, **kwargs):
        losses = real(self, batch, *args, **kwargs)
        if self.training:
            calls.append(1)
            if len(calls) == at_call:
                losses = {**losses, "loss": losses["loss"] * float("nan")}
                seen.append({"step": self.global_step,
                             "params": [p.detach().clone() for p in self.model.parameters()]})
        return losses

    monkeypatch.setattr(DetrModule, "compute_loss", compute_loss)
    return seen


def nan_run_config(out: Path, data: Path, **kw) -> TrainConfig:
    return TrainConfig(output_dir=str(out), data_dir=str(data), model="detr-tiny", max_epochs=3, batch_size=8,
                       num_workers=0, train_only=True, ckpt_store_interval_epochs=1, **kw)


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(synthetic_dir, tmp_path,
                                                                                   monkeypatch):
    from detr_ft.train import fit

    inject_nan(monkeypatch, at_call=3)  # 2 steps per epoch: the first step of the second epoch
    with pytest.raises(UserError) as e:
        fit(nan_run_config(tmp_path, synthetic_dir))
    msg = str(e.value)
    assert "the training loss is nan at step 2 (epoch 1, batch 0)" in msg and "--on-non-finite skip" in msg
    assert "\n" not in msg and str(tmp_path) in msg
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (0, 2)
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
    assert (tmp_path / "epoch000.ckpt").is_file() and not (tmp_path / "epoch001.ckpt").exists()
    assert not (tmp_path / "metrics.json").exists()


def test_non_finite_loss_under_skip_makes_no_update_and_is_counted(synthetic_dir, tmp_path, monkeypatch):
    from detr_ft.engine import DetrModule
    from detr_ft.train import fit

    seen = inject_nan(monkeypatch, at_call=2)
    after: list[list[torch.Tensor]] = []

    def on_train_batch_end(self, outputs, batch, batch_idx):
        after.append([p.detach().clone() for p in self.model.parameters()])

    monkeypatch.setattr(DetrModule, "on_train_batch_end", on_train_batch_end)
    trainer, module, summary = fit(nan_run_config(tmp_path, synthetic_dir, on_non_finite="skip"))
    assert summary["skipped_non_finite_steps"] == 1
    assert json.loads((tmp_path / "metrics.json").read_text())["skipped_non_finite_steps"] == 1
    # the skipped batch (the 2nd) changed no weight; the batches around it did
    assert all(torch.equal(a, b) for a, b in zip(seen[0]["params"], after[1]))
    assert not all(torch.equal(a, b) for a, b in zip(after[0], after[2]))
    optimizer = trainer.optimizers[0]
    steps = {int(s["step"]) for s in optimizer.state.values()}
    assert steps == {5}  # 6 batches, one skipped: AdamW stepped 5 times
    assert all(torch.isfinite(p).all() for p in module.model.parameters())


def test_the_data_command_with_an_unreachable_url_exits_2(tmp_path, capsys):
    rc, err = run_cli(["data", "cppe5", "--url", "http://127.0.0.1:9/dataset.tar.gz", "--md5", "0" * 32,
                       "--out", str(tmp_path / "d")], capsys)
    assert rc == 2 and "cannot reach" in err and "Traceback" not in err
    assert not (tmp_path / "d").exists()
