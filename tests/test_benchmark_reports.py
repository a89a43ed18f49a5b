"""Benchmark reports read their own results files (no training here)."""

import importlib.util
import json
from pathlib import Path

import pytest

REPORT = Path(__file__).parents[1] / "benchmarks/evidence/search_frontier_report.py"
MET = {"skill_kept": 0.96, "preference_kept": 1.0}
MISSED = {"skill_kept": 0.9375, "preference_kept": 1.0}


def _seed_file(seed: int, searches: dict) -> dict:
    """A search_frontier.py seed file where only `--search` ran (no grid);
    `searches`: name -> (SFT adapter tag, kept shares, test score)."""
    ref = {"sft_exact_match": 1.0, "preference_accuracy": 1.0}
    splits = ("validation", "test")
    return {
        "seed": seed,
        "candidates": {},
        "references": {
            name: {s: ref for s in splits} for name in ("sft", "preference", "base")
        },
        "searches": {
            name: {
                "best": f"della-s1-p{seed + 3}-d0.5",
                "budget": 24,
                "evaluated": 24,
                "sft": sft,
                "kept": {s: kept for s in splits},
                "metrics": {s: {"score": score} for s in splits},
            }
            for name, (sft, kept, score) in searches.items()
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


@pytest.fixture
def report():
    """`search_frontier_report.report`, loaded from its file (a script's module)."""
    spec = importlib.util.spec_from_file_location("search_frontier_report", REPORT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.report


def _rows(md: Path, marker: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.split("|")[1:-1]]
        for line in md.read_text().splitlines()
        if marker in line
    ]


def test_search_frontier_report_of_searches_only(tmp_path, report):
    """A folder where only `--search` ran (no grid) is reported, not a crash:
    its search table says per seed whether the goal was met on the test rows."""
    for seed, kept in enumerate((MET, MISSED)):
        seed_file = _seed_file(seed, {"b24": ("l0", kept, 0.95)})
        (tmp_path / f"seed{seed}.json").write_text(json.dumps(seed_file))
    report(tmp_path, tmp_path / "frontier")
    rows = _rows(tmp_path / "frontier.md", "| b24 |")
    assert [r[-1] for r in rows] == ["yes", "no"]
    assert rows[1][5] == "93.8% / 100.0%"
    assert (tmp_path / "frontier.png").stat().st_size > 0
    summaries = json.loads((tmp_path / "frontier.json").read_text())["summaries"]
    assert [s["candidates"] for s in summaries] == [0, 0]
    assert "SFT adapter" not in (tmp_path / "frontier.md").read_text()  # one adapter


def test_search_frontier_report_per_sft_adapter(tmp_path, report):
    """Searches on several SFT adapters (`--search-sft`) get one row per adapter:
    means over seeds, and the score change against the lambda-0 search paired by
    seed (+0.02 and +0.04: 0.03 +- 0.13, not starred, as the interval holds 0)."""
    for seed, (l1_score, l1_kept) in enumerate(((0.97, MET), (0.99, MET))):
        searches = {
            "b24-l0": ("l0", MISSED, 0.95),
            "b24-loss0.001": ("loss0.001", l1_kept, l1_score),
        }
        (tmp_path / f"seed{seed}.json").write_text(
            json.dumps(_seed_file(seed, searches))
        )
    report(tmp_path, tmp_path / "frontier")
    rows = {r[0]: r for r in _rows(tmp_path / "frontier.md", "| 2 |")}
    assert list(rows) == ["l0", "loss0.001"]
    assert rows["l0"][2:7] == [
        "93.75% +- 0.00",
        "100.00% +- 0.00",
        "0.95 +- 0.00",
        "-",
        "0 of 2",
    ]
    assert rows["loss0.001"][4:7] == ["0.98 +- 0.13", "0.03 +- 0.13", "2 of 2"]
    assert rows["loss0.001"][7] == "della-s1-p3-d0.5, della-s1-p4-d0.5"
    assert (tmp_path / "frontier.png").stat().st_size > 0  # per adapter, no grid
