#!/usr/bin/env bash
# detr-ft on one CUDA GPU: the checks no CPU machine can make (issue "scale-out and accelerators").
#
# All on a small DETR saved like a pretrained checkpoint (frozen batch norms, which detr-ft's
# training applies inside the convolutions before them), as fine-tuning facebook/detr-resnet-50 runs:
#
#   ddp     Lightning DDP with one device (--strategy ddp --devices 1 --device cuda --autocast
#           --pad --num-buckets 1), not compiled: the quick checks come first
#   graphs  predict with --pad --cuda-graphs on ddp's checkpoint: the same detections as the
#           plain path (needs ddp)
#   train   --device cuda --autocast --pad --num-buckets 1 --compile; recompiles over the whole
#           run, validation included, must stay <= 2 (on an H100 about 170 s, mostly compiling)
#
# Prints one JSON object on stdout {"machine", "ddp", "cuda_graphs", "train", "ok"} with the checks
# that ran; logs go to stderr. Exit code 0 when every check passed, 1 when one failed, 2 without
# a CUDA device.
#
#   bash benchmarks/gpu_checks.sh > gpu_checks.json   # PYTHON=..., CHECKS=ddp,graphs (default ddp,graphs,train)
set -uo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/cuda_env.sh"

work="${WORK:-$(mktemp -d)}"
mkdir -p "$work"
detr() { "$PYTHON" -m detr_ft "$@"; }

detr data synthetic --out "$work/data" --train 64 --val 16 --size 320 >&2
"$PYTHON" - "$work/model" >&2 <<'EOF'
import sys

from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor, ResNetConfig

backbone = ResNetConfig(embedding_size=32, hidden_sizes=[64, 128, 192, 256], depths=[1, 1, 1, 1],
                        layer_type="bottleneck", out_features=["stage4"])
DetrForObjectDetection(DetrConfig(
    use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=backbone, d_model=128,
    encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
    encoder_ffn_dim=256, decoder_ffn_dim=256, num_queries=20, num_labels=5)).save_pretrained(sys.argv[1])
DetrImageProcessor(size={"shortest_edge": 256, "longest_edge": 320}).save_pretrained(sys.argv[1])
EOF
common=(--data-dir "$work/data" --model "$work/model" --device cuda --autocast --pad --num-buckets 1
        --max-epochs 2 --batch-size 8 --num-workers 2 --seed 0)
said() { echo "gpu_checks.sh: $1 exit code $2 after $SECONDS s" >&2; }
checks=",${CHECKS:-ddp,graphs,train},"
ddp_rc=-1; plain_rc=-1; graphs_rc=-1; train_rc=-1   # -1: not run
if [[ $checks == *,ddp,* ]]; then
  detr train "${common[@]}" --strategy ddp --devices 1 --output-dir "$work/ddp" >&2; ddp_rc=$?; said ddp $ddp_rc
fi
if [[ $checks == *,graphs,* ]]; then
  detr predict --ckpt-path "$work/ddp/last.ckpt" --data-dir "$work/data" --device cuda --pad \
    --threshold 0.0 --output-dir "$work/plain" >&2;                                plain_rc=$?; said predict $plain_rc
  detr predict --ckpt-path "$work/ddp/last.ckpt" --data-dir "$work/data" --device cuda --pad --cuda-graphs \
    --threshold 0.0 --output-dir "$work/graphs" >&2;                graphs_rc=$?; said "predict --cuda-graphs" $graphs_rc
fi
if [[ $checks == *,train,* ]]; then
  detr train "${common[@]}" --compile --output-dir "$work/train" >&2;             train_rc=$?; said train $train_rc
fi

"$PYTHON" - "$work" "$train_rc" "$ddp_rc" "$plain_rc" "$graphs_rc" <<'EOF'
import json, sys
from pathlib import Path

from detr_ft.devices import machine_facts

work = Path(sys.argv[1])
train_rc, ddp_rc, plain_rc, graphs_rc = map(int, sys.argv[2:6])
KEYS = ("world_size", "wall_seconds", "recompiles", "buckets", "padded_pixel_fraction", "images_per_second", "steps",
        "epochs", "device", "precision", "map_50", "val_map_50", "val_map")


def run_facts(name, rc, compiled):
    path = work / name / "metrics.json"
    if rc != 0 or not path.is_file():
        return {"rc": rc, "ok": False}
    m = json.loads(path.read_text())
    facts = {k: m[k] for k in KEYS if k in m}
    recompiles = m.get("recompiles")
    facts["ok"] = (recompiles is not None and recompiles <= 2 if compiled else True) and m.get("world_size") == 1
    facts["rc"] = rc
    return facts


def detections(name):
    return sorted((d["image_id"], d["category_id"], d["score"], d["bbox"])
                  for d in json.loads((work / name / "detections.json").read_text()))


def cuda_graphs():
    graphs = {"rc": [plain_rc, graphs_rc], "ok": False}
    if plain_rc != 0 or graphs_rc != 0:
        return graphs
    plain, replay = detections("plain"), detections("graphs")
    same = len(plain) == len(replay) and all(
        a[0] == b[0] and a[1] == b[1] and abs(a[2] - b[2]) < 1e-3
        and max(abs(x - y) for x, y in zip(a[3], b[3])) < 0.5 for a, b in zip(plain, replay))
    return {**graphs, "detections": len(plain), "same_as_plain": same, "ok": same}


checks = {}   # the checks that ran (-1: not asked for)
if ddp_rc != -1:
    checks["ddp"] = run_facts("ddp", ddp_rc, False)
if plain_rc != -1:
    checks["cuda_graphs"] = cuda_graphs()
if train_rc != -1:
    checks["train"] = run_facts("train", train_rc, True)
report = {"machine": {**machine_facts(), "lightning": __import__("lightning").__version__}, **checks,
          "ok": bool(checks) and all(c["ok"] for c in checks.values())}
print(json.dumps(report, indent=1))
sys.exit(0 if report["ok"] else 1)
EOF
