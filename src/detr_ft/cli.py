"""Command line: argument parsing only. Each subcommand calls one function.

User mistakes (``UserError`` and bad flags) print one line on stderr and exit
with code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import fields
from pathlib import Path

from detr_ft.config import DEFAULT_DATA_DIR, DEMO_MINUTES, DEVICES, PRESET_RECIPE, PRETRAINED_RECIPE, TrainConfig
from detr_ft.config_file import config_defaults
from detr_ft.errors import UserError
from detr_ft.log_policy import configure_logging
from detr_ft.loggers import LOGGERS
from detr_ft.schedule import SCHEDULES


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2) that name the fix."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class CommandLine(Parser):
    """The root parser. The file of ``train --config FILE`` is read first and its settings become the
    train flags' defaults; argv is then parsed once, so the flags given override the file. A bad file
    raises ``UserError``."""

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        first = first_pass(args)
        if first.command == "train" and first.config:
            train = self._subparsers._group_actions[0].choices["train"]
            train.set_defaults(**config_defaults(first.config, train))
        return super().parse_known_args(args, namespace)


def default_output_dir(command: str) -> Path:
    return Path("runs") / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_output_dir(path: Path, flag: str = "--output-dir") -> None:
    """Refuse an output folder that is a file, lies under a file, or cannot be written (nothing is created)."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path}: is a file; choose a folder")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{flag} {path}: {parent} is a file, not a folder; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: no permission to write in {parent}; choose another path")


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output-dir", help="where files are written (default runs/<subcommand>-<timestamp>)")
    p.add_argument("--debug", action="store_true", help="show tracebacks and library logs")


def add_channels_last(p, default: bool = True) -> None:
    """``--channels-last`` / ``--no-channels-last`` (train, eval, predict, bench)."""
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=default,
                   help="channels-last convolutions on CPU and CUDA (faster there; the same results)")


def add_inference_autocast(p) -> None:
    """``--autocast`` for eval and predict, as train has it."""
    p.add_argument("--autocast", action="store_true",
                   help="bf16 mixed precision: faster on GPUs and on CPUs with bf16 instructions "
                        "(AVX-512 BF16, AMX); scores and boxes move by bf16 rounding")


def threshold_arg(value: str):
    """--threshold: a score, or "auto" (the per-class thresholds)."""
    if value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1 or 'auto', got {value!r}") from None


