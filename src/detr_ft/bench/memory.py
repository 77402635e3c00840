"""Peak resident memory of one side of ``train`` or ``infer``, alone in a fresh spawned process."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from detr_ft.bench.config import THRESHOLD, BenchConfig, Record
from detr_ft.bench.measure import autocast, peak_rss_mib, quiet_progress_bars
from detr_ft.bench.models import Sides
from detr_ft.bench.stock import pipeline_batch_size, stock_labels, stock_pipeline
from detr_ft.bench.workspace import Workspace


def _rss_child(task: str, side: str, cfg: BenchConfig, root: str, export_dir: str | None, conn) -> None:
    """In a spawned process: one side of ``task`` alone, then report its peak RSS."""
    try:
        from detr_ft.log_policy import configure_logging

        configure_logging(False)
        quiet_progress_bars()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        device = torch.device(cfg.device)
        ws = Workspace(cfg, Path(root))
        if task == "train":
            sides = Sides(cfg, ws.categories, ws.resize, device, only=side)
            batch = ws.train_batch().to_device_normalised(device)
            opt = sides.reset()
            labels = stock_labels(batch.targets(), device)
            for _ in range(cfg.warmup + 2):
                if side == "ours":
                    sides.our_step(opt["ours"], batch)
                else:
                    sides.stock_step(opt["stock"], batch.pixel_values, batch.pixel_mask, labels)
        else:
            paths = [str(ws.index.image_path(r)) for r in ws.index.records[: cfg.infer_images]]
            with autocast(device, cfg.precision):
                if side == "ours":
                    from detr_ft.detector import Detector

                    detector = Detector.load(export_dir, device=str(device), channels_last=cfg.channels_last)
                    detector.predict(paths, THRESHOLD, cfg.batch_size)
                else:
                    pipe = stock_pipeline(Path(export_dir), device)
                    pipe(paths, threshold=THRESHOLD, batch_size=pipeline_batch_size(pipe, paths, cfg.batch_size))
        conn.send(("ok", peak_rss_mib()))
    except BaseException as e:  # reported to the parent, which raises
        conn.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        conn.close()


def peak_rss(task: str, side: str, cfg: BenchConfig, root: Path, export_dir: Path | None,
             timeout: float = 900.0) -> float:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    # the child reads the same dataset; in a given-data run, cfg.data_dir already says where
    child = ctx.Process(target=_rss_child, args=(task, side, cfg, str(root),
                                                  str(export_dir) if export_dir else None, send))
    child.start()
    send.close()
    try:
        if not receive.poll(timeout):
            raise RuntimeError(f"bench: the {task} peak-RSS run of {side} did not finish in {timeout:.0f} s")
        status, value = receive.recv()
    finally:
        child.join(timeout=60)
        if child.is_alive():
            child.kill()
    if status != "ok":
        raise RuntimeError(f"bench: the {task} peak-RSS run of {side} failed: {value}")
    return value


def bench_memory(task: str, ws: Workspace, cfg: BenchConfig, device, export_dir: Path | None) -> Record:
    child_cfg = replace(cfg, device=device.type, data_dir=cfg.data_dir)
    ours = peak_rss(task, "ours", child_cfg, ws.root, export_dir)
    stock = peak_rss(task, "stock", child_cfg, ws.root, export_dir)
    return Record(f"{task}_peak_rss", cfg.label(device), ours, stock, "MiB")
