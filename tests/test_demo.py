"""The README's demo command, end to end: the small miniature world, axolotl train
in parallel mode with the merge search on, the sequential pipeline for comparison,
and the side-by-side table it ends with."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROWS = (
    "base",
    "SFT only",
    "preference only",
    "sequential SFT->DPO",
    "PAFT merged (searched)",
)


def test_demo_ends_with_the_side_by_side_table(tmp_path):
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
    assert any(x.startswith("sft delta sparsity:") for x in lines)
    assert any(x.startswith("preference delta sparsity:") for x in lines)
    best = next(x for x in lines if x.startswith("searched merge:")).split()[-1]
    assert Path(best).is_file() and best.endswith("mergekit/best.yml")
    table = {}
    for line in lines[-len(ROWS) :]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        table[cells[0]] = (float(cells[1]), float(cells[2]), cells[3])
    assert list(table) == list(ROWS)
    skill, accuracy = (lambda row: row[0]), (lambda row: row[1])
    merged, seq = table["PAFT merged (searched)"], table["sequential SFT->DPO"]
    assert skill(table["SFT only"]) > skill(table["base"])
    assert accuracy(merged) > accuracy(table["base"])
    assert skill(merged) + accuracy(merged) > skill(seq) + accuracy(seq)
