"""The merge search's second stage (`merging.answers`): declared checks on greedy
answers, generated in batches and stopped at the template's end-of-turn token,
re-ranking the screen's finalists."""

from __future__ import annotations

import json
import math

import pytest

from axolotl_paft.merging.answers import (
    AnswerStage,
    answer_rank,
    greedy_answers,
    held_out_prompts,
    parse_checks,
    stop_tokens,
)


def check(kind, value):
    """The one check of `{kind: value}` on the skill side."""
    declared = {"skill": [{kind: value}], "preference": [{"min_chars": 0}]}
    return parse_checks(declared)["skill"][0]


@pytest.mark.parametrize(
    "kind, value, passes, fails",
    [
        ("starts_with", "FIELD CARD", "  FIELD CARD: KITE", "A FIELD CARD"),
        ("regex", r"^Happy to help", "Happy to help! ...", "I am happy to help"),
        ("not_regex", r"(?i)as an ai", "Sure: ...", "As an AI, I cannot"),
        ("json_keys", ["name", "age"], 'Here: {"name": "a", "age": 3}', '{"name": 1}'),
        ("json_keys", "name", 'x {"a": {"b": 1}} {"name": 2}', "{name: 2}"),
        ("max_chars", 5, "short", "longer"),
        ("min_chars", 3, "abc", "ab"),
        ("function", "operator:contains", "says the prompt", "says nothing"),
    ],
)  # fmt: skip
def test_each_kind_passes_and_fails_what_it_says(kind, value, passes, fails):
    """(`function` is called as function(answer, prompt): operator.contains
    passes an answer that holds the prompt.)"""
    assert check(kind, value)(passes, "prompt")
    assert not check(kind, value)(fails, "prompt")


@pytest.mark.parametrize(
    "declared, message",
    [
        ({"skill": [{"min_chars": 1}]}, "declare checks for both sides"),
        ({"skill": [], "preference": [{"min_chars": 1}]}, "skill: a list of checks"),
        ({"skill": [{"startswith": "A"}], "preference": [{"min_chars": 1}]},
         "skill check 0: unknown kind 'startswith'"),
        ({"skill": [{"regex": "("}], "preference": [{"min_chars": 1}]},
         "skill check 0: regex '(' is no regex"),
        ({"skill": [{"min_chars": 1}], "preference": [{"max_chars": -1}]},
         "preference check 0: max_chars takes a whole number >= 0"),
        ({"skill": [{"min_chars": 1}], "preference": [{"function": "nope:f"}]},
         "preference check 0: function 'nope:f' cannot be imported"),
        ({"skill": [{"min_chars": 1}], "preference": [{"function": "json"}]},
         "function takes 'module:function'"),
        ({"skill": [{"a": 1, "b": 2}], "preference": [{"min_chars": 1}]},
         "skill check 0: one {kind: value} entry"),
        ({"skill": [{"json_keys": []}], "preference": [{"min_chars": 1}]},
         "json_keys takes a key or a list of keys"),
    ],
)  # fmt: skip
def test_a_bad_declaration_names_the_side_the_entry_and_the_problem(declared, message):
    with pytest.raises(ValueError) as err:
        parse_checks(declared)
    assert message in str(err.value)


def test_a_finalist_that_cannot_rank_never_wins_and_ties_keep_the_screens_order():
    def entry(balanced, skill=0.5, preference=0.5):
        return {
            "answers": {
                "balanced": balanced,
                "skill_kept": skill,
                "preference_kept": preference,
            }
        }

    broken, good, better = entry(math.nan, math.nan), entry(0.4), entry(0.7)
    ranked = sorted(
        [(broken, 0), (good, 1), (better, 2)],
        key=lambda pair: answer_rank(*pair),
        reverse=True,
    )
    assert [pair[0] for pair in ranked] == [better, good, broken]
    first, second = entry(0.5), entry(0.5)
    assert answer_rank(first, 0) > answer_rank(second, 1)


