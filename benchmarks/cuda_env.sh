# Sourced by benchmarks/gpu.sh and benchmarks/gpu_checks.sh: the interpreter, detr-ft from
# this checkout, no hub access, and a stop (exit code 2, one line) without a CUDA device.
PYTHON="${PYTHON:-python}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$repo/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"

if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
  echo "$(basename "$0"): no CUDA device visible to $PYTHON (torch.cuda.is_available() is False); run it on an NVIDIA GPU machine with a CUDA build of torch, or 'detr-ft bench' for CPU figures" >&2
  exit 2
fi
