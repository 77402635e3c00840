#!/usr/bin/env bash
# detr-ft bench on one CUDA GPU: the DETR-R50 architecture (random weights) at 800x1333, bf16.
#
#   eager run:   train (+ overhead, peak RSS), static, data, startup, infer, batch-1 latency
#   compile run: train and infer with --compile (the network torch.compiled on both sides;
#                the batch-1 latency with torch.compile(mode="reduce-overhead") = CUDA graphs
#                on detr-ft's fixed canvas). STATIC_COMPILE=1 adds static to it (3 more compiles).
#   criterion:   benchmarks/criterion_cost.py on the GPU (its ops and time per step, a few seconds)
#
# Prints one JSON object on stdout, {"machine", "command", "eager": [records], "compile":
# [records], "criterion", "notes"}; the tables and progress go to stderr. Sized to finish within 8 minutes
# on an H100. Without a CUDA device it stops at once: one line on stderr, exit code 2.
#
#   bash benchmarks/gpu.sh > gpu.json     # PYTHON=..., BATCH=8 STEPS=10 IMAGES=100 WHAT=... COMPILE_WHAT=... WORK=DIR
#                                         # CHANNELS_LAST=0: detr-ft's side in NCHW too (default 1, as train)
set -euo pipefail

BATCH="${BATCH:-8}"
STEPS="${STEPS:-10}"
IMAGES="${IMAGES:-100}"
STATIC_COMPILE="${STATIC_COMPILE:-0}"
WHAT="${WHAT:-train,static,infer,startup,data}"   # the eager run's benchmarks
layout=--channels-last
[ "${CHANNELS_LAST:-1}" = "0" ] && layout=--no-channels-last
source "$(dirname "${BASH_SOURCE[0]}")/cuda_env.sh"

if [ -n "${WORK:-}" ]; then   # keep the records (and what a run cut short had written) in $WORK
  work="$WORK"; mkdir -p "$work"
else
  work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
fi
started=$SECONDS

# One dataset for both runs: JPEG photos of mixed orientation, long side 1333 px.
"$PYTHON" - "$work/data" "$IMAGES" >&2 <<'EOF'
import sys
from detr_ft.data.synthetic import SyntheticSpec, generate
generate(sys.argv[1], train=int(sys.argv[2]), val=0, seed=0, spec=SyntheticSpec(size=1333, image_format="jpg"))
print(f"gpu.sh: {sys.argv[2]} synthetic images written")
EOF

common=(--model detr-r50 --image-size 800x1333 --batch-size "$BATCH" --steps "$STEPS" --warmup 3 --rounds 2
        --device cuda --precision bf16 --data-dir "$work/data" "$layout")
compiled_what="train,infer"
[ "$STATIC_COMPILE" = "1" ] && compiled_what="train,static,infer"
compiled_what="${COMPILE_WHAT:-$compiled_what}"

echo "gpu.sh: eager run ($((SECONDS - started)) s)" >&2
"$PYTHON" -m detr_ft bench "${common[@]}" --what "$WHAT" \
  --output-dir "$work/eager" --json "$work/eager.json" >&2
echo "gpu.sh: compile run ($((SECONDS - started)) s)" >&2
"$PYTHON" -m detr_ft bench "${common[@]}" --what "$compiled_what" --compile --no-memory \
  --output-dir "$work/compile" --json "$work/compile.json" >&2
echo "gpu.sh: criterion cost ($((SECONDS - started)) s)" >&2
"$PYTHON" "$(dirname "${BASH_SOURCE[0]}")/criterion_cost.py" --device cuda --batch-size "$BATCH" --rounds 100 \
  > "$work/criterion.json"
echo "gpu.sh: done in $((SECONDS - started)) s" >&2

"$PYTHON" - "$work" "${common[*]}" "$compiled_what" $((SECONDS - started)) "$WHAT" <<'EOF'
import json, sys
from pathlib import Path
work, common, compiled_what, seconds, what = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
eager_env = json.loads((work / "eager" / "machine.json").read_text())
compile_env = json.loads((work / "compile" / "machine.json").read_text())
print(json.dumps({
    "machine": eager_env["before"],
    "command": {"eager": f"detr-ft bench {common} --what {what}",
                "compile": f"detr-ft bench {common} --what {compiled_what} --compile --no-memory"},
    "eager": json.loads((work / "eager.json").read_text()),
    "compile": json.loads((work / "compile.json").read_text()),
    "criterion": {k: v for k, v in json.loads((work / "criterion.json").read_text()).items() if k != "machine"},
    "notes": {"eager": eager_env["notes"], "compile": compile_env["notes"]},
    "wall_seconds": seconds,
}, indent=1))
EOF