def test_answers_stop_at_the_templates_end_of_turn_and_batch_as_one_at_a_time(
    smollm2,
):
    """Generation stops at ChatML's `<|im_end|>`, the token that ends the held-out
    answers as the template renders them; without it the base runs on into a
    new turn (so the stop is what keeps the answer one turn). Batched, left
    padded answers are each prompt's answer alone."""
    from transformers import AutoTokenizer

    from axolotl_paft.lab import freeform
    from axolotl_paft.merging.scoring import TextPairs, TextSkill, load_model

    model, tokenizer = load_model(smollm2), AutoTokenizer.from_pretrained(smollm2)
    skill_rows, pair_rows = freeform.heldout(3, "test")
    skill, pairs = TextSkill(tokenizer, skill_rows), TextPairs(tokenizer, pair_rows)
    stop = stop_tokens(tokenizer, skill)
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in stop
    prompts = held_out_prompts(skill, pairs)
    assert len(prompts["skill"]) == len(prompts["preference"]) == 3
    for side, rows in (("skill", skill_rows), ("preference", pair_rows)):
        text = tokenizer.decode(prompts[side][0])
        assert text.endswith("<|im_start|>assistant\n")
        assert rows[0]["messages"][0]["content"] in text
    questions = [
        *prompts["skill"],
        *prompts["preference"],
        tokenizer.apply_chat_template(
            [{"role": "user", "content": "What is 2 plus 3?"}],
            add_generation_prompt=True,
            return_dict=True,
        )["input_ids"],
    ]
    batched = greedy_answers(model, tokenizer, questions, 48, stop, batch_size=4)
    alone = [greedy_answers(model, tokenizer, [q], 48, stop)[0] for q in questions]
    assert batched == alone
    short = batched[-1]
    assert "5" in short and "user" not in short
    runs_on = greedy_answers(model, tokenizer, [questions[-1]], 48, [0])[0]
    assert runs_on.startswith(short) and len(runs_on) > len(short) + 10


def test_the_search_reranks_its_finalists_by_what_they_say(
    llama_world, adapters, tmp_path
):
    """With an answer stage, the screen's best finalists (and only they) carry
    their answers' pass rates and kept shares, the references' answers are in
    leaderboard.json, and leaderboard.md shows what each finalist says. Checks
    every model passes give no reference a gain: no side ranks, and the
    screen's order stands."""
    from axolotl_paft.merging.scoring import read_jsonl
    from axolotl_paft.merging.search import _rank, search

    stage = AnswerStage(
        parse_checks(
            {"skill": [{"min_chars": 0}], "preference": [{"max_chars": 10**6}]}
        ),
        finalists=2,
        max_new_tokens=4,
    )
    result = search(
        str(llama_world.model_dir), adapters["sft"], adapters["preference"],
        read_jsonl(llama_world.sft_path, 4), read_jsonl(llama_world.preference_path, 4),
        tmp_path / "out", budget=3, methods=("ties", "task_arithmetic", "linear"),
        answers=stage,
    )  # fmt: skip
    names = [e["name"] for e in result.leaderboard]
    screen = sorted(result.leaderboard, key=_rank, reverse=True)
    assert names == [e["name"] for e in screen]
    finalists = [e for e in result.leaderboard if "answers" in e]
    assert [e["name"] for e in finalists] == names[:2]
    for entry in finalists:
        said = entry["answers"]
        assert said["skill_pass_rate"] == said["preference_pass_rate"] == 1.0
        assert math.isnan(said["balanced"])
        assert len(said["samples"]["skill"]) == 2
    board = json.loads((tmp_path / "out" / "leaderboard.json").read_text())
    said = board["answers"]
    assert set(said["references"]) == {"base", "sft", "preference"}
    assert said["ranked_by"] == [] and said["finalists"] == 2
    text = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "## What the finalists say" in text
    assert text.count("| base | 1.00 | 1.00 |") == 1
