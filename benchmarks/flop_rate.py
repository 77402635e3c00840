"""How close detr-ft's inference forward runs to what the machine can do: the network's FLOPs
(torch's FLOP counter), its time per forward and the rate of each kind of op (torch.profiler),
beside a large fp32 matrix product on the same threads, about the best the processor does.

    PYTHONPATH=src python benchmarks/flop_rate.py                      # DETR-R50 arch, batch 2, 512x683, CPU
    PYTHONPATH=src python benchmarks/flop_rate.py --model detr-tiny --batch-size 16 --size 320 427

The model is prepared as ``Detector`` prepares it (batch norms folded, channels-last where
it helps). Prints one JSON object. Where the forward's rate is near the matrix product's,
inference can only get faster with fewer or cheaper FLOPs (bf16: ``predict --autocast``).
"""

from __future__ import annotations

import argparse
import json

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from detr_ft.bench.measure import alternate, best, timed
from detr_ft.bench.models import bench_model
from detr_ft.devices import machine_facts
from detr_ft.model.outputs import detection_outputs
from detr_ft.model.speed import channels_last_where_it_helps, fold_batch_norms


def fastest(fn, repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` timed calls after one untimed (bench's own timing)."""
    return best(alternate({"fn": fn}, repeats, 1, torch.device("cpu"))["fn"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="detr-r50")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--size", type=int, nargs=2, default=(512, 683), metavar=("H", "W"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--matmul", type=int, default=4096, help="side of the square fp32 matrix product")
    args = parser.parse_args()

    model, _, _ = bench_model(args.model, {i: f"class{i}" for i in range(5)}, seed=0)
    model.eval()
    fold_batch_norms(model)
    channels_last_where_it_helps(model, torch.device("cpu"), True)
    pixels = torch.randn(args.batch_size, 3, *args.size).contiguous(memory_format=torch.channels_last)
    mask = torch.ones(args.batch_size, *args.size, dtype=torch.bool)

    @torch.inference_mode()
    def forward():
        return detection_outputs(model, pixels, mask, with_aux=False)

    with FlopCounterMode(display=False) as counter:
        forward()
    flops = {str(op).removeprefix("aten."): n for op, n in counter.get_flop_counts()["Global"].items()}
    seconds = fastest(forward, args.repeats)
    with profile(activities=[ProfilerActivity.CPU]) as prof:  # time per op kind, per forward
        profiled = timed(lambda: [forward() for _ in range(args.repeats)], torch.device("cpu")) / args.repeats
    # each counted op's time with what it calls (aten::convolution runs oneDNN's kernel under it)
    op_seconds = {e.key.removeprefix("aten::"): e.cpu_time_total / 1e6 / args.repeats for e in prof.key_averages()}

    n = args.matmul
    a, b = torch.randn(n, n), torch.randn(n, n)
    matmul_rate = 2 * n**3 / fastest(lambda: a @ b, args.repeats) / 1e9
    total = sum(flops.values())
    report = {
        "model": args.model, "batch_size": args.batch_size, "size": list(args.size),
        "gflop_per_forward": round(total / 1e9, 2),
        "forward_s": round(seconds, 4),
        "gflops": round(total / seconds / 1e9, 1),
        "by_op": {op: {"gflop": round(n / 1e9, 2), "share_of_time": round(op_seconds.get(op, 0.0) / profiled, 3),
                       "gflops": round(n / op_seconds[op] / 1e9, 1) if op_seconds.get(op) else None}
                  for op, n in flops.items()},
        "matmul": {"size": n, "gflops": round(matmul_rate, 1)},
        "machine": machine_facts(),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