def add_train_args(p: argparse.ArgumentParser) -> None:
    b = argparse.BooleanOptionalAction
    d = TrainConfig()
    g = p.add_argument_group("data and model")
    g.add_argument("--data-dir", default=d.data_dir, help=f"dataset in CPPE-5 layout (default {DEFAULT_DATA_DIR})")
    g.add_argument("--hf-dataset", default=d.hf_dataset, metavar="NAME_OR_PATH",
                   help="read a 🤗 datasets detection dataset (CPPE-5's hub schema; a hub id or a save_to_disk "
                        "folder) instead of --data-dir; needs pip install 'detr-ft[hub]'")
    g.add_argument("--model", default=d.model,
                   help="hub id (default facebook/detr-resnet-50), local Hugging Face directory, or preset "
                        "(detr-tiny)")
    g.add_argument("--on-bad-data", choices=["error", "skip"], default=d.on_bad_data,
                   help="bad dataset records: stop with a report, or leave them out and count them")
    g = p.add_argument_group("training (flags of the original example)")
    g.add_argument("--max-epochs", type=int, default=d.max_epochs)
    g.add_argument("--max-steps", type=int, default=d.max_steps, help="stop after N optimizer steps (-1: no limit)")
    g.add_argument("--batch-size", type=int, default=d.batch_size)
    g.add_argument("--num-workers", type=int, default=d.num_workers, help="data-loading processes")
    g.add_argument("--deterministic", action=b, default=d.deterministic,
                   help="seeded, deterministic algorithms, single-process data loading")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--pad", action=b, default=d.pad, help="put every image on a fixed canvas (static shapes)")
    g.add_argument("--num-buckets", type=int, default=d.num_buckets,
                   help="pad targets to one of K object counts (0: the batch maximum)")
    g.add_argument("--autocast", action=b, default=d.autocast, help="bf16 mixed precision")
    g.add_argument("--device", choices=DEVICES, default=d.device)
    g.add_argument("--use-ckpt", action=b, default=d.use_ckpt, help="start from the weights in --ckpt-path")
    g.add_argument("--ckpt-path", default=d.ckpt_path)
    g.add_argument("--ckpt-store-interval-epochs", type=int, default=d.ckpt_store_interval_epochs,
                   help="also keep a checkpoint every N epochs")
    g.add_argument("--ckpt-store-path", default=d.ckpt_store_path, help="where periodic checkpoints go")
    g.add_argument("--threshold", type=float, default=d.threshold,
                   help="score threshold of the sample predictions drawn after training")
    g.add_argument("--max-inf-frames", type=int, default=d.max_inf_frames,
                   help="how many validation images to annotate after training")
    g.add_argument("--train-only", action=b, default=d.train_only, help="no validation, no sample predictions")
    g.add_argument("--bootstrap", type=int, default=d.bootstrap, metavar="N",
                   help="resamples for the final validation's 95 %% intervals (default: 200 up to 100 images, "
                        "fewer up to 499 (at least 50), none from 500; 0: off)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--lr-backbone", type=float, default=d.lr_backbone)
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--grad-clip", type=float, default=d.grad_clip, help="gradient norm clip (0: off)")
    g.add_argument("--on-non-finite", choices=["error", "skip"], default=d.on_non_finite,
                   help="a NaN/inf training loss: stop (keeping the last good checkpoint), or skip the batch")
    g.add_argument("--lr-schedule", choices=SCHEDULES, default=d.lr_schedule,
                   help="after the warm-up: constant, cosine to 0, or step (x0.1 at 2/3 of training, as DETR; default %(default)s)")
    g.add_argument("--warmup-steps", type=int, default=d.warmup_steps,
                   help="linear learning-rate warm-up over N optimizer steps, in every schedule (default %(default)s)")
    g.add_argument("--max-minutes", type=float, default=d.max_minutes, help="stop training after M minutes")
    add_augment_args(p, d)
    g = p.add_argument_group("training recipe: EMA, best checkpoint, early stopping")
    g.add_argument("--ema", action=b, default=d.ema,
                   help="keep an exponential moving average of the weights; validation, best.ckpt, last.ckpt's "
                        "weights (eval, predict, export) use it (default: "
                        f"{'on' if PRESET_RECIPE.ema else 'off'} for the tiny presets, "
                        f"{'on' if PRETRAINED_RECIPE.ema else 'off'} for pretrained models)")
    g.add_argument("--ema-decay", type=float, default=d.ema_decay, help="EMA decay, between 0 and 1 excluded (default %(default)s)")
    g.add_argument("--ema-warmup-steps", type=int, default=d.ema_warmup_steps,
                   help="ramp the decay up as decay * (1 - exp(-step / N)) (0: no ramp; default %(default)s)")
    g.add_argument("--patience", type=int, default=d.patience,
                   help="stop after N validations without a higher val_map (0, the default: never stop early)")
    g.add_argument("--accumulate-grad-batches", type=int, default=d.accumulate_grad_batches,
                   help="one optimizer step every N batches (a global batch N times larger; default %(default)s)")
    g = p.add_argument_group("static shapes, devices, runs")
    g.add_argument("--pad-size", type=int, nargs=2, metavar=("H", "W"), default=d.pad_size,
                   help="canvas for --pad (default: the largest size the model's resize produces)")
    g.add_argument("--pad-canvases", choices=["square", "auto"], default=d.pad_canvases,
                   help="auto: a landscape and a portrait canvas, batches grouped by orientation")
    g.add_argument("--compile", action=b, default=d.compile, help="torch.compile the model")
    add_channels_last(g, d.channels_last)
    g.add_argument("--devices", type=int, default=d.devices)
    g.add_argument("--num-nodes", type=int, default=d.num_nodes)
    g.add_argument("--strategy", default=d.strategy, help="Lightning strategy (auto, ddp, ddp_spawn, ...)")
    g.add_argument("--resume", action=b, default=d.resume, help="continue from the newest checkpoint in --output-dir")
    g.add_argument("--logger", choices=LOGGERS, default=d.logger,
                   help="experiment tracker beside metrics.csv (always written); mlflow and wandb are extras (default %(default)s)")
    g.add_argument("--tracking-uri", default=d.tracking_uri,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else a file store in OUTPUT_DIR/mlruns)")
    g.add_argument("--config", help="YAML file of train settings (keys are flag names); flags override it")


