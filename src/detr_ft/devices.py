"""Accelerators: what ``--device`` turns into for Lightning and for inference.

- CPU / CUDA / MPS: Lightning's own accelerators. On CUDA, TF32 matmuls and
  convolutions are enabled (Ampere and newer), batches are pinned and copied
  without blocking.
- Gaudi (HPU): lightning-habana's ``HPUAccelerator`` with its single-device or
  DDP strategy and precision plugin (extra ``[hpu]``). Lazy or eager mode is
  what ``PT_HPU_LAZY_MODE`` says, read by the Habana stack itself; in lazy mode
  inference runs through HPU graphs. detr-ft's own criterion ignores padded
  objects, so no optimum-habana patch is needed.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from detr_ft.errors import UserError


@dataclass
class TrainerDevice:
    """The Trainer arguments that depend on the device."""

    accelerator: Any
    strategy: Any
    plugins: list = field(default_factory=list)
    precision: str | None = None


def mps_available() -> bool:
    return hasattr(torch.backends, "mps") and torch.backends.mps.is_available()


def hpu_lazy_mode() -> bool:
    """Gaudi lazy mode (graph accumulation) unless PT_HPU_LAZY_MODE=0."""
    return os.environ.get("PT_HPU_LAZY_MODE", "1") != "0"


def require(device: str) -> None:
    """A UserError when ``--device`` names CUDA or MPS and there is none here."""
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is visible; use --device cpu or auto")
    if device == "mps" and not mps_available():
        raise UserError("--device mps: Apple MPS is not available here; use --device cpu or auto")


def device_type(device: str) -> str:
    """The device type ``--device`` names; for ``auto``: CUDA, then MPS, then the CPU (as Lightning picks)."""
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"


def inference_device(device: str = "auto") -> torch.device:
    """The torch device for ``--device`` outside Lightning (eval, predict, the ``Detector``
    API): ``auto`` takes CUDA, then MPS, then the CPU; a UserError where unavailable."""
    if device == "auto":
        return torch.device(device_type(device))
    require(device)
    if device == "hpu":
        try:
            import habana_frameworks.torch.core  # noqa: F401  (registers the hpu device)
        except ImportError:
            raise UserError("--device hpu needs the Gaudi software stack and lightning-habana "
                            "(pip install 'detr-ft[hpu]')") from None
    return torch.device(device)


def slow_bf16_note(device: str | torch.device) -> str | None:
    """A note for ``--autocast`` on a CPU without bf16 instructions (AVX-512 BF16 or AMX): oneDNN
    then emulates bf16, slower than float32 (benchmarks/README.md). None elsewhere, or where
    torch cannot tell."""
    if torch.device(device).type != "cpu":
        return None
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if not all(callable(probe) for probe in probes) or any(probe() for probe in probes):
        return None
    return ("note: --autocast on this CPU (no AVX-512 BF16 or AMX instructions) runs bf16 emulated, "
            "slower than float32; drop --autocast for speed")


def say_if_slow_bf16(device: str | torch.device, autocast: bool) -> None:
    """Print ``slow_bf16_note`` for an ``--autocast`` run where it applies (train, eval, predict)."""
    if autocast and (note := slow_bf16_note(device)):
        print(note)


def bf16_autocast(device: str | torch.device, enabled: bool):
    """bf16 autocast on ``device`` when ``enabled``, else a no-op context. Not
    ``autocast(enabled=False)``: that would switch a caller's own autocast off."""
    if enabled:
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def cpu_threads(threads: int | None):
    """Torch's intra-op thread count set to ``threads`` inside the block (None: unchanged), and the
    count before restored after it."""
    before = torch.get_num_threads()
    if not threads or threads == before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def one_cpu_thread(enabled: bool = True):
    """Run the CPU ops inside on one intra-op thread when ``enabled`` (the thread count is
    restored after). For small memory-bound work while loader workers keep the cores busy:
    a multi-threaded op then waits at OpenMP barriers for threads a worker has descheduled."""
    return cpu_threads(1 if enabled else None)


