"""The merge search: every candidate built by mergekit, outputs a user can run."""

from __future__ import annotations

import json

import yaml

from axolotl_paft.merge import validate_config
from axolotl_paft.sweep import main


def test_search_writes_best_config_leaderboard_and_picture(
    llama_world, adapters, tmp_path
):
    out = tmp_path / "search"
    main(
        [
            "--base", str(llama_world.model_dir),
            "--sft", str(adapters["sft"]),
            "--preference", str(adapters["preference"]),
            "--search", "--budget", "4",
            "--methods", "ties,task_arithmetic",
            "--sft-data", str(llama_world.sft_path),
            "--preference-data", str(llama_world.preference_path),
            "--limit", "4",
            "--out", str(out),
        ]
    )  # fmt: skip
    board = json.loads((out / "leaderboard.json").read_text())
    entries = board["leaderboard"]
    assert len(entries) == 4  # the budget: two methods at 1/1, then neighbours
    assert {e["method"] for e in entries[:4]} <= {"ties", "task_arithmetic"}
    scores = [e["metrics"]["score"] for e in entries]
    assert scores == sorted(scores, reverse=True)
    assert board["best"] == entries[0]["name"]
    best = yaml.safe_load((out / "mergekit" / "best.yml").read_text())
    validate_config(best)
    assert best["merge_method"] == entries[0]["method"]
    assert (out / "merged" / "best" / "model.safetensors").is_file()
    assert not (out / "candidates" / entries[-1]["name"]).exists()  # not kept
    assert (out / "search.png").stat().st_size > 0
    assert entries[0]["name"] in (out / "leaderboard.md").read_text()
