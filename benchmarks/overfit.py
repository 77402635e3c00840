"""Can each family's tiny preset learn a handful of images? Steps and seconds to train-set mAP50 >= 0.9.

For each preset (default: all of ``model/families.py``'s), detr-ft's own training (``train.fit``)
runs on a few synthetic images (``detr_ft.data.synthetic.generate``) whose test split is a copy of
the training split, so the validation after every epoch (``--images`` / ``--batch-size`` steps)
is the train-set mAP50; training stops at the first validation at or above ``--target``, or at
``--max-steps`` / ``--max-seconds`` (the seconds count the validations and checkpoints too). The final figure is ``detr-ft eval --split train``'s
(``evaluate.run_eval``) on the last checkpoint, at the validations' batch size (the same padded
batches: a DETR-family model's outputs depend a little on the padding around each image).

Recipe (no augmentation, no EMA: the aim is to fit the training set): AdamW at ``--lr`` for the
head and the backbone, a short warm-up, grad clip 1.0, no padding, fp32 on the CPU.

Prints a Markdown table (preset x steps, seconds, train mAP50, passed) and writes
``OUT/results.json`` (every figure, the recipe, the machine before and after, the load average
sampled during each preset's run: the seconds are wall time on a possibly shared machine).

    PYTHONPATH=src python benchmarks/overfit.py --out /tmp/overfit
    PYTHONPATH=src python benchmarks/overfit.py --out /tmp/overfit --presets rtdetr-tiny,lwdetr-tiny --max-seconds 120
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import time
import traceback
from pathlib import Path

import lightning as L
from demo_curve import LoadSampler


class StopAtTarget(L.Callback):
    """Stops training at the first validation whose mAP50 reaches ``target``; remembers when."""

    def __init__(self, target: float, started: float):
        self.target = target
        self.started = started
        self.reached: dict | None = None
        self.curve: list[tuple[int, float]] = []

    def on_validation_end(self, trainer, module) -> None:
        metrics = getattr(module, "last_val_metrics", None)
        if metrics is None or trainer.sanity_checking:
            return
        map50 = float(metrics["map_50"])
        self.curve.append((trainer.global_step, round(map50, 4)))
        if map50 >= self.target and self.reached is None:
            self.reached = {"step": trainer.global_step, "seconds": round(time.perf_counter() - self.started, 1),
                            "map_50": round(map50, 4)}
            trainer.should_stop = True


def make_data(root: Path, images: int, size: int, seed: int) -> Path:
    """``images`` synthetic training images; the test split is the same images (the train set's mAP)."""
    from detr_ft.data.synthetic import SyntheticSpec, generate

    generate(root, train=images, val=0, seed=seed,
             spec=SyntheticSpec(size=size, min_objects=1, max_objects=4, min_side_frac=0.2, max_side_frac=0.5))
    shutil.copy(root / "annotations" / "train.json", root / "annotations" / "test.json")
    return root


def overfit_one(preset: str, data: Path, out: Path, args) -> dict:
    """Train ``preset`` until the target, a step cap or a time cap; its figures."""
    from detr_ft.config import TrainConfig
    from detr_ft.evaluate import run_eval
    from detr_ft.train import fit

    cfg = TrainConfig(output_dir=str(out / "train"), data_dir=str(data), model=preset, max_epochs=100000,
                      max_steps=args.max_steps, max_minutes=args.max_seconds / 60, batch_size=args.batch_size,
                      num_workers=0, pad=False, num_buckets=0, lr=args.lr, lr_backbone=args.lr,
                      warmup_steps=args.warmup_steps, grad_clip=1.0, augment="none", ema=False,
                      max_inf_frames=0, bootstrap=0, seed=args.seed, device="cpu")
    started = time.perf_counter()
    stop = StopAtTarget(args.target, started)
    load = LoadSampler()
    load.start()
    try:
        with open(out / "log.txt", "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            trainer, _, _ = fit(cfg, extra_callbacks=(stop,))
            seconds = time.perf_counter() - started
            # the validations' batch size: the same padded batches, so the same figure as the last validation
            final = run_eval(str(out / "train" / "last.ckpt"), str(data), out / "eval", split="train",
                             batch_size=args.batch_size, device="cpu", bootstrap=0)
    finally:
        load.done.set()
    return {"preset": preset, "steps": trainer.global_step, "seconds": round(seconds, 1),
            "train_map_50": round(float(final["map_50"]), 4), "train_map": round(float(final["map"]), 4),
            "passed": float(final["map_50"]) >= args.target, "reached": stop.reached, "curve": stop.curve,
            "load_average": load.summary()}


def markdown(rows: list[dict]) -> str:
    lines = ["| preset | steps | seconds | train mAP50 | passed |", "|---|---:|---:|---:|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['preset']} | - | - | - | error: {r['error']} |")
        else:
            lines.append(f"| {r['preset']} | {r['steps']} | {r['seconds']:.0f} | {r['train_map_50']:.3f} | "
                         f"{'yes' if r['passed'] else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    from detr_ft.devices import machine_facts
    from detr_ft.log_policy import configure_logging
    from detr_ft.model.families import FAMILIES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--presets", default=",".join(f.preset for f in FAMILIES))
    parser.add_argument("--images", type=int, default=8, help="synthetic training images")
    parser.add_argument("--batch-size", type=int, default=4, help="a validation every images / batch-size steps")
    parser.add_argument("--size", type=int, default=128, help="long side of the synthetic images")
    parser.add_argument("--target", type=float, default=0.9, help="train-set mAP50 that passes")
    parser.add_argument("--max-steps", type=int, default=2000)
    parser.add_argument("--max-seconds", type=float, default=300.0, help="per preset (Lightning's max_time)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    configure_logging(False)
    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    data = make_data(out / "data", args.images, args.size, args.seed)
    before = machine_facts()
    rows = []
    for preset in [p.strip() for p in args.presets.split(",") if p.strip()]:
        (out / preset).mkdir(exist_ok=True)
        try:
            row = overfit_one(preset, data, out / preset, args)
        except Exception as e:  # one preset's failure is a row, the others still run
            (out / preset / "error.txt").write_text(traceback.format_exc())
            row = {"preset": preset, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
        rows.append(row)
        print(json.dumps(row), flush=True)
        results = {"rows": rows, "recipe": vars(args), "machine": {"before": before, "after": machine_facts()}}
        (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")  # after each preset
    print()
    print(markdown(rows))


if __name__ == "__main__":
    main()