def add_data_tools(data_sub) -> None:
    """``data check``, ``data convert`` and ``data split`` (data/check.py, convert.py, split.py)."""
    check = data_sub.add_parser("check", help="is a dataset fit to learn from: a report with pictures")
    src = check.add_mutually_exclusive_group()
    src.add_argument("--data-dir", default=None, help=f"dataset in CPPE-5 layout (default {DEFAULT_DATA_DIR})")
    src.add_argument("--hf-dataset", metavar="NAME_OR_PATH", help="a 🤗 datasets dataset instead of --data-dir")
    check.add_argument("--model", help="measure boxes after this model's resize (preset or model folder; "
                                       "default: DETR-R50's 800/1333)")
    check.add_argument("--image-size", type=int, nargs="+", metavar="SHORT [LONG]",
                       help="measure boxes after this resize instead of --model's")
    check.add_argument("--on-bad-data", choices=["error", "skip"], default="error",
                       help="records training would refuse: stop (exit 2) as training does, or report them")
    check.add_argument("--min-box-pixels", type=float, default=4.0, help="tiny: a box side under this after resize")
    check.add_argument("--few-objects", type=int, default=10, help="rare: a class with fewer training objects")
    check.add_argument("--near-duplicate-bits", type=int, default=10,
                       help="near-duplicates: perceptual hashes (64 bits) differing in at most this many")
    check.add_argument("--overlap-iou", type=float, default=0.9, help="duplicate boxes: same class, IoU above this")
    add_common(check)
    conv = data_sub.add_parser("convert", help="YOLO, Pascal VOC or LabelMe dataset -> detr-ft's COCO layout")
    conv.add_argument("--from", dest="source_format", required=True, choices=["yolo", "voc", "labelme"])
    conv.add_argument("source", metavar="SRC", help="the dataset's top folder")
    conv.add_argument("--out", required=True, help="where images/ and annotations/{train,test}.json go")
    conv.add_argument("--split", type=float, default=0.9,
                      help="training share of a source without its own train/test splits (stratified)")
    conv.add_argument("--seed", type=int, default=0)
    conv.add_argument("--on-bad-data", choices=["error", "skip"], default="error",
                      help="bad records: stop naming them, or leave them out and count them")
    add_common(conv)
    split = data_sub.add_parser("split", help="a seeded, class-stratified train/test split of a COCO file")
    split.add_argument("--annotations", required=True, metavar="FILE.json")
    split.add_argument("--out", required=True, help="writes OUT/annotations/{train,test}.json")
    split.add_argument("--split", type=float, default=0.9, help="training share")
    split.add_argument("--seed", type=int, default=0)
    add_common(split)


