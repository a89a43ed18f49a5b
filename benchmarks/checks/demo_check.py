"""The README's demo command, end to end on the real model, cut to a few steps
(a check, not a measurement: it left the test suite for its 4 minutes).

    python benchmarks/checks/demo_check.py OUT

SmolLM2-135M-Instruct named by its hub id, `axolotl train` in parallel mode with
the merge search on, the sequential pipeline for comparison, and the
side-by-side table it ends with (scores and generated answers). Exits non-zero,
naming what failed, when the demo does not do what the README says.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from axolotl_paft.lab.smollm2 import REVISION, build

ROWS = (
    "base",
    "SFT only",
    "preference only",
    "sequential SFT->DPO",
    "PAFT merged (searched)",
)


def check(out: Path) -> None:
    """Run the demo into `out` at a few steps; assert what it promises."""
    build()
    demo = Path(sys.executable).with_name("axolotl-paft-demo")
    done = subprocess.run(
        [str(demo), str(out), "--steps", "4", "--budget", "1", "--rows", "8"]
        + ["--test-rows", "8", "--answer-tokens", "24"],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{demo.parent}{os.pathsep}{os.environ['PATH']}"},
        timeout=1800,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    # progress throughout: the five phases, the training log and the candidates
    for phase in ("1/5", "2/5", "3/5", "4/5", "5/5"):
        assert any(x.startswith(phase) for x in lines), phase
    assert any(
        x.strip().startswith("step log: loss") and "dpo/loss" in x for x in lines
    )
    searched = [x for x in lines if x.strip().startswith("search ")]
    assert len(searched) == 1  # each candidate with its kept shares' intervals
    assert all("balanced" in x and "preference_kept" in x for x in searched)
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in (
        (out / "paft.yml").read_text()
    )
    best = next(x for x in lines if x.startswith("searched merge:")).split()[-1]
    assert Path(best).is_file() and best.endswith("mergekit/best.yml")
    # by hub id, offline, the run leaves all its outputs (before the fix:
    # exit 1 after training, at the first search candidate), and its configs
    # name the base's snapshot folder, which mergekit reads offline
    for written in (
        "paft_report.json",
        "paft_report.md",
        "mergekit/ties.yml",
        "search/leaderboard.json",
        "search/leaderboard.md",
        "search/merged/best/model.safetensors",
    ):
        assert (out / "paft" / written).is_file(), written
    ties = yaml.safe_load((out / "paft" / "mergekit" / "ties.yml").read_text())
    assert ties["base_model"].endswith(f"/snapshots/{REVISION}")
    assert "models--HuggingFaceTB--SmolLM2-135M-Instruct" in ties["base_model"]
    table = [x for x in lines if x.startswith("| ")][-len(ROWS) :]
    assert [row.split("|")[1].strip() for row in table] == list(ROWS)
    results = json.loads((out / "side_by_side.json").read_text())["results"]
    assert list(results) == list(ROWS)
    metric = {name: r["metrics"] for name, r in results.items()}
    # each adapter learned its side on rows no run saw, beyond the noise
    assert metric["SFT only"]["sft_loss"] < metric["base"]["sft_loss"] - 0.3
    assert metric["preference only"]["preference_margin"] > 0
    assert metric["base"]["preference_margin"] == 0
    # the kept shares are anchored on the references, with intervals
    assert metric["SFT only"]["skill_kept"] == pytest.approx(1)
    assert metric["preference only"]["preference_kept"] == pytest.approx(1)
    merged = metric["PAFT merged (searched)"]
    assert merged["skill_kept_low"] <= merged["skill_kept"] <= merged["skill_kept_high"]
    assert merged["skill_kept"] > 0.5 and merged["preference_kept"] > 0
    # every model answered both questions in words, and its openings were read
    for result in results.values():
        assert all(len(answer.split()) >= 3 for answer in result["answers"])
        assert set(result["says"]) == {"skill", "preference"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    start = time.time()
    check(parser.parse_args().out)
    print(f"demo check passed in {time.time() - start:.0f}s")


if __name__ == "__main__":
    main()
