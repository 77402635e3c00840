#!/usr/bin/env bash
# Every family preset on one CUDA GPU, then the demo family and DETR-R50 against the stock path.
#
#   families  each preset trains 2 epochs with --autocast --pad --num-buckets 1 (bf16 on the GPU,
#             static shapes), validates and draws its sample predictions; beside them dfine-tiny and
#             deformable-detr-tiny with --compile (recompiles over the run, validation included) and
#             dfine-tiny under --strategy ddp --devices 1. These runs share the GPU, so they run at
#             once: their speed says nothing, their exit codes and metrics do.
#   bench     then alone on the GPU: detr-ft bench (train, infer) for dfine-tiny at 640 x 640 and
#             the DETR-R50 architecture at 800 x 1333, bf16, against the stock transformers path;
#             and benchmarks/criterion_cost.py (detr-ft's criterion, DETR-R50's shapes).
#
# Prints one JSON object on stdout {"machine", "families", "bench", "criterion", "ok"}; logs go to
# stderr and stay in $WORK. Exit code 0 when every family run passed, 1 otherwise, 2 without a CUDA
# device or (with the bench part) without pycocotools. DEVICE=cpu runs the same script on a CPU (a dry run of the script itself: slow, and
# with PRESETS=... BENCH=0 to keep it short).
#
#   bash benchmarks/gpu_families.sh > gpu_families.json   # PYTHON=..., WORK=DIR, BENCH=0, PRESETS="a b"
set -uo pipefail

DEVICE="${DEVICE:-cuda}"
if [ "$DEVICE" = cuda ]; then
  source "$(dirname "${BASH_SOURCE[0]}")/cuda_env.sh"
else
  PYTHON="${PYTHON:-python}"
  export PYTHONPATH="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/src${PYTHONPATH:+:$PYTHONPATH}"
  export HF_HUB_OFFLINE=1
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="${WORK:-$(mktemp -d)}"
mkdir -p "$work/runs" "$work/bench"
if [ "${BENCH:-1}" = 1 ] && ! "$PYTHON" -c "import pycocotools" >/dev/null 2>&1; then
  echo "gpu_families.sh: the bench part runs the stock pipeline, which needs pycocotools: pip install 'detr-ft[bench]' (or carry its wheel), or BENCH=0" >&2
  exit 2
fi
presets="${PRESETS:-$("$PYTHON" -c 'from detr_ft.model.families import FAMILIES; print(*(f.preset for f in FAMILIES))')}"
started=$SECONDS

"$PYTHON" -m detr_ft data synthetic --out "$work/data" --train 64 --val 16 --size 320 >&2
common=(--data-dir "$work/data" --device "$DEVICE" --autocast --pad --num-buckets 1 --max-epochs 2
        --batch-size 8 --num-workers 1 --seed 0 --max-inf-frames 2)
run() {  # name, then train's flags
  local name=$1; shift
  timeout "${RUN_LIMIT:-300}" "$PYTHON" -m detr_ft train "${common[@]}" "$@" --output-dir "$work/runs/$name" \
    >"$work/runs/$name.log" 2>&1
  echo $? >"$work/runs/$name.rc"
}
for p in $presets; do run "$p" --model "$p" & done
if [[ " $presets " == *" dfine-tiny "* ]]; then
  run dfine-tiny-compile --model dfine-tiny --compile &
  run dfine-tiny-ddp --model dfine-tiny --strategy ddp --devices 1 &
fi
[[ " $presets " == *" deformable-detr-tiny "* ]] && { run deformable-detr-tiny-compile --model deformable-detr-tiny --compile & }
wait
echo "gpu_families.sh: family runs done after $((SECONDS - started)) s" >&2

if [ "${BENCH:-1}" = 1 ]; then
  timeout 120 "$PYTHON" -m detr_ft bench --model dfine-tiny --image-size 640 --batch-size 16 --device "$DEVICE" \
    --precision bf16 --what train,infer --steps 10 --warmup 3 --rounds 2 --no-memory \
    --output-dir "$work/bench/dfine" --json "$work/bench/dfine-tiny.json" >&2
  echo "gpu_families.sh: dfine-tiny bench done after $((SECONDS - started)) s" >&2
  timeout 200 "$PYTHON" -m detr_ft bench --model detr-r50 --image-size 800x1333 --batch-size 8 --device "$DEVICE" \
    --precision bf16 --what train,infer --steps 8 --warmup 3 --rounds 2 --no-memory \
    --output-dir "$work/bench/r50" --json "$work/bench/detr-r50.json" >&2
  echo "gpu_families.sh: detr-r50 bench done after $((SECONDS - started)) s" >&2
  timeout 40 "$PYTHON" "$here/criterion_cost.py" --device "$DEVICE" --batch-size 8 --rounds 100 \
    >"$work/bench/criterion.json"
fi

"$PYTHON" - "$work" $((SECONDS - started)) <<'EOF'
import json, sys
from pathlib import Path

from detr_ft.devices import machine_facts

work, seconds = Path(sys.argv[1]), int(sys.argv[2])
KEYS = ("device", "precision", "world_size", "steps", "epochs", "wall_seconds", "images_per_second", "recompiles",
        "val_map_50", "map_50", "map")


def read(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


families = {}
for rc_file in sorted((work / "runs").glob("*.rc")):
    name = rc_file.stem
    rc = int(rc_file.read_text())
    metrics = read(work / "runs" / name / "metrics.json") or {}
    facts = {"rc": rc, **{k: metrics[k] for k in KEYS if k in metrics}}
    if rc != 0:
        facts["log_tail"] = (work / "runs" / f"{name}.log").read_text(errors="replace")[-1500:]
    recompiles = metrics.get("recompiles")
    facts["ok"] = rc == 0 and bool(metrics) and ("compile" not in name or (recompiles is not None and recompiles <= 2))
    families[name] = facts
bench = {p.stem: read(p) for p in sorted((work / "bench").glob("*.json")) if p.stem != "criterion"}
report = {"machine": machine_facts(), "families": families, "bench": bench,
          "criterion": read(work / "bench" / "criterion.json"), "wall_seconds": seconds,
          "ok": bool(families) and all(f["ok"] for f in families.values())}
print(json.dumps(report, indent=1))
sys.exit(0 if report["ok"] else 1)
EOF