def cmd_data_tools(args: argparse.Namespace) -> int:
    """Run ``data check``, ``convert`` or ``split``."""
    if args.data_command == "check":
        from detr_ft.data.check import resize_for_check, run_check
        from detr_ft.data.health import CheckSettings

        out = Path(args.output_dir) if args.output_dir else default_output_dir("data-check")
        check_output_dir(out)
        settings = CheckSettings(resize_for_check(args.model, args.image_size), args.min_box_pixels,
                                 args.few_objects, args.near_duplicate_bits, args.overlap_iou)
        run_check(out, args.data_dir or DEFAULT_DATA_DIR, args.hf_dataset, args.on_bad_data, settings)
        return 0
    if args.data_command == "convert":
        from detr_ft.data.convert import convert

        check_output_dir(Path(args.out), "--out")
        summary = convert(args.source_format, Path(args.source), Path(args.out), args.split, args.seed,
                          args.on_bad_data)
    else:
        from detr_ft.data.split import split_coco

        check_output_dir(Path(args.out), "--out")
        summary = split_coco(Path(args.annotations), Path(args.out), args.split, args.seed)
    print(json.dumps(summary, indent=1))
    return 0
def add_image_size(p, what: str) -> None:
    """``--image-size SHORT [LONG]`` (train, eval, predict)."""
    p.add_argument("--image-size", type=int, nargs="+", metavar=("SHORT", "LONG"), default=None,
                   help=f"resize SHORT [LONG]: short side to SHORT px, long side at most LONG (default LONG: SHORT "
                        f"times the model's long/short ratio); {what} (default: %(default)s)")


