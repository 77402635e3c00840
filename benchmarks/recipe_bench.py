"""Training recipes at equal wall time on a dataset: held-out mAP50 and mAP for each.

For each named configuration (extra ``detr-ft train`` flags), runs as a user would, each
in its own process and one after the other:

    python -m detr_ft train --data-dir D --max-minutes M --output-dir OUT/NAME/train BASE... ARGS...
    python -m detr_ft eval  --ckpt-path OUT/NAME/train/{best,last}.ckpt --data-dir D --split test
    python -m detr_ft eval  ... --split train      (unless --no-train-metrics: under/overfitting)

``BASE`` is the demo's optimiser recipe on rtdetr-tiny as it was when the README's tables were
measured (the demo trains dfine-tiny at batch 16 and 2e-3 since; the tables keep this base;
``--config NAME="--model P"`` compares presets, as the README's family tables do): AdamW 1e-3 for backbone and head,
batch 8, warm-up 100 steps then a cosine that ends with the time budget, grad clip 1.0, no
padding; a configuration's flags come after it, so they win.
A configuration whose training exits with code 2 is reported as "flag not available"
(an unknown flag or choice: a recipe flag not on this branch yet) or "bad input", with
detr-ft's one-line reason, and the others still run.

Writes ``OUT/results.json`` (every figure, the commands, the machine: CPU, cores, torch
and transformers versions, UTC date, the load average sampled every 5 s during each run)
and prints a Markdown table.

    PYTHONPATH=src python benchmarks/hard_data.py --out /tmp/hard --train 1000 --test 300
    PYTHONPATH=src python benchmarks/recipe_bench.py --data-dir /tmp/hard --minutes 10 --out /tmp/recipes
    PYTHONPATH=src python benchmarks/recipe_bench.py --data-dir /tmp/hard --minutes 1 \\
        --config today="" --config no-flip="--hflip 0"
    PYTHONPATH=src python benchmarks/recipe_bench.py ... --configs my_recipes.yaml   # NAME: "ARGS"
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from demo_curve import LoadSampler

from detr_ft.errors import UserError

# detr-ft demo's earlier recipe (src/detr_ft/demo.py, demo_train_config, before batch 16 at 2e-3) as train flags
# on rtdetr-tiny: the base of every README table; --max-minutes comes from --minutes.
BASE_ARGS = ("--model rtdetr-tiny --max-epochs 1000 --batch-size 8 --num-workers 0 --no-pad --num-buckets 0 "
             "--lr 1e-3 --lr-backbone 1e-3 --lr-schedule cosine --warmup-steps 100 --grad-clip 1.0 "
             "--max-inf-frames 0 --seed 0")

# Issue 20's comparison (README, "Training recipe"): the recipe before it, each addition alone, the
# full recipe, every setting pinned (the defaults may change). Flags a branch lacks make their
# configuration report "flag not available".
DEFAULT_CONFIGS: dict[str, str] = {
    "today": "--augment flip --no-ema",
    "no-flip": "--augment none --no-ema",
    "image-size-160": "--augment flip --no-ema --image-size 160 256",
    "augment-detr": "--augment detr --no-ema",
    "augment-strong": "--augment strong --no-ema",
    "ema": "--augment flip --ema",
    "full": "--augment strong --ema",
}

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
UNKNOWN_FLAG = ("unrecognized arguments", "invalid choice", "no such option")
EVAL_MINUTES = 15  # limit for one evaluation, so a hung process cannot stall the whole benchmark


# --- configurations ------------------------------------------------------------------------


def _check_name(name: str, where: str) -> str:
    if not NAME.match(name):
        raise UserError(f"{where}: configuration name {name!r} must be letters, digits and _.+- "
                        "(it names a folder), e.g. augment-detr")
    return name


def _split_args(args, where: str) -> list[str]:
    if isinstance(args, list) and all(isinstance(a, (str, int, float)) for a in args):
        return [str(a) for a in args]
    if not isinstance(args, str):
        raise UserError(f"{where}: the arguments must be a string of train flags or a list of them, "
                        f"got {type(args).__name__}")
    try:
        return shlex.split(args)
    except ValueError as e:
        raise UserError(f"{where}: cannot split {args!r} into arguments ({e}); check the quotes") from None


def parse_config_option(text: str) -> tuple[str, list[str]]:
    """``NAME=ARGS`` (one ``--config``) -> (name, argument list)."""
    name, sep, args = text.partition("=")
    if not sep:
        raise UserError(f"--config {text!r}: expected NAME=\"TRAIN FLAGS\", e.g. --config ema=\"--ema\"")
    name = _check_name(name.strip(), f"--config {text!r}")
    return name, _split_args(args, f"--config {name}")


def read_config_file(path: Path) -> dict[str, list[str]]:
    """A JSON or YAML mapping ``NAME: "TRAIN FLAGS"`` (or a list of flags) -> {name: argument list}."""
    import yaml  # a YAML reader reads JSON too

    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise UserError(f"--configs {path}: cannot read it ({e.strerror or e}); check the path") from None
    except yaml.YAMLError as e:
        raise UserError(f"--configs {path}: not valid JSON or YAML ({getattr(e, 'problem', None) or e})") from None
    if not isinstance(data, dict) or not data:
        raise UserError(f"--configs {path}: expected a non-empty mapping of names to train flags, "
                        "e.g. {\"ema\": \"--ema\"}")
    return {_check_name(str(k), f"--configs {path}"): _split_args(v, f"--configs {path}: {k}")
            for k, v in data.items()}


def select_configs(options: list[str], files: list[Path], only: str | None) -> dict[str, list[str]]:
    """The configurations to run, in order: ``--configs`` files, then ``--config`` options; the
    default set when neither is given; then only those named in ``only`` (comma-separated)."""
    configs: dict[str, list[str]] = {}
    for path in files:
        configs.update(read_config_file(path))
    for text in options:
        name, args = parse_config_option(text)
        configs[name] = args
    if not configs:
        configs = {name: shlex.split(args) for name, args in DEFAULT_CONFIGS.items()}
    if only:
        wanted = [n.strip() for n in only.split(",") if n.strip()]
        missing = [n for n in wanted if n not in configs]
        if missing:
            raise UserError(f"--only: no configuration named {', '.join(missing)}; "
                            f"there are {', '.join(configs)}")
        configs = {n: configs[n] for n in wanted}
    return configs


# --- running ------------------------------------------------------------------------------------


def _detr_ft(*args: str) -> list[str]:
    return [sys.executable, "-m", "detr_ft", *args]


def _run(cmd: list[str], log: Path, timeout_s: float) -> tuple[int, str]:
    """Run ``cmd``, its output into ``log``; (exit code, the last line that says why when it failed)."""
    with open(log, "w") as out:
        try:
            rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            return 124, f"timed out after {timeout_s / 60:.0f} minutes"
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error:" in ln.lower()[:60]]  # "detr-ft train: error: ...", tracebacks
    why = (errors or lines or [""])[-1]
    return rc, why[:300]


def failure_status(rc: int, why: str) -> str:
    """What a failed training's exit code means for the table."""
    if rc == 2:
        return "flag not available" if any(s in why for s in UNKNOWN_FLAG) else "bad input"
    return "timed out" if rc == 124 else "failed"


