"""The README's demo command, end to end: axolotl train in parallel mode (SFT +
DPO LoRAs in one run), mergekit-yaml on the emitted TIES config, a merged model
that answers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_demo_runs_end_to_end(tmp_path):
    demo = Path(sys.executable).with_name("axolotl-paft-demo")
    done = subprocess.run(
        [str(demo), str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{demo.parent}{os.pathsep}{os.environ['PATH']}"},
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    sparsity = next(x for x in lines if x.startswith("sft delta sparsity:"))
    assert float(sparsity.split()[3].rstrip("%")) > 30
    merged = Path(
        next(x for x in lines if x.startswith("merged model (ties)")).split()[-1]
    )
    assert (merged / "model.safetensors").is_file()
    assert any(x.startswith("preference delta sparsity:") for x in lines)
    answer = next(x for x in lines if x.startswith("merged model answers"))
    assert " plus " in answer  # the SFT answer format survived the merge
