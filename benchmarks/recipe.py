"""The training-recipe benchmark (issue 20): held-out mAP50 / mAP of recipes at equal wall time.

Generates the harder dataset (``hard_data.py``; cached in DIR/data), then for each recipe runs
``detr-ft train --max-minutes M`` exactly as a user would (same model, optimiser, seed, batch)
followed by ``detr-ft eval`` on the test split, and writes DIR/recipes.json and a Markdown table.

    PYTHONPATH=src python benchmarks/recipe.py --out DIR [--minutes 10] [--model rtdetr-tiny]
        [--recipes today,no-flip,multiscale,crop,photometric,size160,full]

Recipes are train flags added to the common ones (``RECIPES``); ``--extra`` adds flags to all.
Run it on an otherwise idle machine: the figures are wall-time bound.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from hard_data import generate  # noqa: E402

# What each recipe adds to today's defaults (--augment flip, the preset's resolution).
RECIPES = {
    "today": [],
    "no-flip": ["--hflip", "0"],
    "multiscale": ["--augment", "none", "--scales", "64", "96"],
    "crop": ["--augment", "none", "--crop", "0.5"],
    "photometric": ["--augment", "none", "--photometric", "0.8"],
    "zoom-out": ["--augment", "none", "--zoom-out", "0.3"],
    "size160": ["--hflip", "0", "--image-size", "160"],
    "full": ["--augment", "strong", "--hflip", "0", "--image-size", "160"],
}


def run(cmd: list[str], log: Path) -> float:
    """Run a detr-ft command, its output to ``log``; returns its wall seconds (raises on failure)."""
    start = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"}).returncode
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {rc}); see {log}")
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--minutes", type=float, default=10.0, help="training wall time per recipe")
    p.add_argument("--model", default="rtdetr-tiny")
    p.add_argument("--recipes", default=",".join(RECIPES))
    p.add_argument("--train", type=int, default=400)
    p.add_argument("--test", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--extra", default="--lr 3e-4 --lr-backbone 3e-4 --warmup-steps 20 --seed 0",
                   help="flags added to every recipe's train command")
    args = p.parse_args()
    out = Path(args.out)
    data = out / "data"
    if not (data / "annotations" / "test.json").exists():
        print("data:", json.dumps(generate(data, args.train, args.test)))
    detr_ft = [sys.executable, "-m", "detr_ft"]
    results = {}
    for name in args.recipes.split(","):
        run_dir = out / name
        train = [*detr_ft, "train", "--data-dir", str(data), "--model", args.model, "--max-epochs", "100000",
                 "--max-minutes", str(args.minutes), "--batch-size", str(args.batch_size), "--num-workers", "1",
                 "--max-inf-frames", "0", "--output-dir", str(run_dir), *args.extra.split(), *RECIPES[name]]
        seconds = run(train, out / f"{name}.train.log")
        run([*detr_ft, "eval", "--ckpt-path", str(run_dir / "last.ckpt"), "--data-dir", str(data),
             "--output-dir", str(run_dir / "eval")], out / f"{name}.eval.log")
        metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
        train_summary = json.loads((run_dir / "metrics.json").read_text())
        results[name] = {"flags": RECIPES[name], "map_50": metrics["map_50"], "map": metrics["map"],
                         "epochs": train_summary["epochs"], "steps": train_summary["steps"],
                         "train_seconds": round(seconds, 1), "load_average": os.getloadavg()[0]}
        print(f"{name}: mAP50 {metrics['map_50']:.3f} mAP {metrics['map']:.3f} ({train_summary['steps']} steps)")
    (out / "recipes.json").write_text(json.dumps({"minutes": args.minutes, "model": args.model,
                                                  "extra": args.extra, "results": results}, indent=1))
    rows = ["| recipe | flags | held-out mAP50 | mAP | steps |", "|---|---|---|---|---|"]
    rows += [f"| {n} | `{' '.join(r['flags']) or '(defaults)'}` | {r['map_50']:.3f} | {r['map']:.3f} | {r['steps']} |"
             for n, r in results.items()]
    (out / "recipes.md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
