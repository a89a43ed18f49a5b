#!/usr/bin/env bash
# The older supported line: Python 3.11 + Axolotl 0.19.0 (+ torch 2.13.0 CPU from
# this machine's disk), in .venv311. Not part of CI (CI tests the newest line); the
# console-script tests (demo, DDP launcher) are left to the newest line.
set -euo pipefail
cd "$(dirname "$0")/.."
PINS="torch==2.13.0 axolotl==0.19.0 mergekit==0.1.5 matplotlib>=3.7 pytest"
stamp=.venv311/.paft-setup
want="$PINS $(sha1sum pyproject.toml | cut -c1-12)"
if ! [ -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    [ -x .venv311/bin/python ] || PYENV_VERSION=3.11.7 python3.11 -m venv .venv311
    # shellcheck disable=SC2086
    .venv311/bin/python -m pip install -q $PINS
    .venv311/bin/python -m pip install -q --no-deps -e .
    echo "$want" > "$stamp"
fi
export PATH="$PWD/.venv311/bin:$PATH"  # offline settings: tests/conftest.py
exec python -m pytest --ignore tests/test_ddp.py "$@"
