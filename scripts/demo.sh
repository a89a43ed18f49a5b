#!/usr/bin/env bash
# The main job on a small miniature world built locally: one parallel-mode
# `axolotl train` with the merge search, the sequential SFT->DPO pipeline beside it,
# and a side-by-side table (axolotl_paft.lab.demo). Usage: demo.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"  # offline settings: axolotl_paft.const.OFFLINE_ENV
exec axolotl-paft-demo "${1:-runs/demo}"