def add_augment_args(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    """Training resolution and augmentation (``data/augment.py``); a knob given replaces --augment's value."""
    from_preset = "(default: the --augment preset's)"
    g = p.add_argument_group("resolution and augmentation (data/augment.py; the README's 'Training recipe')")
    add_image_size(g, "saved in the checkpoint and the export, so eval and predict use it; None: the model's")
    g.add_argument("--augment", choices=["auto", "none", "flip", "detr", "strong"], default=d.augment,
                   help="preset: none; flip (hflip 0.5); detr (+ short side drawn from 0.6-1.0 x the resize's, "
                        "random-size crop p 0.5); strong (detr + photometric p 0.8, zoom-out p 0.3); auto, the "
                        f"default: {PRESET_RECIPE.augment} for the tiny presets, {PRETRAINED_RECIPE.augment} for "
                        "pretrained models (hub ids, directories)")
    g.add_argument("--hflip", type=float, default=d.hflip,
                   help=f"probability of a horizontal flip; 0 for text, digits, arrows {from_preset}")
    g.add_argument("--scales", type=int, nargs=2, metavar=("MIN", "MAX"), default=d.scales,
                   help="short side drawn per image from MIN..MAX px, long side capped at the resize's long/short "
                        f"ratio times max(MAX, SHORT); above SHORT enlarges the canvases {from_preset}")
    g.add_argument("--crop", type=float, default=d.crop, help=f"probability of a random-size crop {from_preset}")
    g.add_argument("--crop-min", type=float, default=d.crop_min,
                   help="smallest crop side, a fraction of the image's (default: %(default)s)")
    g.add_argument("--min-visibility", type=float, default=d.min_visibility,
                   help="a cropped box is kept if this fraction of its area stays visible (default: %(default)s)")
    g.add_argument("--photometric", type=float, default=d.photometric,
                   help=f"probability of a colour distortion {from_preset}")
    g.add_argument("--jitter", type=float, nargs=4, metavar=("B", "C", "S", "H"), default=d.jitter,
                   help="colour distortion strengths: brightness, contrast, saturation factors 1 +- B, C, S; "
                        "hue +- H turns (default: %(default)s)")
    g.add_argument("--zoom-out", type=float, default=d.zoom_out,
                   help=f"probability of a zoom-out (image in a larger frame of the mean colour) {from_preset}")
    g.add_argument("--zoom-out-max", type=float, default=d.zoom_out_max,
                   help="largest zoom-out frame, times the image's size (default: %(default)s)")


def build_parser() -> CommandLine:
    parser = CommandLine(prog="detr-ft", description="Fine-tune DETR object detectors on COCO-format data.")
    parser.add_argument("--version", action="version", version=f"detr-ft {__import__('detr_ft').__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    data = sub.add_parser("data", help="make or download a dataset")
    data_sub = data.add_subparsers(dest="data_command", metavar="KIND", parser_class=Parser)
    data_sub.required = True
    syn = data_sub.add_parser("synthetic", help="write the deterministic synthetic shapes dataset")
    syn.add_argument("--out", required=True)
    syn.add_argument("--train", type=int, default=200)
    syn.add_argument("--val", type=int, default=50)
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--size", type=int, default=256, help="long side of the images in pixels")
    add_common(syn)
    cppe = data_sub.add_parser("cppe5", help="download and verify the CPPE-5 dataset")
    cppe.add_argument("--out", required=True)
    cppe.add_argument("--url", default=None, help="download address (default: the official release)")
    cppe.add_argument("--md5", default=None, help="expected md5 (default: the official one)")
    cppe.add_argument("--force", action="store_true", help="replace a dataset already there")
    add_common(cppe)
    add_data_tools(data_sub)

    train = sub.add_parser("train", help="fine-tune a detector")
    add_train_args(train)
    add_common(train)

    ev = sub.add_parser("eval", help="COCO metrics of a checkpoint")
    ev.add_argument("--ckpt-path", required=True)
    ev.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    ev.add_argument("--hf-dataset", metavar="NAME_OR_PATH", help="a 🤗 datasets dataset instead of --data-dir")
    ev.add_argument("--split", default="test")
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--num-workers", type=int, default=0, help="data-loading processes (default 0: none)")
    ev.add_argument("--device", choices=DEVICES, default="auto")
    ev.add_argument("--on-bad-data", choices=["error", "skip"], default="error")
    add_image_size(ev, "None: the checkpoint's")
    ev.add_argument("--bootstrap", type=int, default=None, metavar="N",
                    help="resamples of the images for 95 %% intervals of mAP and mAP50 (default: 200 up to 100 "
                         "images, fewer up to 499 (at least 50), none from 500; 0: off)")
    add_channels_last(ev)
    add_inference_autocast(ev)
    add_common(ev)

    pr = sub.add_parser("predict", help="annotated images and detections.json")
    pr.add_argument("--ckpt-path", required=True)
    src = pr.add_mutually_exclusive_group()
    src.add_argument("--images", nargs="+", help="image files or folders")
    src.add_argument("--data-dir", default=None)
    src.add_argument("--hf-dataset", metavar="NAME_OR_PATH", help="a 🤗 datasets dataset instead of --data-dir")
    pr.add_argument("--split", default="test")
    add_image_size(pr, "None: the checkpoint's")
    pr.add_argument("--threshold", type=threshold_arg, default=0.5,
                    help="score threshold, or 'auto': each class's F1-optimal threshold (see --thresholds)")
    pr.add_argument("--thresholds", metavar="JSON", help="metrics.json of eval or train (or an export's config.json) "
                    "with per-class thresholds (default: beside the checkpoint)")
    pr.add_argument("--max-inf-frames", type=int, default=0, help="at most N images (0: all)")
    pr.add_argument("--batch-size", type=int, default=8)
    pr.add_argument("--device", choices=DEVICES, default="auto")
    pr.add_argument("--pad", action=argparse.BooleanOptionalAction, default=False,
                    help="run on the fixed canvas of training (static shapes)")
    pr.add_argument("--on-bad-data", choices=["error", "skip"], default="error",
                    help="unusable image files or dataset records: stop before any image is run, naming "
                         "them, or leave them out with a warning")
    add_channels_last(pr)
    add_inference_autocast(pr)
    pr.add_argument("--cuda-graphs", action="store_true",
                    help="replay CUDA graphs (torch.compile reduce-overhead); needs --pad and --device cuda")
    pr.add_argument("--num-buckets", type=int, default=0,
                    help="accepted for the original command line; inference has no targets to bucket")
    pr.add_argument("--use-ckpt", action=argparse.BooleanOptionalAction, default=True,
                    help="accepted for the original command line (a checkpoint is always used)")
    add_common(pr)

    ex = sub.add_parser("export", help="write a Hugging Face model directory and/or an ONNX file")
    ex.add_argument("--ckpt-path", required=True)
    ex.add_argument("--out", required=True, help="the folder written (ONNX: OUT/model.onnx)")
    ex.add_argument("--format", default="hf", help="hf, onnx, or both: hf,onnx (default hf)")
    ex.add_argument("--pad-size", type=int, nargs=2, metavar=("H", "W"),
                    help="ONNX: the static canvas (default: the largest the model's resize produces)")
    ex.add_argument("--batch-size", type=int, default=1, help="ONNX: the fixed batch size (default 1)")
    ex.add_argument("--dynamic-batch", action="store_true", help="ONNX: a dynamic batch axis instead")
    ex.add_argument("--quantize", choices=["int8"], help="ONNX: dynamic int8 quantisation (ONNX Runtime)")
    ex.add_argument("--parity-check", action=argparse.BooleanOptionalAction, default=True,
                    help="ONNX: refuse an export whose outputs differ from PyTorch's on a probe batch")
    ex.add_argument("--thresholds", metavar="JSON", help="metrics.json whose per-class thresholds go into the "
                    "export (default: the metrics.json beside the checkpoint, if it has them)")
    add_common(ex)

    demo = sub.add_parser("demo", help="synthetic data -> train -> eval -> predict, offline")
    demo.add_argument("--minutes", type=float, default=DEMO_MINUTES, help="wall-time budget for the whole demo")
    add_common(demo)

    bench = sub.add_parser("bench", help="throughput and start-up beside the stock transformers path")
    bench.add_argument("--what", default="train,static,infer,startup,data",
                       help="comma-separated subset of train,static,infer,startup,data; also infer-onnx (ONNX Runtime "
                            "against PyTorch, needs the onnx extra)")
    bench.add_argument("--model", default="detr-tiny", help="a preset of any family (detr-tiny, rtdetr-tiny, "
                                                            "lwdetr-tiny, ...), detr-r50 (DETR-R50 architecture, "
                                                            "random weights) or a Hugging Face model directory; "
                                                            "the stock side is its family's transformers classes")
    bench.add_argument("--image-size", help="S (S x S) or HxW (default: 320, 512 for detr-r50)")
    bench.add_argument("--batch-size", type=int, help="default: 8, 16 for detr-tiny, 2 for detr-r50")
    bench.add_argument("--steps", type=int, default=10, help="timed steps per side")
    bench.add_argument("--warmup", type=int, default=2, help="untimed steps per side first")
    bench.add_argument("--rounds", type=int, default=3, help="timed passes per side (data, startup, infer)")
    bench.add_argument("--device", choices=DEVICES, default="auto")
    bench.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16: autocast, both sides")
    add_channels_last(bench)  # detr-ft's side and the bare network; the stock side stays NCHW
    bench.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                       help="torch.compile the network on both sides; CUDA graphs for the batch-1 latency")
    bench.add_argument("--data-dir", help="a dataset in CPPE-5 layout (default: a synthetic one, --images big)")
    bench.add_argument("--images", type=int, default=200, help="synthetic training images")
    bench.add_argument("--source-size", type=int, help="long side of the synthetic images (default: the resize's)")
    bench.add_argument("--workers", default="0,2", help="data-loading workers of the data benchmark")
    bench.add_argument("--augment", choices=["none", "flip", "detr", "strong"], default="flip",
                       help="train's --augment preset in the data benchmark, both sides (the stock side with "
                            "albumentations: pip install 'detr-ft[albumentations]') (default: %(default)s)")
    bench.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                       help="peak RSS of each side, in fresh processes")
    bench.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    bench.add_argument("--json", help="also write the records to this file")
    add_common(bench)
    return parser


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The train settings of parsed ``args`` (a --config file's values are already their defaults)."""
    return TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})


