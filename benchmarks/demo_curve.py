"""The demo's learning curve: held-out mAP50 against wall minutes (a benchmark, not a test).

Runs ``detr-ft demo`` exactly as a user does (its defaults: synthetic data,
the tiny preset, the time budget), records the validation mAP50 after each
epoch and the final evaluation, samples the machine's load average every few
seconds (other processes share the CPUs and slow the demo), and writes:

- ``OUT/curves.png``: mAP50 and mAP against wall minutes since the demo started;
- ``OUT/curve.json``: the points, the figure reached, the machine and the load seen.

    PYTHONPATH=src python benchmarks/demo_curve.py [--minutes 6] [--out DIR]

Prints the curve and the JSON path.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
from pathlib import Path


class LoadSampler(threading.Thread):
    """Samples the 1-minute load average every ``period`` seconds until stopped."""

    def __init__(self, period: float = 5.0):
        super().__init__(daemon=True)
        self.period = period
        self.samples: list[float] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.samples.append(os.getloadavg()[0])
            self.done.wait(self.period)

    def summary(self) -> dict:
        s = self.samples or [float("nan")]
        return {"mean": round(sum(s) / len(s), 2), "min": round(min(s), 2), "max": round(max(s), 2),
                "samples": len(self.samples)}


def plot(curve: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    minutes = [p["minutes"] for p in curve]
    ax.plot(minutes, [p["map_50"] for p in curve], "o-", label="mAP@.5")
    ax.plot(minutes, [p["map"] for p in curve], "s--", label="mAP@[.5:.95]")
    ax.axhline(0.7, color="grey", lw=0.8, ls=":", label="0.7")
    ax.set_xlabel("wall minutes since `detr-ft demo` started (data generation included)")
    ax.set_ylabel("held-out validation mAP")
    ax.set_ylim(0, 1)
    ax.set_xlim(0, max(minutes + [1]) * 1.05)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from detr_ft.config import DEMO_MINUTES

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=DEMO_MINUTES,
                   help=f"the demo's time budget (its default: {DEMO_MINUTES:g})")
    p.add_argument("--out", type=Path, default=None, help="where the demo and the curve go (default: a temp dir)")
    args = p.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="detr-ft-demo-curve-"))
    out.mkdir(parents=True, exist_ok=True)

    from detr_ft.log_policy import configure_logging
    from detr_ft.demo import run_demo

    configure_logging(debug=False)
    sampler = LoadSampler()
    sampler.start()
    try:
        result = run_demo(out / "demo", minutes=args.minutes)
    finally:
        sampler.done.set()
    load = sampler.summary()
    m = result["machine"]
    title = (f"detr-ft demo ({result['recipe']['model']}): mAP50 {result['map_50']:.2f} in {result['minutes']:.1f} min; "
             f"{m['cpus']} CPUs, {m['torch_threads']} threads, load avg {load['mean']:.1f} (min {load['min']:.1f})")
    plot(result["curve"], out / "curves.png", title)
    report = {"map_50": result["map_50"], "map": result["map"], "minutes": result["minutes"],
              "budget_minutes": args.minutes, "curve": result["curve"], "machine": m, "load_during_run": load,
              "steps": result["steps"], "images_per_second": result["images_per_second"],
              "recipe": result["recipe"], "demo_dir": str(out / "demo")}
    (out / "curve.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: report[k] for k in ("map_50", "map", "minutes", "load_during_run", "curve")}, indent=1))
    print(f"curve: {out / 'curves.png'}  points: {out / 'curve.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
