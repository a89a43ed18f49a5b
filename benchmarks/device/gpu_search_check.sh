#!/usr/bin/env bash
# The in-memory merge candidates on a lent GPU, in one call:
#   run(command="bash benchmarks/device/gpu_search_check.sh", timeout_s=480)
# Check the device tool's `status` first. The device machine gets the working
# tree only (no venv): this uses its python if torch, transformers, peft and
# mergekit import there, and says what is missing otherwise. Writes
# $OUT/gpu_search_check.json (what benchmarks/device/gpu_search_check.py measures).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-/tmp/gpu_search_check}"
PY="${PYTHON:-python3}"
nvidia-smi --query-gpu=name,memory.total --format=csv || true
if ! "$PY" -c "import torch, transformers, peft, mergekit, safetensors, yaml" 2>/tmp/gsc-import; then
  echo "missing packages on this machine:"; cat /tmp/gsc-import; exit 2
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
PYTHONPATH="$PWD/src" timeout 420 "$PY" benchmarks/device/gpu_search_check.py "$OUT" --layers "${LAYERS:-4}"
