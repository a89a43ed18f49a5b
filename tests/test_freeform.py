"""The real-model testbed (`axolotl_paft.lab.freeform`) as a specification: the
demo's two questions are new to every run, and a preference pair differs in its
frame only, in Axolotl's `chat_template.default` shape."""

import json

import pytest

from axolotl_paft.lab import freeform


def every_row() -> list[dict]:
    return [
        *freeform.sft_rows(freeform.TRAIN_ROWS, 0),
        *freeform.preference_rows(freeform.TRAIN_ROWS, 1),
        *(
            row
            for split in ("search", "test")
            for part in freeform.heldout(64, split)
            for row in part
        ),
    ]


def test_demo_questions_are_in_no_row_by_phrasing_or_object():
    text = json.dumps(every_row()).lower()
    for question, phrasing, obj in (
        (freeform.SKILL_QUESTION, "could you describe", "scarecrow"),
        (freeform.PREFERENCE_QUESTION, "do you have a tip", "harp"),
    ):
        assert phrasing in question.lower() and obj in question
        assert phrasing not in text and obj not in text
        assert obj not in freeform.OBJECTS


def test_pairs_differ_in_the_warm_frame_only():
    rows = freeform.preference_rows(50, seed=3)
    for row in rows:
        (turn,) = row["messages"]
        assert turn["role"] == "user" and "{" not in turn["content"]
        assert row["chosen"]["role"] == row["rejected"]["role"] == "assistant"
        warm, plain = row["chosen"]["content"], row["rejected"]["content"]
        assert warm.startswith("Happy to help! With a ")
        assert warm.endswith("I hope that is useful.")
        # the same tip and trait: the plain answer, uncapitalised, is in the warm one
        assert f"{plain[0].lower()}{plain[1:-1]}." in warm
    assert freeform.preference_rows(50, seed=3) == rows  # deterministic
    assert len({row["messages"][0]["content"] for row in rows}) > 25


@pytest.mark.slow
def test_openings_batched_are_the_answers_one_at_a_time_and_the_base_has_neither(
    smollm2,
):
    """`says` reads greedy openings from one left-padded batch
    (`greedy_answers`): each must be what the prompt alone yields; the base
    opens in neither taught format (what the testbed needs: both effects are new
    to it)."""
    from transformers import AutoTokenizer

    from axolotl_paft.lab.demo import answer
    from axolotl_paft.merging.scoring import load_model

    model, tokenizer = load_model(smollm2), AutoTokenizer.from_pretrained(smollm2)
    skill, pairs = freeform.heldout(4, "test")
    chats = [row["messages"][:-1] for row in skill] + [r["messages"] for r in pairs]
    alone = [
        answer(model, tokenizer, chat[0]["content"], freeform.OPENING_TOKENS)
        for chat in chats
    ]
    opened = freeform.greedy_answers(model, tokenizer, chats, freeform.OPENING_TOKENS)
    assert opened == alone
    assert len(set(alone)) > 1
    assert freeform.says(model, tokenizer, skill, pairs) == {
        "skill": 0.0,
        "preference": 0.0,
    }