def first_pass(argv: list[str] | None) -> argparse.Namespace:
    """The command, --config and --debug, read before the real parse; everything else is left to it
    (a malformed --config, too: the real parse names the mistake)."""
    pre = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    pre.add_argument("command", nargs="?")
    pre.add_argument("--config")
    pre.add_argument("--debug", action="store_true")
    try:
        return pre.parse_known_args(argv)[0]
    except argparse.ArgumentError:
        return argparse.Namespace(command=None, config=None, debug=False)


def main(argv: list[str] | None = None) -> int:
    """Parse argv, set the log policy, run the command. A user's mistake (``UserError``, a path the
    file system refuses, a setting Lightning rejects) is one line on stderr and exit code 2."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UserError as e:  # the train --config file, read while parsing
        if first_pass(argv).debug:
            raise
        return refuse("train", e)
    configure_logging(args.debug, args.command)
    try:
        return dispatch(args)
    except UserError as e:
        if args.debug:
            raise
        return refuse(args.command, e)
    except OSError as e:  # the file system refused a path (permission, missing folder, disk full): the user's to fix
        if args.debug:
            raise
        where = f": {e.filename}" if e.filename else ""
        return refuse(args.command, f"{e.strerror or e}{where}; check the path and its permissions (--debug shows "
                                    f"where)")
    except Exception as e:
        if args.debug or "lightning" not in sys.modules:  # Lightning's complaint about settings, below
            raise
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        if not isinstance(e, MisconfigurationException):
            raise
        return refuse(args.command, str(e).strip().splitlines()[0])
    except KeyboardInterrupt:
        print("detr-ft: interrupted", file=sys.stderr)
        return 130


def refuse(command: str, why) -> int:
    """The one line of a user's mistake; the exit code 2."""
    print(f"detr-ft {command}: error: {why}", file=sys.stderr)
    return 2


