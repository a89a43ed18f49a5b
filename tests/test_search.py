"""The merge search: every candidate built by mergekit, outputs a user can run."""

from __future__ import annotations

import json

import yaml

from axolotl_paft.merge import validate_config
from axolotl_paft.search import _rank
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
    ranks = [_rank(e) for e in entries]  # balanced, then score (score alone
    assert ranks == sorted(ranks, reverse=True)  # where a reference gains nothing)
    assert set(board["references"]) == {"base", "sft", "preference"}
    assert board["best"] == entries[0]["name"]
    best = yaml.safe_load((out / "mergekit" / "best.yml").read_text())
    validate_config(best)
    assert best["merge_method"] == entries[0]["method"]
    assert (out / "merged" / "best" / "model.safetensors").is_file()
    assert not (out / "candidates" / entries[-1]["name"]).exists()  # not kept
    assert (out / "search.png").stat().st_size > 0
    assert entries[0]["name"] in (out / "leaderboard.md").read_text()


def _fake_search_world(monkeypatch, landscape):
    """Replace the merges and the scorer by a table: model name -> (skill exact
    match, preference accuracy); `default` for merges not in the table (a
    function of the Candidate)."""
    import torch

    from axolotl_paft import evaluate
    from axolotl_paft import search as search_module

    built = {}

    def build(base, sft, preference, candidate, out, cache):
        built[out.name] = candidate
        out.mkdir(parents=True)
        (out.parent / f"{out.name}.yml").write_text(
            f"merge_method: {candidate.method}\n"
        )
        return out

    def load_model(path, adapter=None):
        return "base" if adapter is None and path == "BASE" else (adapter or path).name

    def quick_metrics(model, base_logps, tokenizer, sft_rows, preference_rows):
        skill, accuracy = landscape.get(model) or landscape["default"](built[model])
        return {
            "sft_exact_match": skill,
            "preference_accuracy": accuracy,
            "preference_margin": 0.0,
            "score": (skill + accuracy) / 2,
        }

    monkeypatch.setattr(search_module, "build_candidate", build)
    monkeypatch.setattr(evaluate, "load_model", load_model)
    monkeypatch.setattr(evaluate, "pair_logps", lambda *a: torch.zeros(1, 2))
    monkeypatch.setattr(evaluate, "quick_metrics", quick_metrics)
    monkeypatch.setattr(
        "transformers.AutoTokenizer.from_pretrained", lambda *a, **k: None
    )


def test_search_prefers_the_balanced_merge_over_a_lopsided_higher_score(
    monkeypatch, tmp_path
):
    """Issue 8's goal is both sides kept: a merge that keeps all of the skill and
    60% of the preference (score 0.80) must lose to one that keeps 75% of each
    (score 0.75), measured against the SFT-only and preference-only adapters."""
    from pathlib import Path

    from axolotl_paft.search import search

    _fake_search_world(
        monkeypatch,
        {
            "base": (0.0, 0.0),
            "sft": (1.0, 0.0),
            "preference": (0.0, 1.0),
            "ties-s1-p1-d0.5": (1.0, 0.6),
            "task_arithmetic-s1-p1": (0.75, 0.75),
            "default": lambda candidate: (0.5, 0.5),
        },
    )
    result = search(
        "BASE", Path("sft"), Path("preference"), [{}], [{}], tmp_path / "search",
        budget=4, methods=("ties", "task_arithmetic"),
    )  # fmt: skip
    assert result["best"] == "task_arithmetic-s1-p1"
    best = result["leaderboard"][0]["metrics"]
    assert best["skill_kept"] == best["preference_kept"] == best["balanced"] == 0.75
    assert set(result["references"]) == {"base", "sft", "preference"}
    board = json.loads((tmp_path / "search" / "leaderboard.json").read_text())
    assert board["objective"] == "balanced"
    assert board["leaderboard"][1]["name"] == "ties-s1-p1-d0.5"  # score 0.80, second
    # the old ranking is still there, named
    result = search(
        "BASE", Path("sft"), Path("preference"), [{}], [{}], tmp_path / "by-score",
        budget=4, methods=("ties", "task_arithmetic"), objective="score",
    )  # fmt: skip
    assert result["best"] == "ties-s1-p1-d0.5"


def test_search_bisects_the_preference_weight_to_where_both_sides_cross(
    monkeypatch, tmp_path
):
    """A trade-off between the grid's values: skill kept falls as the preference
    weight rises, preference kept rises; they cross at 1.2 (0.8 each). The grid
    has 1.0 (100% / 60%) and 1.5 (50% / 100%) only; the balance phase bisects
    the preference weight between them."""
    from pathlib import Path

    from axolotl_paft.search import search

    def trade_off(candidate):
        w = candidate.preference_weight
        penalty = abs(candidate.sft_weight - 1)
        return (max(0.0, min(1.0, 2 - w) - penalty), max(0.0, min(1.0, w - 0.4)))

    _fake_search_world(
        monkeypatch,
        {"base": (0.0, 0.0), "sft": (1.0, 0.0), "preference": (0.0, 1.0),
         "default": trade_off},
    )  # fmt: skip
    result = search(
        "BASE", Path("sft"), Path("preference"), [{}], [{}], tmp_path / "search",
        budget=10, methods=("task_arithmetic",),
    )  # fmt: skip
    best = result["leaderboard"][0]
    assert 1.0 < best["preference_weight"] < 1.5
    assert best["metrics"]["balanced"] >= 0.78
    assert len(result["leaderboard"]) == 10
