#!/usr/bin/env bash
# Idempotent set-up: .venv (Python 3.12) with Axolotl 0.21, mergekit 0.1.5, and this
# package in editable mode. About 4 minutes on a fresh machine, seconds afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

PINS="axolotl==0.21.0 mergekit==0.1.5"
stamp=.venv/.paft-setup
want="$PINS $(sha1sum pyproject.toml | cut -c1-12)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
python=${PAFT_PYTHON:-python3.12}   # .python-version makes pyenv's shim pick 3.12
if [ ! -x .venv/bin/python ]; then
    # Measured: the venv takes 7.7 GB (PyPI's torch is a CUDA build). Refuse now,
    # not after minutes of pip ending in "No space left on device".
    need_gb=8
    free_gb=$(df -Pk . | awk 'NR == 2 { print int($4 / 1048576) }')
    if [ "$free_gb" -lt "$need_gb" ]; then
        echo "scripts/setup.sh: .venv needs about $need_gb GB of disk;" \
            "$PWD has $free_gb GB free" >&2
        exit 1
    fi
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# shellcheck disable=SC2086
.venv/bin/python -m pip install -q $PINS -e ".[mergekit,test]"
echo "$want" > "$stamp"
