#!/usr/bin/env bash
# The test suite (real Axolotl, PEFT, TRL and mergekit on tiny local models).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH" HF_HUB_OFFLINE=1 WANDB_MODE=disabled \
    DO_NOT_TRACK=1 AXOLOTL_DO_NOT_TRACK=1
ruff check src tests benchmarks
ruff format --check src tests benchmarks
exec python -m pytest "$@"
