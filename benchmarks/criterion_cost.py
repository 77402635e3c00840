"""What detr-ft's set criterion costs per training step, outside the network: the aten ops
it dispatches (on a GPU, roughly one kernel launch each) and its time, forward + backward,
matching included, at the shapes of `benchmarks/gpu.sh`'s DETR-R50 step.

    PYTHONPATH=src python benchmarks/criterion_cost.py                 # CPU
    PYTHONPATH=src python benchmarks/criterion_cost.py --device cuda   # the time a GPU waits for it

Prints one JSON object. On a GPU the loss's small kernels are bound by how fast the host
launches them, and the device idles meanwhile (matching needs the cost matrix on the host
first), so the op count is what the criterion's share of a step scales with.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from detr_ft.bench.measure import timed
from detr_ft.devices import machine_facts
from detr_ft.model.criterion import SetCriterion
from detr_ft.model.matcher import HungarianMatcher


class CountOps(TorchDispatchMode):
    """Counts the aten ops dispatched inside the ``with`` block."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--layers", type=int, default=6, help="decoder layers (final + auxiliary)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--slots", type=int, default=8, help="padded object slots per image")
    ap.add_argument("--rounds", type=int, default=200)
    args = ap.parse_args()
    device = torch.device(args.device)
    L, B, Q, C, T = args.layers, args.batch_size, args.queries, args.classes, args.slots
    criterion = SetCriterion(C, HungarianMatcher(1.0, 5.0, 2.0), 0.1).to(device)
    gen = torch.Generator().manual_seed(0)

    def inputs():
        logits = torch.randn(L, B, Q, C + 1, generator=gen).to(device).requires_grad_()
        boxes = (0.25 + 0.5 * torch.rand(L, B, Q, 4, generator=gen)).to(device).requires_grad_()
        labels = torch.randint(0, C, (B, T), generator=gen).to(device)
        target_boxes = (0.25 + 0.5 * torch.rand(B, T, 4, generator=gen)).to(device)
        valid = (torch.arange(T)[None] < torch.randint(1, T + 1, (B, 1), generator=gen)).to(device)
        return logits, boxes, labels, target_boxes, valid

    def step(logits, boxes, labels, target_boxes, valid):
        aux = [(logits[i], boxes[i]) for i in range(L - 1)]
        criterion(logits[-1], boxes[-1], labels, target_boxes, valid, aux)["loss"].backward()

    x = inputs()
    with CountOps() as ops:
        step(*x)
    times = []
    for _ in range(args.rounds):  # fresh inputs each round, made outside the timing
        x = inputs()
        times.append(timed(lambda: step(*x), device))
    print(json.dumps({
        "machine": machine_facts(), "device": str(device), "shapes": {"layers": L, "batch": B, "queries": Q,
                                                                      "classes": C, "slots": T},
        "aten_ops": ops.count, "median_ms": round(statistics.median(times) * 1e3, 3),
        "fastest_ms": round(min(times) * 1e3, 3),
    }, indent=1))


if __name__ == "__main__":
    main()
