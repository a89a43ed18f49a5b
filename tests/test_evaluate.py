"""The evaluation command: metrics per candidate, a declared score, outputs."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoTokenizer

from axolotl_paft.cli.eval import main
from axolotl_paft.lab.toy import preference_rows
from axolotl_paft.merging.scoring import load_model, preference_margins


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
        for key in ("sft_greedy_match", "preference_accuracy", "chosen_over_rejected"):
            assert 0 <= metrics[key] <= 1
        assert metrics["greedy_score"] == pytest.approx(
            (metrics["sft_greedy_match"] + metrics["preference_accuracy"]) / 2
        )
    assert results["base"]["preference_margin"] == 0  # the base against itself
    best = max(
        results, key=lambda n: (results[n]["greedy_score"], -results[n]["sft_loss"])
    )
    assert summary["best"] == best
    assert (evaluated / "eval.png").read_bytes()[:4] == b"\x89PNG"


def test_a_measures_name_means_one_computation_in_every_command(evaluated):
    """`sft_exact_match` was greedy generation (text compared, whitespace
    trimmed, 32 new tokens) in axolotl-paft-eval and teacher-forced matching of
    the answer and its end-of-turn token in the search (`scoring.MEASURES`), and
    `score` was built from each. The eval's generated ones are named for what
    they are; every name the eval shares with `scoring.MEASURES` is the
    search's computation."""
    from axolotl_paft.cli.eval import METRICS
    from axolotl_paft.merging.scoring import MEASURES

    results = json.loads((evaluated / "eval.json").read_text())["results"]
    for metrics in results.values():
        assert "sft_exact_match" not in metrics and "score" not in metrics
        assert {"sft_greedy_match", "greedy_score"} <= metrics.keys()
    shared = set(METRICS) & {m.metric for m in MEASURES.values()}
    assert shared == {"sft_loss", "preference_accuracy", "preference_margin"}


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


def test_batched_span_scoring_equals_one_row_at_a_time(llama_world, adapters):
    """Padding-aware batching: rows of different lengths scored together (right
    padding, attention mask) give each row's numbers as a pass on it alone."""
    from axolotl_paft.lab.toy import sft_rows
    from axolotl_paft.merging.scoring import (
        TextPairs,
        TextSkill,
        load_candidate,
        span_stats,
    )

    tokenizer = AutoTokenizer.from_pretrained(llama_world.model_dir)
    model = load_candidate(llama_world.model_dir, adapters["sft"])
    skill = TextSkill(tokenizer, sft_rows(6, seed=3))
    pairs = TextPairs(tokenizer, preference_rows(5, seed=4))
    spans = skill.spans + pairs.spans
    assert len({end for _, _, end in spans}) > 2  # lengths differ: padding
    batched = span_stats(model, spans)
    alone = [span_stats(model, [span], batch_tokens=1) for span in spans]
    for key, values in batched.items():
        expected = torch.cat([a[key] for a in alone])
        assert torch.allclose(values, expected, atol=1e-4), key
    assert batched["tokens"].min() > 0


def test_held_out_answers_end_in_the_templates_end_of_turn_token(smollm2):
    """Text rows were scored on the base's `eos_token`. With another
    template (here one whose turns end in `<|endoftext|>`, as `chat_template:
    llama3` ends them in `<|eot_id|>`), the answer's span ends in the template's
    token, and what the template writes after it is not scored."""
    from axolotl_paft.merging.scoring import TextPairs, render_answer

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    turns = [{"role": "user", "content": "Hi"}]
    ids, start, end = render_answer(tokenizer, turns, "Hello there.")
    assert ids[end - 1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.decode(ids[start : end - 1]) == "Hello there."
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}: {{ m['content'] }}"
        "<|endoftext|>\n{% endfor %}{% if add_generation_prompt %}"
        "<|im_start|>assistant: {% endif %}"
    )
    ids, start, end = render_answer(tokenizer, turns, "Hello there.")
    assert ids[end - 1] == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert ids[end - 1] != tokenizer.eos_token_id
    assert end == len(ids)  # the newline after it is cut
    assert tokenizer.decode(ids[start : end - 1]) == "Hello there."
    # pair rows render the same way, `system` optional
    pairs = TextPairs(
        tokenizer, [{"question": "Hi", "chosen": "Hello there.", "rejected": "No."}]
    )
    assert pairs.spans[0] == (ids, start, end)
    # ... and so do `chat_template.default` rows, answers as messages or strings
    same = [
        {
            "messages": turns,
            "chosen": {"role": "assistant", "content": "Hello there."},
            "rejected": "No.",
        }
    ]
    assert TextPairs(tokenizer, same).spans == pairs.spans
    with pytest.raises(ValueError, match="row 2 has keys .'chosen', 'prompt'"):
        TextPairs(tokenizer, [*same, {"prompt": "Hi", "chosen": "Hello."}])


def test_auto_skill_measure_is_exact_match_for_short_answers_only(smollm2):
    from axolotl_paft.lab import freeform, toy
    from axolotl_paft.merging.scoring import SHORT_ANSWER_TOKENS, TextSkill
    from axolotl_paft.merging.scoring import choose_skill_measure as choose

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    short = TextSkill(tokenizer, toy.sft_rows(8))
    long = TextSkill(tokenizer, freeform.sft_rows(8))
    assert max(end - start for _, start, end in short.spans) <= SHORT_ANSWER_TOKENS
    assert choose(short) == "exact_match"
    assert choose(long) == "nll"
    assert choose(long, "token_accuracy") == "token_accuracy"
    with pytest.raises(ValueError, match="not in"):
        choose(long, "bleu")


