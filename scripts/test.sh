#!/usr/bin/env bash
# The test suite (real Axolotl, PEFT, TRL and mergekit on tiny local models).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"  # offline settings: axolotl_paft.const.OFFLINE_ENV
ruff check src tests benchmarks
ruff format --check src tests benchmarks
exec python -m pytest "$@"
