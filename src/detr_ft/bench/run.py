"""Running the benchmarks asked for, and reporting them (table, JSON, the machine)."""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import torch

from detr_ft.bench.benchmarks import (bench_data, bench_infer, bench_startup, bench_static,
                                      bench_train)
from detr_ft.bench.config import BenchConfig, Record
from detr_ft.bench.measure import quiet_progress_bars
from detr_ft.bench.memory import bench_memory
from detr_ft.bench.models import Sides
from detr_ft.bench.workspace import Workspace, make_export
from detr_ft.errors import UserError


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = print) -> tuple[list[Record], list[str], dict]:
    """Run the benchmarks ``cfg.what``; returns (records, notes, environment: the machine
    before and after, and every timed step's seconds)."""
    from importlib.util import find_spec

    from detr_ft.devices import cpu_threads, inference_device

    if find_spec("pycocotools") is None:  # the stock path reads COCO files as the original did
        raise UserError("detr-ft bench runs the stock pipeline, which needs pycocotools: "
                        "pip install 'detr-ft[bench]'")
    cfg = cfg.resolved()
    device = inference_device(cfg.device)
    quiet_progress_bars()
    with cpu_threads(cfg.threads):  # the caller's thread count back after
        return _run_benchmarks(cfg, device, log)


def _run_benchmarks(cfg: BenchConfig, device: torch.device, log: Callable[[str], None]):
    """``run_bench``'s work, on the resolved ``cfg``'s ``device``."""
    from detr_ft.devices import machine_facts
    from detr_ft.model.speed import channels_last_helps

    if cfg.compile and device.type == "cpu":
        log("note: --compile on a CPU compiles with inductor's C++ back end; the first steps take minutes")
    env = {"before": machine_facts()}
    records: list[Record] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="detr-ft-bench-") as tmp:
        started = time.perf_counter()
        ws = Workspace(cfg, Path(tmp))
        log(f"bench: dataset ready in {time.perf_counter() - started:.0f} s")
        notes.append(f"data: {ws.source}; resize short {ws.resize.shortest} / long {ws.resize.longest}; "
                     f"stock preprocessing {type(ws.processor).__name__}")
        layout = "channels-last" if cfg.channels_last and channels_last_helps(device) else "contiguous (NCHW)"
        notes.append(f"layout: detr-ft's models (and the bare network) {layout}, frozen batch norms (if any) "
                     f"applied by their convolutions; the stock side NCHW as it is")
        if cfg.data_dir is None:  # the memory children reuse the dataset written here
            cfg = replace(cfg, data_dir=str(ws.data_dir))
        steps = [w for w in ("startup", "data", "train", "static", "infer", "infer-onnx") if w in cfg.what]
        sides = None
        for what in steps:
            t0, done = time.perf_counter(), len(records)
            if what == "startup":
                records += bench_startup(ws, cfg, device, notes)
            elif what == "data":
                records += bench_data(ws, cfg, device, notes)
            elif what in ("train", "static"):
                if sides is None:
                    sides = Sides(cfg, ws.categories, ws.resize, device)
                    notes.append(sides.note)
                if what == "train":
                    records += bench_train(ws, sides, cfg, device, notes)
                    if cfg.memory:
                        records.append(bench_memory("train", ws, cfg, device, None))
                else:
                    records += bench_static(ws, sides, cfg, device, notes)
            elif what == "infer-onnx":
                from detr_ft.bench.onnx_bench import bench_infer_onnx
                from detr_ft.onnx_export import NotExportable

                make_export(ws, cfg)  # writes the checkpoint (ws.root / "bench.ckpt") it exports from
                try:
                    records += bench_infer_onnx(ws, cfg, device, ws.root / "bench.ckpt", notes)
                except NotExportable as e:  # a family ONNX does not run: said in the notes (no onnx extra: an error)
                    notes.append(f"infer-onnx: no record for {ws.family.model_type}: {e}")
            else:
                export_dir = make_export(ws, cfg)
                records += bench_infer(ws, cfg, device, export_dir, notes)
                if cfg.memory:
                    records.append(bench_memory("infer", ws, cfg, device, export_dir))
            log(f"bench: {what} done in {time.perf_counter() - t0:.0f} s")
            for r in records[done:]:  # as they come, so a run cut short still leaves its figures
                log(f"bench:   {json.dumps(asdict(r))}")
        if cfg.memory:
            notes.append("peak RSS: each side alone in a fresh spawned process (its VmHWM: interpreter, "
                         "libraries, model, data and the run itself)")
        notes.append(f"wall time {time.perf_counter() - started:.0f} s")
        env["samples_seconds"] = ws.samples
    env["after"] = machine_facts()
    return records, notes, env


def format_table(records: list[Record]) -> str:
    def num(x: float) -> str:
        return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"

    rows = [("benchmark", "config", "ours", "baseline", "unit", "speedup")]
    rows += [(r.benchmark, r.config, num(r.ours), num(r.baseline), r.unit, f"{r.speedup:.2f}x") for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    lines = ["  ".join(c.ljust(w) if i < 2 or i == 4 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def check_records(records: list[dict]) -> None:
    """Raise ValueError unless every record has the schema and positive, finite numbers."""
    keys = {"benchmark", "config", "ours", "baseline", "unit", "speedup"}
    for r in records:
        if set(r) != keys:
            raise ValueError(f"bench record has keys {sorted(r)}, expected {sorted(keys)}")
        for k in ("ours", "baseline", "speedup"):
            if not (isinstance(r[k], float) and math.isfinite(r[k]) and r[k] > 0):
                raise ValueError(f"bench record {r['benchmark']}: {k} = {r[k]!r} is not a positive finite number")


def run_bench_command(cfg: BenchConfig, out_dir: Path, json_path: str | None) -> int:
    """``detr-ft bench``: the table on stdout, ``bench.json`` in the output dir (and at --json)."""
    records, notes, env = run_bench(cfg)
    rows = [asdict(r) for r in records]
    check_records(rows)
    before, after = env["before"], env["after"]
    print(f"\nmachine: {before['cpu']}, {before['cores']} cores, torch {before['torch']} "
          f"({before['torch_threads']} threads), transformers {before['transformers']}"
          + (f", {before['gpu']}" if "gpu" in before else ""))
    print(f"date: {before['date']}; load average before {before['load_average']}, after {after['load_average']}")
    print(format_table(records))
    print("\nnotes:")
    for note in notes:
        print(f"  - {note}")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out_dir / "machine.json").write_text(json.dumps({**env, "notes": notes}, indent=1) + "\n")
    if json_path:
        path = Path(json_path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"\nrecords: {out_dir / 'bench.json'}" + (f" and {json_path}" if json_path else ""))
    return 0