def _metrics(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _evaluate(ckpt: Path, data_dir: Path, split: str, out: Path) -> dict:
    """map, map_50 of ``ckpt`` on ``split``, or {"error": why}."""
    cmd = _detr_ft("eval", "--ckpt-path", str(ckpt), "--data-dir", str(data_dir), "--split", split,
                   "--output-dir", str(out))
    rc, why = _run(cmd, out.with_suffix(".log"), EVAL_MINUTES * 60)
    metrics = _metrics(out / "metrics.json")
    if rc != 0 or "map_50" not in metrics:
        return {"error": f"eval --split {split} exited {rc}: {why}"}
    return {"map_50": round(float(metrics["map_50"]), 4), "map": round(float(metrics["map"]), 4)}


def run_config(name: str, args: list[str], data_dir: Path, minutes: float, out: Path,
               train_metrics: bool = True) -> dict:
    """Train one configuration for ``minutes``, evaluate it; a record for ``results.json``.

    ``status`` is "ok", "flag not available", "bad input", "failed" or "timed out".
    """
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    train_dir = folder / "train"
    cmd = _detr_ft("train", "--data-dir", str(data_dir), "--max-minutes", f"{minutes:g}",
                   "--output-dir", str(train_dir), *shlex.split(BASE_ARGS), *args)
    record: dict = {"name": name, "args": shlex.join(args), "train_command": shlex.join(cmd)}
    sampler = LoadSampler()
    sampler.start()
    started = time.perf_counter()
    try:
        # Training stops itself at the budget; the margin covers start-up, validation and saving.
        rc, why = _run(cmd, folder / "train.log", minutes * 90 + 600)
        record["train_wall_minutes"] = round((time.perf_counter() - started) / 60, 2)
        ckpt = next((p for p in (train_dir / "best.ckpt", train_dir / "last.ckpt") if p.exists()), None)
        if rc != 0 or ckpt is None:
            record.update(status=failure_status(rc, why) if rc else "failed",
                          reason=why if rc else "training wrote no best.ckpt or last.ckpt")
            return record
        summary = _metrics(train_dir / "metrics.json")
        record.update(status="ok", checkpoint=ckpt.name, steps=summary.get("steps"), epochs=summary.get("epochs"),
                      images_per_second=summary.get("images_per_second"),
                      test=_evaluate(ckpt, data_dir, "test", folder / "eval-test"))
        if train_metrics:
            record["train"] = _evaluate(ckpt, data_dir, "train", folder / "eval-train")
        return record
    finally:
        sampler.done.set()
        record["load_average"] = sampler.summary()


def machine() -> dict:
    """CPU, cores, torch threads, torch/transformers/python versions, load average now, UTC date."""
    from detr_ft.devices import machine_facts

    facts = machine_facts()
    facts["date_utc"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return facts


# --- report -----------------------------------------------------------------------------------


def _figure(part: dict | None, key: str) -> str:
    return f"{part[key]:.3f}" if part and key in part else "—"


def markdown(results: dict) -> str:
    """The results as a Markdown table, with the machine and the budget above it."""
    m = results["machine"]
    lines = [f"Recipes at equal wall time: {results['minutes']:g} min of training each on {results['data_dir']} "
             f"({m['cpu']}, {m['cores']} cores, torch {m['torch']}, transformers {m['transformers']}, "
             f"{m['date_utc']})", "",
             "| config | status | test mAP50 | test mAP | train mAP50 | train mAP | steps | train min | load avg "
             "| flags |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["configs"]:
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r.get('reason', '')}"
        load = r.get("load_average", {})
        lines.append(f"| {r['name']} | {status.replace('|', '/')} | {_figure(r.get('test'), 'map_50')} "
                     f"| {_figure(r.get('test'), 'map')} | {_figure(r.get('train'), 'map_50')} "
                     f"| {_figure(r.get('train'), 'map')} | {r.get('steps') or '—'} "
                     f"| {r.get('train_wall_minutes', '—')} | {load.get('mean', '—')} "
                     f"| `{r['args'] or '(base only)'}` |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, required=True, help="dataset (e.g. from benchmarks/hard_data.py)")
    p.add_argument("--minutes", type=float, default=10.0, help="training wall time per configuration (default 10)")
    p.add_argument("--out", type=Path, default=Path("runs/recipe-bench"), help="runs and results.json go here")
    p.add_argument("--config", action="append", default=[], metavar='NAME="ARGS"',
                   help="a configuration: a name and extra train flags (repeatable)")
    p.add_argument("--configs", action="append", default=[], type=Path, metavar="FILE",
                   help='JSON or YAML mapping NAME: "ARGS" (repeatable)')
    p.add_argument("--only", help="run only these configurations (comma-separated names)")
    p.add_argument("--no-train-metrics", dest="train_metrics", action="store_false",
                   help="skip the evaluation on the training split")
    args = p.parse_args(argv)
    try:
        if args.minutes <= 0:
            raise UserError(f"--minutes must be above 0, got {args.minutes:g}")
        if not (args.data_dir / "annotations" / "test.json").is_file():
            raise UserError(f"--data-dir {args.data_dir}: no annotations/test.json; make the data first with "
                            "benchmarks/hard_data.py --out DIR")
        configs = select_configs(args.config, args.configs, args.only)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"minutes": args.minutes, "data_dir": str(args.data_dir), "base_args": BASE_ARGS,
               "machine": machine(), "configs": []}
    for name, extra in configs.items():
        print(f"[{len(results['configs']) + 1}/{len(configs)}] {name}: {shlex.join(extra) or '(base only)'}",
              file=sys.stderr, flush=True)
        results["configs"].append(run_config(name, extra, args.data_dir, args.minutes, args.out, args.train_metrics))
        (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(markdown(results))
    print(f"\nresults: {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
