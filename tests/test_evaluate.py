"""The evaluation command: metrics per candidate, a declared score, outputs."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from axolotl_paft.evaluate import load_model, main, preference_margins
from axolotl_paft.lab.toy import preference_rows


@pytest.fixture(scope="module")
def evaluated(llama_world, adapters, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    main(
        [
            "--base", str(llama_world.model_dir),
            "--candidate", f"sft={adapters['sft']}",
            "--candidate", f"pref={adapters['preference']}",
            "--sft-data", str(llama_world.sft_path),
            "--preference-data", str(llama_world.preference_path),
            "--limit", "4",
            "--out", str(out),
        ]
    )  # fmt: skip
    return out


def test_every_candidate_is_scored(evaluated):
    summary = json.loads((evaluated / "eval.json").read_text())
    results = summary["results"]
    assert list(results) == ["base", "sft", "pref"]
    for metrics in results.values():
        for key in ("sft_exact_match", "preference_accuracy", "chosen_over_rejected"):
            assert 0 <= metrics[key] <= 1
        assert metrics["score"] == pytest.approx(
            (metrics["sft_exact_match"] + metrics["preference_accuracy"]) / 2
        )
    assert results["base"]["preference_margin"] == 0  # the base against itself
    best = max(results, key=lambda n: (results[n]["score"], -results[n]["sft_loss"]))
    assert summary["best"] == best
    assert (evaluated / "eval.png").read_bytes()[:4] == b"\x89PNG"


def test_preference_accuracy_matches_recomputation(llama_world, adapters, evaluated):
    tokenizer = AutoTokenizer.from_pretrained(llama_world.model_dir)
    rows = preference_rows(64)[:4]
    margins = preference_margins(
        load_model(llama_world.model_dir, adapters["sft"]),
        load_model(llama_world.model_dir),
        tokenizer,
        rows,
    )
    results = json.loads((evaluated / "eval.json").read_text())["results"]
    assert results["sft"]["preference_accuracy"] == float((margins > 0).float().mean())
    assert results["sft"]["preference_margin"] == pytest.approx(float(margins.mean()))


def test_lm_eval_commands_for_gpu_users(evaluated, adapters):
    commands = (evaluated / "lm_eval_commands.sh").read_text()
    assert f"peft={adapters['sft']}" in commands
    assert "gsm8k" in commands and commands.count("lm_eval --model hf") == 2
