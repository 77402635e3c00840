"""How the bench measures: device synchronisation, precision, alternating timing, peak memory."""

from __future__ import annotations

import contextlib
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from detr_ft.devices import bf16_autocast


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so a clock reading means finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def autocast(device: torch.device, precision: str):
    """bf16 mixed precision (as ``--autocast`` / Lightning's bf16-mixed), or nothing for fp32."""
    return bf16_autocast(device, precision == "bf16")


def latency_compile_mode(device: torch.device) -> str | None:
    """torch.compile mode of the batch-1 latency path: CUDA graphs where there are any."""
    return "reduce-overhead" if device.type == "cuda" else None


def timed(fn: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def alternate(sides: dict[str, Callable[[], object]], steps: int, warmup: int,
              device: torch.device) -> dict[str, list[float]]:
    """Run each side ``warmup`` times untimed, then ``steps`` timed times, one step of
    each in turn with the order rotating every round. Returns seconds per step."""
    names = list(sides)
    for _ in range(warmup):
        for name in names:
            sides[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(steps):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(timed(sides[name], device))
    return times


def best(values: list[float]) -> float:
    """The fastest time: load from other processes only ever adds to a step's time."""
    return min(values)


def medians(times: dict[str, list[float]], scale: float = 1.0, unit: str = "s") -> str:
    return ", ".join(f"{k} {statistics.median(v) * scale:.4g} {unit}" for k, v in times.items())


def peak_rss_mib() -> float:
    """This process's peak resident set size, in MiB.

    Linux: ``VmHWM`` of /proc/self/status, the peak of this process's own memory
    map. (``getrusage``'s ``ru_maxrss`` is no use in a spawned child there: Linux
    carries the parent's peak across fork and exec.) Elsewhere ``ru_maxrss`` (bytes on macOS).
    """
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def quiet_progress_bars() -> None:
    """No per-file 'Loading weights' bars from transformers between the table's lines."""
    with contextlib.suppress(ImportError, AttributeError):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
