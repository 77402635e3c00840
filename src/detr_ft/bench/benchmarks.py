"""The benchmarks, one function each: detr-ft and its baseline side by side, one ``Record`` per figure."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from detr_ft.bench.config import THRESHOLD, BenchConfig, Record
from detr_ft.bench.measure import alternate, autocast, best, latency_compile_mode, medians
from detr_ft.bench.models import Sides
from detr_ft.bench.stock import pipeline_batch_size, stock_labels, stock_pipeline, stock_startup
from detr_ft.bench.workspace import Workspace


def forever(loader):
    while True:
        yield from loader


def bench_train(ws: Workspace, sides: Sides, cfg: BenchConfig, device, notes: list[str]) -> list[Record]:
    batch = ws.train_batch().to_device_normalised(device)
    labels = stock_labels(batch.targets(), device)
    opt = sides.reset()
    times = alternate({
        "ours": lambda: sides.our_step(opt["ours"], batch),
        "stock": lambda: sides.stock_step(opt["stock"], batch.pixel_values, batch.pixel_mask, labels),
        "bare": lambda: sides.bare_step(opt["bare"], batch.pixel_values, batch.pixel_mask),
    }, cfg.steps, cfg.warmup, device)
    ws.samples["train"] = times
    ours, stock, bare = (best(times[k]) for k in ("ours", "stock", "bare"))
    label = cfg.label(device)
    notes.append(f"train: one fixed batch, {int(batch.valid.sum())} objects; step times, fastest: bare network "
                 f"{bare * 1e3:.1f} ms, ours {ours * 1e3:.1f} ms, stock {stock * 1e3:.1f} ms; medians: "
                 f"{medians(times, 1e3, 'ms')}")
    b = len(batch)
    return [Record("train", label, b / ours, b / stock, "images/s"),
            Record("overhead", label, ours / bare, stock / bare, "x bare")]


def bench_static(ws: Workspace, sides: Sides, cfg: BenchConfig, device, notes: list[str]) -> list[Record]:
    ours_data = ws.our_data(0, drop_last=True)
    ours_loader = ours_data.train_dataloader()
    ours_it = forever(ours_loader)
    stock_it = forever(ws.stock_loader(0, drop_last=True))
    opt = sides.reset()

    # warm both canvases first (with --compile each is one compiled variant)
    for portrait in (False, True):
        group = [i for i, r in enumerate(ws.index.records) if (r.height > r.width) == portrait]
        if len(group) >= cfg.batch_size:
            samples = [ours_loader.dataset[i] for i in group[: cfg.batch_size]]
            sides.our_step(opt["ours"], ours_data.transfer_batch_to_device(ours_loader.collate_fn(samples), device))

    def ours():
        sides.our_step(opt["ours"], ours_data.transfer_batch_to_device(next(ours_it), device))

    def stock():
        b = next(stock_it)
        sides.stock_step(opt["stock"], b["pixel_values"].to(device), b["pixel_mask"].to(device),
                         stock_labels(b["labels"], device))

    times = alternate({"ours": ours, "stock": stock}, cfg.steps, cfg.warmup, device)
    ws.samples["static"] = times
    b = cfg.batch_size
    stock_bucket = ("" if ws.stock_buckets is not None else
                    f" (stock: none, a {ws.family.model_type} model has no no-object class to pad targets with)")
    notes.append(f"static: canvases ours {list(ws.plan.canvases)} by orientation, stock {[ws.square_canvas]}; "
                 f"object bucket {ws.buckets[0]}{stock_bucket}; data in the main process (workers 0) on both sides; "
                 f"medians: {medians(times, 1e3, 'ms')} per step")
    return [Record("static", cfg.label(device) + " workers=0", b / best(times["ours"]),
                   b / best(times["stock"]), "images/s")]


def bench_data(ws: Workspace, cfg: BenchConfig, device, notes: list[str]) -> list[Record]:
    """Epochs over the whole training set, shuffled, as training reads it; one warm-up epoch."""
    n = len(ws.index)
    records = []
    for workers in cfg.workers:
        ours = ws.our_data(workers, drop_last=False)
        loaders = {"ours": ours.train_dataloader(), "stock": ws.stock_loader(workers, drop_last=False)}
        # ours normalises where the batch arrives (on the device in training): counted here, on the CPU
        cpu = torch.device("cpu")
        times = alternate({"ours": lambda: sum(len(ours.transfer_batch_to_device(b, cpu)) for b in loaders["ours"]),
                           "stock": lambda: sum(len(b["pixel_values"]) for b in loaders["stock"])},
                          cfg.rounds, 1, cpu)
        loaders.clear()  # their worker processes end here
        ws.samples[f"data workers={workers}"] = times
        records.append(Record("data", f"{cfg.label(device)} workers={workers} {n} images",
                              n / best(times["ours"]), n / best(times["stock"]), "images/s"))
    notes.append(f"data: one epoch of all {n} training images per pass, to the same canvases as static; with "
                 f"workers, detr-ft's persist across epochs (as in detr-ft train), the original's loader starts "
                 f"new ones every epoch (as it does)")
    return records


def bench_startup(ws: Workspace, cfg: BenchConfig, device, notes: list[str]) -> list[Record]:
    from detr_ft.data.batching import compute_buckets
    from detr_ft.data.coco import load_index

    workers = min(15, os.cpu_count() or 1)  # the original's 15, capped at the machine's cores
    ws.warm_page_cache()
    found = {}

    def ours():
        found["ours"] = compute_buckets(load_index(ws.data_dir, "train").object_counts(), 1)

    def stock():
        found["stock"] = stock_startup(ws.images_dir, ws.ann_file, ws.processor, ws.label_of, workers).tolist()

    times = alternate({"ours": ours, "stock": stock}, cfg.rounds, 0, torch.device("cpu"))
    ws.samples["startup"] = times
    notes.append(f"startup: buckets ours {found['ours']}, stock {found['stock']}; the stock pass uses "
                 f"{workers} workers (the original's 15, capped at the cores); page cache warm")
    return [Record("startup", f"{len(ws.index)} images, long side up to {max(r.width for r in ws.index.records)} px",
                   best(times["ours"]), best(times["stock"]), "s")]


def bench_infer(ws: Workspace, cfg: BenchConfig, device, export_dir: Path, notes: list[str]) -> list[Record]:
    from detr_ft.detector import Detector

    detector = Detector.load(export_dir, device=str(device), channels_last=cfg.channels_last,
                             autocast=cfg.precision == "bf16")  # as predict --autocast runs
    pipe = stock_pipeline(export_dir, device)
    paths = [str(ws.index.image_path(r)) for r in ws.index.records[: cfg.infer_images]]
    amp = lambda: autocast(device, cfg.precision)  # noqa: E731
    found = {}
    stock_batch = pipeline_batch_size(pipe, paths, cfg.batch_size)

    def ours():
        found["ours"] = detector.predict(paths, threshold=THRESHOLD, batch_size=cfg.batch_size)

    def stock():
        with amp():
            found["stock"] = pipe(paths, threshold=THRESHOLD, batch_size=stock_batch)

    ours()  # warm-up; the stock side's was its batch-size probe
    stock()
    times = alternate({"ours": ours, "stock": stock}, cfg.rounds, 0, device)
    ws.samples["infer"] = times
    n = len(paths)
    fallback = "" if stock_batch == cfg.batch_size else (
        f" (its batch_size={cfg.batch_size} fails in this transformers, on images of different sizes or on "
        f"{ws.family.model_type}'s outputs, so it runs batch_size=1)")
    notes.append(f"infer: {n} image files, batch {cfg.batch_size}, threshold {THRESHOLD}; stock pipeline with "
                 f"{type(pipe.image_processor).__name__}{fallback}; detections ours "
                 f"{sum(map(len, found['ours']))}, stock {sum(map(len, found['stock']))}; medians: "
                 f"{medians(times)} per pass")
    records = [Record("infer", f"{cfg.label(device)} {n} images", n / best(times["ours"]),
                      n / best(times["stock"]), "images/s")]
    return records + bench_latency(ws, cfg, device, detector, pipe, notes)


def bench_latency(ws: Workspace, cfg: BenchConfig, device, detector, pipe, notes: list[str]) -> list[Record]:
    """Batch 1, the image already preprocessed on the device, on detr-ft's fixed landscape canvas."""
    record = next((r for r in ws.index.records if r.width >= r.height), ws.index.records[0])
    canvas = ws.plan.canvases[0] if record.width >= record.height else ws.plan.canvases[-1]  # fixed: one
    detector.use_canvas(canvas)
    batch = detector.batch_on_device([detector.sample(ws.index.load_image(record))])
    pv, pm, sizes = batch.pixel_values, batch.pixel_mask, batch.orig_sizes  # for the stock side
    mode = latency_compile_mode(device)
    if cfg.compile:
        detector.model.model.compile(mode=mode, dynamic=False)
    amp = lambda: autocast(device, cfg.precision)  # noqa: E731
    processor, stock_model = pipe.image_processor, pipe.model

    def ours():  # the detector's own autocast, if any
        return detector.detect_batch(batch, THRESHOLD)

    @torch.inference_mode()
    def stock():
        with amp():
            out = stock_model(pixel_values=pv, pixel_mask=pm)
        found = processor.post_process_object_detection(out, threshold=THRESHOLD, target_sizes=sizes)
        return [{k: v.cpu() for k, v in r.items()} for r in found]

    times = alternate({"ours": ours, "stock": stock}, max(cfg.steps, 10), max(cfg.warmup, 3), device)
    ws.samples["latency"] = times
    how = "eager" if not cfg.compile else f"torch.compile(mode={mode!r})" + (" = CUDA graphs" if mode else "")
    notes.append(f"latency: canvas {canvas}, ours {how}, stock eager; forward + post-processing to host tensors")
    return [Record("latency", f"{cfg.label(device)} b1 canvas {canvas[0]}x{canvas[1]}",
                   best(times["ours"]) * 1e3, best(times["stock"]) * 1e3, "ms")]
