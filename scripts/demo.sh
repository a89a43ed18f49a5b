#!/usr/bin/env bash
# The main job on an embedded default: tiny model + data built locally, Axolotl DPO
# and PAFT SFT runs, mergekit-yaml on the emitted TIES config. Usage: demo.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"  # offline settings: axolotl_paft.const.OFFLINE_ENV
exec axolotl-paft-demo "${1:-runs/demo}"
