"""Benchmark reports read their own results files (no training here)."""

import json
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _seed_file(seed: int, kept: dict) -> dict:
    ref = {"sft_exact_match": 1.0, "preference_accuracy": 1.0}
    splits = ("validation", "test")
    return {
        "seed": seed,
        "candidates": {},  # only `--search` ran in this folder
        "references": {
            name: {s: ref for s in splits} for name in ("sft", "preference", "base")
        },
        "searches": {
            "b24": {
                "best": "della-s1-p3-d0.5",
                "budget": 24,
                "evaluated": 24,
                "kept": {s: kept for s in splits},
                "metrics": {s: {"score": 0.95} for s in splits},
            }
        },
        "runs": [
            {
                "command": "python benchmarks/search_frontier.py OUT --search b24",
                "date": "2026-11-23 20:00:00 UTC",
                "commit": "0123456789abcdef",
                "machine": "test",
                "python": "3.12",
                "packages": {},
            }
        ],
    }


def test_search_frontier_report_of_searches_only(tmp_path, monkeypatch):
    """A folder where only `--search` ran (no grid) is reported, not a crash:
    its search table says per seed whether the goal was met on the test rows."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from search_frontier_report import report

    met = {"skill_kept": 0.96, "preference_kept": 1.0}
    missed = {"skill_kept": 0.9375, "preference_kept": 1.0}
    for seed, kept in enumerate((met, missed)):
        (tmp_path / f"seed{seed}.json").write_text(json.dumps(_seed_file(seed, kept)))
    report(tmp_path, tmp_path)
    rows = [
        line
        for line in (tmp_path / "frontier.md").read_text().splitlines()
        if "| b24 |" in line
    ]
    assert [r.split("|")[-2].strip() for r in rows] == ["yes", "no"]
    assert "93.8% / 100.0%" in rows[1]
    assert (tmp_path / "frontier.png").stat().st_size > 0
    summaries = json.loads((tmp_path / "frontier.json").read_text())["summaries"]
    assert [s["candidates"] for s in summaries] == [0, 0]