def dispatch(args: argparse.Namespace) -> int:
    out = Path(args.output_dir) if args.output_dir else default_output_dir(args.command)
    if args.command == "data":
        return cmd_data(args)
    check_output_dir(out)
    if args.command == "train":
        from detr_ft.train import run_train

        cfg = train_config(args)
        cfg.output_dir = str(out)
        summary = run_train(cfg)
        if summary is None:  # another process of a multi-process run: rank 0 reports
            return 0
        boot = summary.get("bootstrap") or {}
        print_summary("train", out, {**{k: summary.get(k) for k in ("map", "map_50")},
                                     **{f"{k} 95% interval": f"[{boot[k][0]:.4f}, {boot[k][1]:.4f}]"
                                        for k in ("map", "map_50") if boot.get(k)},
                                     **{k: summary.get(k) for k in ("images_per_second", "epochs", "steps", "buckets",
                                                                    "recompiles")},
                                     "report": out / "report.html" if (out / "report.html").is_file() else None})
        return 0
    if args.command == "eval":
        from detr_ft.evaluate import run_eval

        if args.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1 (got {args.batch_size})")
        if args.num_workers < 0:
            raise UserError(f"--num-workers must be 0 or more (got {args.num_workers})")
        if args.bootstrap is not None and args.bootstrap < 0:
            raise UserError(f"--bootstrap must be 0 (off) or a number of resamples (got {args.bootstrap})")
        run_eval(args.ckpt_path, args.data_dir, out, args.split, args.batch_size, args.num_workers,
                 device=args.device, on_bad_data=args.on_bad_data, hf_dataset=args.hf_dataset,
                 channels_last=args.channels_last, autocast=args.autocast, image_size=args.image_size,
                 bootstrap=args.bootstrap)
        print(f"\nmetrics: {out / 'metrics.json'}\ndetections: {out / 'detections.json'}\n"
              f"report: {out / 'report.html'}")
        return 0
    if args.command == "predict":
        return cmd_predict(args, out)
    if args.command == "export":
        return cmd_export(args)
    if args.command == "demo":
        from detr_ft.demo import run_demo

        if not (math.isfinite(args.minutes) and args.minutes > 0):
            raise UserError(f"--minutes must be a positive number of minutes (got {args.minutes})")
        run_demo(out, minutes=args.minutes)
        return 0
    if args.command == "bench":
        from detr_ft.bench.config import config_from_args
        from detr_ft.bench.run import run_bench_command

        return run_bench_command(config_from_args(args), out, args.json)
    raise AssertionError(args.command)