@contextlib.contextmanager
def run_settings(device: str):
    """Torch's process-wide settings for a training run on ``device`` (TF32 matmuls and convolutions
    on CUDA), and, after the block, every setting as it was before (Lightning's ``deterministic`` too):
    a caller in the same process (tests, notebooks, the demo) gets its own back."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        if device_type(device) == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
         torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) = saved[2:]


def fused_optimizer(device: str, autocast: bool, processes: int) -> bool:
    """Whether training on ``device`` runs AdamW as torch's fused kernel, one pass over all the
    parameters (``dfine-tiny``'s optimizer step 3.6x faster than the per-tensor loop on 2 CPU
    cores, ``benchmarks/optimizer_step.py``): on a CPU or CUDA device, in float32, in one process.
    Not under ``--autocast``: Lightning's gradient clipping refuses an optimizer that unscales its
    own gradients, as the fused one does. Not under DDP: on 2 CPU processes (torch 2.13) the fused
    kernel stepped a few weights of a channels-last convolution with gradients they did not have
    (``tests/test_ddp.py``)."""
    return device_type(device) in ("cpu", "cuda") and not autocast and processes == 1


def trainer_device(device: str, devices: int, num_nodes: int, strategy: str, autocast: bool) -> TrainerDevice:
    """Accelerator, strategy, plugins and precision for ``--device``; a UserError where unavailable."""
    precision = "bf16-mixed" if autocast else "32-true"
    require(device)
    if device == "cuda" and devices > torch.cuda.device_count():
        raise UserError(f"--devices {devices}: only {torch.cuda.device_count()} CUDA device(s) visible")
    if device != "hpu":
        return TrainerDevice(device, ddp_tolerating_unused(strategy, devices, num_nodes), precision=precision)
    try:
        from lightning_habana.pytorch.accelerator import HPUAccelerator
        from lightning_habana.pytorch.plugins import HPUPrecisionPlugin
        from lightning_habana.pytorch.strategies import HPUDDPStrategy, SingleHPUStrategy
    except ImportError:
        raise UserError("--device hpu needs lightning-habana: pip install 'detr-ft[hpu]' "
                        "(inside a Gaudi software container)") from None
    if strategy == "auto":
        strategy = HPUDDPStrategy() if devices * num_nodes > 1 else SingleHPUStrategy()
    return TrainerDevice(HPUAccelerator(), strategy, plugins=[HPUPrecisionPlugin(precision=precision)])


DDP_STRATEGIES = ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook")


def ddp_tolerating_unused(strategy, devices: int, num_nodes: int):
    """Lightning's name of ``strategy`` with DDP's ``find_unused_parameters`` on, where it runs several
    processes ("auto" too, as Lightning would pick: ``ddp``, ``ddp_fork`` in an interactive session).

    Some families leave parameters out of a step's loss: Conditional DETR's tiny ResNet runs stages past
    the one it reads, RF-DETR's DINOv2 keeps a mask token detection never uses, the RT-DETR line's
    denoising embedding sits out a batch without objects. Plain DDP stops on them at the next step
    ("parameters that were not used in producing loss"). Other strategies (and objects) as given."""
    if not isinstance(strategy, str) or not (devices > 1 or num_nodes > 1):
        return strategy
    if strategy == "auto":  # Lightning forks in an interactive session (a notebook, python -i)
        interactive = hasattr(sys, "ps1") or bool(sys.flags.interactive)
        strategy = "ddp_fork" if interactive and num_nodes == 1 else "ddp"
    return f"{strategy}_find_unused_parameters_true" if strategy in DDP_STRATEGIES else strategy


def accelerate_inference(model: torch.nn.Module, device: torch.device, cuda_graphs: bool = False) -> torch.nn.Module:
    """Graph-capture the model for static-shape inference where the device supports it.

    HPU in lazy mode: wrap in HPU graphs. CUDA with ``cuda_graphs``: torch.compile in
    "reduce-overhead" mode, which replays CUDA graphs (inputs must keep one shape:
    use a fixed canvas and batch size)."""
    if device.type == "hpu" and hpu_lazy_mode():
        import habana_frameworks.torch as ht

        return ht.hpu.wrap_in_hpu_graph(model)
    if cuda_graphs:
        if device.type != "cuda":
            raise UserError("--cuda-graphs needs a CUDA device (--device cuda)")
        model.model.compile(mode="reduce-overhead", dynamic=False)
    return model


def machine_facts() -> dict:
    """Where a figure comes from: processor, cores, torch threads, load average, versions, date (and GPU)."""
    import transformers

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo", encoding="utf-8", errors="replace"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
