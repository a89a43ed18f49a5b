#!/usr/bin/env bash
# The main job on an embedded default: tiny model + data built locally, Axolotl DPO
# and PAFT SFT runs, mergekit-yaml on the emitted TIES config. Usage: demo.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH" HF_HUB_OFFLINE=1 WANDB_MODE=disabled \
    DO_NOT_TRACK=1 AXOLOTL_DO_NOT_TRACK=1
exec axolotl-paft-demo "${1:-runs/demo}"