def cmd_data(args: argparse.Namespace) -> int:
    if args.data_command in ("check", "convert", "split"):
        return cmd_data_tools(args)
    if args.data_command == "synthetic":
        from detr_ft.data.synthetic import SyntheticSpec, generate

        summary = generate(Path(args.out), train=args.train, val=args.val, seed=args.seed,
                           spec=SyntheticSpec(size=args.size))
        print(json.dumps(summary, indent=1))
        return 0
    from detr_ft.data.download import CPPE5_MD5, CPPE5_URL, download_dataset

    url = args.url or CPPE5_URL
    md5 = args.md5 if args.md5 is not None else (CPPE5_MD5 if args.url is None else None)
    path = download_dataset(Path(args.out), url=url, md5=md5, force=args.force)
    print(f"dataset ready in {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    if not formats or set(formats) - {"hf", "onnx"}:
        raise UserError(f"--format {args.format}: choose hf, onnx or hf,onnx")
    if "onnx" not in formats and (args.pad_size or args.dynamic_batch or args.quantize or args.batch_size != 1
                                  or not args.parity_check):
        raise UserError("--pad-size, --batch-size, --dynamic-batch, --quantize and --no-parity-check apply to "
                        "--format onnx")
    if "hf" in formats:
        from detr_ft.export import export

        path = export(args.ckpt_path, Path(args.out), thresholds_file=args.thresholds)
        print(f"exported a Hugging Face model directory to {path}")
    if "onnx" in formats:
        from detr_ft.onnx_export import ONNX_NAME, export_onnx
        from detr_ft.thresholds import load_thresholds

        path = export_onnx(args.ckpt_path, Path(args.out).expanduser() / ONNX_NAME, pad_size=args.pad_size,
                           batch_size=args.batch_size, dynamic_batch=args.dynamic_batch, quantize=args.quantize,
                           parity_check=args.parity_check,
                           thresholds=load_thresholds(args.ckpt_path, args.thresholds))
        print(f"exported an ONNX model to {path}")
    return 0


def cmd_predict(args: argparse.Namespace, out: Path) -> int:
    from detr_ft.predict import run_predict

    if args.images is None and args.data_dir is None and args.hf_dataset is None:
        args.data_dir = DEFAULT_DATA_DIR
    if args.max_inf_frames < 0 or args.num_buckets < 0:
        raise UserError(f"--max-inf-frames and --num-buckets must be 0 or more (got {args.max_inf_frames}, "
                        f"{args.num_buckets})")
    if args.num_buckets:
        print("note: --num-buckets has no effect on inference (there are no targets to pad)")
    summary = run_predict(args.ckpt_path, out, images=args.images, data_dir=args.data_dir, split=args.split,
                          threshold=args.threshold, max_inf_frames=args.max_inf_frames,
                          batch_size=args.batch_size, device=args.device, pad=args.pad, hf_dataset=args.hf_dataset,
                          cuda_graphs=args.cuda_graphs, channels_last=args.channels_last, autocast=args.autocast,
                          on_bad_data=args.on_bad_data, image_size=args.image_size, thresholds_file=args.thresholds)
    print_summary("predict", out, {k: summary[k] for k in ("images", "detections", "annotated",
                                                           "detections_json")})
    return 0


def print_summary(command: str, out: Path, items: dict) -> None:
    print(f"\ndetr-ft {command}: outputs in {out}")
    for k, v in items.items():
        if v is not None:
            print(f"  {k}: {v}")