def test_scorer_names_a_side_whose_reference_gains_nothing(
    llama_world, adapters, caplog
):
    """A reference that gains nothing over the base beyond noise (here the base
    itself as the SFT-only model) is warned about, its side does not rank, and
    the balanced objective is the other side's kept share, with an interval."""
    from axolotl_paft.lab.toy import sft_rows
    from axolotl_paft.merging.scoring import (
        Scorer,
        TextPairs,
        TextSkill,
        load_candidate,
        load_model,
    )

    tokenizer = AutoTokenizer.from_pretrained(llama_world.model_dir)
    base = load_model(llama_world.model_dir)
    preference = load_candidate(llama_world.model_dir, adapters["preference"])
    skill = TextSkill(tokenizer, sft_rows(8, seed=5))
    pairs = TextPairs(tokenizer, preference_rows(8, seed=6))
    scorer = Scorer.on_rows(skill, pairs, base, skill_measure="nll")
    scorer.add_reference("sft", scorer.score_terms(base))
    with caplog.at_level("WARNING"):
        scorer.add_reference("preference", scorer.score_terms(preference))
    assert scorer.measures == {"skill": "nll", "preference": "margin"}
    assert not scorer.gains["skill"]["clear"] and scorer.gains["skill"]["gain"] == 0
    assert "sft-only adapter gains nothing" in caplog.text
    assert scorer.ranked_sides == ("preference",)
    metrics = scorer(preference)
    assert metrics["preference_kept"] == pytest.approx(1.0)
    assert metrics["balanced"] == pytest.approx(1.0)
    assert metrics["balanced_low"] == pytest.approx(1.0)  # itself: no noise


def _terms(values, denominators=None):
    values = torch.tensor(values, dtype=torch.float64)
    ones = torch.ones_like(values)
    return values, ones if denominators is None else torch.tensor(denominators)


def test_a_side_inside_the_noise_has_no_kept_shares_and_nan_never_balances():
    """Measured on the demo: the SFT-only adapter's NLL gain over the base was
    positive but inside its noise, so skill did not rank, yet every candidate
    still got skill kept shares such as 72 and -62 (gain over a near-zero
    denominator) that fed the tie-break. A side that does not rank has none
    (nan, intervals too); and a candidate whose ranked measure is nan (a broken
    merge) is nan balanced, not the other side's share or 1."""
    from axolotl_paft.merging.scoring import Scorer, balanced_of

    base = {"nll": _terms([1.0, 1.0, 1.0, 1.0]), "margin": _terms([0.0] * 4)}
    sft = {"nll": _terms([0.0, 2.0, 0.6, 1.2]), "margin": _terms([0.0] * 4)}
    preference = {"nll": base["nll"], "margin": _terms([1.0, 1.1, 0.9, 1.0])}
    scorer = Scorer({"skill": "nll", "preference": "margin"}, base)
    scorer.add_reference("sft", sft)
    scorer.add_reference("preference", preference)
    assert scorer.gains["skill"]["gain"] > 0 and not scorer.gains["skill"]["clear"]
    assert scorer.ranked_sides == ("preference",)
    metrics = scorer.metrics(
        {"nll": _terms([0.9, 1.0, 0.8, 1.0]), "margin": _terms([0.5] * 4)}
    )
    for key in ("skill_kept", "skill_kept_low", "skill_kept_high"):
        assert math.isnan(metrics[key]), (key, metrics[key])
    assert metrics["balanced"] == metrics["preference_kept"] == pytest.approx(0.5)
    broken = scorer.metrics(
        {"nll": _terms([0.9] * 4), "margin": _terms([math.nan] * 4)}
    )
    assert math.isnan(broken["balanced"])
    for skill, preference in ((math.nan, 1.0), (0.5, math.nan)):
        kept = {"skill_kept": skill, "preference_kept": preference}
        assert math.isnan(balanced_of(kept, ("skill", "preference")))


def test_train_on_inputs_does_not_make_the_skill_the_whole_conversation(llama_world):
    """With `train_on_inputs: true` Axolotl labels every token of an SFT row,
    prompt included: the last labelled span was then the whole conversation,
    and the run's own eval split scored the prompt's loss as the skill. The
    skill is the last answer and its end-of-turn token, as from a file."""
    from axolotl_paft.lab.toy import sft_rows
    from axolotl_paft.merging.scoring import TextSkill, TokenizedSkill

    tokenizer = AutoTokenizer.from_pretrained(llama_world.model_dir)
    text = TextSkill(tokenizer, sft_rows(4, seed=3))
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    rows = [
        {"input_ids": ids + newline, "labels": ids + newline}  # all labelled
        for ids, _, _ in text.spans
    ]
    tokenized = TokenizedSkill(rows, tokenizer)
    assert [(ids[:end], start, end) for ids, start, end in tokenized.spans] == [
        (ids, start, end) for ids, start, end in text.spans
    ]
    with pytest.raises(ValueError, match="train_on_inputs"):
        TokenizedSkill(rows)  # without the run's tokenizer, refused by name
    # a row labelled as Axolotl labels it without train_on_inputs is unchanged
    masked = [
        {"input_ids": ids, "labels": [-100] * start + ids[start:end]}
        for ids, start, end in text.spans
    ]
    assert TokenizedSkill(masked, tokenizer).spans == text.spans
