#!/usr/bin/env bash
# The test suite (real Axolotl, PEFT, TRL and mergekit on tiny local models).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"  # offline settings: axolotl_paft.const.OFFLINE_ENV
ruff check src tests benchmarks
ruff format --check src tests benchmarks
# Two pytest-xdist workers, a test module each at a time (its module fixtures run
# once): most tests wait on single-threaded `axolotl train` subprocesses, so two
# at once use both cores. `-n 0` (passed on) runs in one process.
exec python -m pytest -n 2 --dist loadscope "$@"
