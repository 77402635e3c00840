"""AdamW's step on a preset's parameters: torch's per-tensor loop (its default on a CPU), the
foreach kernels and the fused kernel that `detr-ft train` uses in single-process float32 training
(README, "Static shapes", the list of speed-ups; `devices.fused_optimizer`).

    PYTHONPATH=src python benchmarks/optimizer_step.py                        # dfine-tiny, CPU
    PYTHONPATH=src python benchmarks/optimizer_step.py --model rtdetr-tiny --device cuda

The three optimizers step the same parameters with the same gradients, one step of each in turn
(the order rotating); a figure is the fastest step, the median beside it. Prints one JSON object
with the ratios against the per-tensor loop.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from detr_ft.bench.measure import alternate, best
from detr_ft.devices import machine_facts
from detr_ft.model.build import build_model

KERNELS = {"per_tensor": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="dfine-tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=30)
    args = p.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(args.model, {0: "a", 1: "b", 2: "c"}).model.to(device)
    trained = [q for q in model.parameters() if q.requires_grad]
    sides = {}
    for name, kwargs in KERNELS.items():  # each optimizer on its own copy of the parameters
        params = [torch.nn.Parameter(q.detach().clone()) for q in trained]
        for q in params:
            q.grad = torch.randn_like(q)
        optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4, **kwargs)
        sides[name] = optimizer.step
    times = alternate(sides, args.steps, warmup=3, device=device)
    fastest = {name: best(t) for name, t in times.items()}
    print(json.dumps({
        "model": args.model, "parameters": sum(q.numel() for q in trained), "tensors": len(trained),
        "best_ms": {n: round(t * 1e3, 2) for n, t in fastest.items()},
        "median_ms": {n: round(statistics.median(t) * 1e3, 2) for n, t in times.items()},
        "speedup_vs_per_tensor": {n: round(fastest["per_tensor"] / t, 2) for n, t in fastest.items()},
        "machine": machine_facts(),
    }, indent=1))


if __name__ == "__main__":
    main()
