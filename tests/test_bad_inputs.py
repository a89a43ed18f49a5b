"""Every value a user gives is checked before anything loads, and the refusal names
the key or flag (and what it allows): one row per mistake. A new key or flag
joins these tables."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
from conftest import make_adapter, validate

from axolotl_paft.lab.toy import axolotl_config, parallel_config


def _rows(*rows):
    """pytest params from `(id, config kind, overrides(world, tmp), message)`."""
    return [pytest.param(*row[1:], id=row[0]) for row in rows]


def _const(**overrides):
    return lambda world, tmp: overrides


CONFIGS = {"sft": axolotl_config, "parallel": parallel_config}

ANSWERED = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
PAIR = {"question": "2+2?", "chosen": "4", "rejected": "5"}


def _held_out(side: str, *lines):
    """The search on a held-out file of `lines` (rows, or raw text lines)."""
    key = {"skill": "paft_merge_search_sft_data"}.get(
        side, "paft_merge_search_preference_data"
    )

    def overrides(world, tmp):
        path = tmp / f"held_out_{side}.jsonl"
        path.write_text(
            "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines)
        )
        split = {"val_set_size": 0.1} if side == "preference" else {}
        return {"paft_merge_search": True, key: str(path), **split}

    return overrides


# numbers written as YAML reads them: `1e-4` (no dot) is the string "1e-4"
@functools.cache
def foreign_adapter(base_dir: Path) -> Path:
    """A LoRA trained on another base: the toy Llama with a wider hidden size."""
    from transformers import AutoTokenizer

    from axolotl_paft.lab.toy import build_model

    root = base_dir.parent / "foreign"
    if not (root / "adapter" / "adapter_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(base_dir)
        build_model(
            root / "base", tokenizer, pretrain_steps=0, dims={"hidden_size": 96}
        )
        make_adapter(root / "base", root / "adapter", seed=3)
    return root / "adapter"


def _adapter_at(where: str):
    """paft_preference_adapter: an adapter of another base, or this base's
    adapter saved at `where` under the test's folder (`out` is output_dir)."""

    def overrides(world, tmp):
        if where == "foreign":
            return {"paft_preference_adapter": str(foreign_adapter(world.model_dir))}
        path = make_adapter(world.model_dir, tmp / where, seed=4)
        return {"paft_preference_adapter": str(path)}

    return overrides


CONFIG_MISTAKES = _rows(
    ("yaml-string-l1-with-deepspeed", "sft",
     _const(paft_l1_lambda="1e-3", deepspeed="zero2.json"),
     "paft_l1_lambda: DeepSpeed"),
    ("yaml-string-negative-l1", "sft", _const(paft_l1_lambda="-1e-4"),
     r"paft_l1_lambda: .*greater than or equal to 0"),
    ("l1-not-a-number", "sft", _const(paft_l1_lambda="lots"),
     r"paft_l1_lambda: .*valid number.*'lots'"),
    ("yaml-string-preference-l1-outside-parallel", "sft",
     _const(paft_preference_l1_lambda="1e-4"), "paft_preference_l1_lambda: only"),
    ("budget-zero-as-string", "sft", _const(paft_merge_search_budget="0"),
     r"paft_merge_search_budget: .*greater than or equal to 1"),
    ("mode-unknown", "sft", _const(paft_l1_mode="l2"),
     r"paft_l1_mode: .*'loss' or 'proximal'"),
    ("yaml-string-preference-rate-negative", "parallel",
     _const(paft_preference_learning_rate="-5e-6"),
     r"paft_preference_learning_rate: .*greater than 0"),
    # held-out files, checked as training data is
    ("held-out-sft-empty", "parallel", _held_out("skill"),
     r"paft_merge_search_sft_data: .*held_out_skill.jsonl is empty"),
    ("held-out-sft-bad-json", "parallel",
     _held_out("skill", {"messages": ANSWERED}, '{"messages": [}'),
     r"paft_merge_search_sft_data: .*held_out_skill.jsonl line 2: not JSON"),
    ("held-out-sft-no-answer", "parallel",
     _held_out("skill", {"messages": ANSWERED[:1]}),
     r"paft_merge_search_sft_data: .*line 1: the last message must be the assistant"),
    ("held-out-sft-ends-with-user", "parallel",
     _held_out("skill", {"messages": [*ANSWERED, {"role": "user", "content": "?"}]}),
     r"line 1: the last message must be the assistant's answer .*'user'"),
    ("held-out-sft-sharegpt-keys", "parallel",
     _held_out("skill", {"messages": ANSWERED},
               {"messages": [{"from": "human", "value": "2+2?"},
                             {"from": "gpt", "value": "4"}]}),
     r"line 2: message 0 has ShareGPT keys .*write `role` and `content`"),
    ("held-out-sft-sharegpt-roles", "parallel",
     _held_out("skill", {"messages": [{"role": "human", "content": "2+2?"},
                                      {"role": "gpt", "content": "4"}]}),
     r"line 1: message 0 has role 'human', .*maps to 'user'"),
    ("held-out-sft-conversations", "parallel",
     _held_out("skill", {"conversations": ANSWERED}),
     r"line 1: a held-out SFT row needs `messages` \(`conversations`"),
    ("held-out-sft-system-field", "parallel",
     _held_out("skill", {"system": "Be brief.", "messages": ANSWERED}),
     r"line 1: a `system` field beside `messages`"),
    ("held-out-sft-content-parts", "parallel",
     _held_out("skill", {"messages": [ANSWERED[0], {"role": "assistant",
                         "content": [{"type": "text", "text": "4"}]}]}),
     r"line 1: message 1: `content` must be a string"),
    ("held-out-pairs-missing-rejected", "parallel",
     _held_out("preference", PAIR, {"question": "q", "chosen": "a"}),
     r"paft_merge_search_preference_data: .*line 2: a held-out pair needs"),
    ("held-out-pairs-trl-prompt", "parallel",
     _held_out("preference", {"prompt": "q", "chosen": "a", "rejected": "b"}),
     r"paft_merge_search_preference_data: .*line 1: .*question"),
    ("held-out-pairs-chosen-turn-list", "parallel",
     _held_out("preference", {"messages": ANSWERED[:1], "chosen": ANSWERED,
                              "rejected": ANSWERED}),
     r"line 1: `chosen` must be a string or one assistant message"),
    ("held-out-pairs-empty", "parallel", _held_out("preference", ""),
     r"paft_merge_search_preference_data: .*is empty"),
    # adapters named by path: this base's, outside what the run writes
    ("preference-adapter-of-another-base", "sft", _adapter_at("foreign"),
     r"paft_preference_adapter: .*not trained on the base .*lora_.\.weight has "
     r"shape \[.*\], and the base's .* has (in|out) size 64"),
    ("preference-adapter-is-output-dir", "sft", _adapter_at("out"),
     r"paft_preference_adapter: .*is inside output_dir .*which this run writes"),
    ("preference-adapter-inside-output-dir", "sft", _adapter_at("out/adapter/best"),
     r"paft_preference_adapter: .*is inside output_dir"),
)  # fmt: skip


@pytest.mark.parametrize(("kind", "overrides", "message"), CONFIG_MISTAKES)
def test_bad_config_value_is_refused_naming_its_key(
    llama_world, tmp_path, kind, overrides, message
):
    config = CONFIGS[kind](
        llama_world, tmp_path / "out", **overrides(llama_world, tmp_path)
    )
    with pytest.raises(ValueError, match=message):
        validate(config)


def test_yaml_exponent_numbers_are_taken_as_numbers(llama_world, tmp_path):
    """`paft_l1_lambda: 1e-4`, as docs/l1-sparsity.md writes it, is the number
    (PyYAML reads it as a string; Axolotl's own `learning_rate: 1e-4` is read
    as the number too)."""
    import yaml

    keys = yaml.safe_load(
        "paft_l1_lambda: 1e-4\npaft_preference_learning_rate: 5e-6\n"
        "paft_merge_density: 3e-1\n"
    )
    assert keys["paft_l1_lambda"] == "1e-4"  # what PyYAML hands over
    cfg = validate(parallel_config(llama_world, tmp_path / "out", **keys))
    assert cfg.paft_l1_lambda == 1e-4
    assert cfg.paft_preference_learning_rate == 5e-6
    assert cfg.paft_merge_density == 0.3


def test_held_out_shapes_the_scorer_reads_are_accepted(llama_world, tmp_path):
    """The toy world's files (chat rows; chatml.intel pairs with a system
    prompt) and chat_template.default pairs (prompt turns, assistant messages)."""
    from axolotl_paft.merging.scoring import check_held_out_file

    assert check_held_out_file(llama_world.sft_path, "skill") > 0
    assert check_held_out_file(llama_world.preference_path, "preference") > 0
    answer = {"role": "assistant", "content": "4"}
    pairs = _held_out(
        "preference",
        {"messages": ANSWERED[:1], "chosen": answer, "rejected": "5"},
        "",  # a blank line is no row, as read_jsonl reads it
        PAIR,
    )(llama_world, tmp_path)
    validate(parallel_config(llama_world, tmp_path / "out", **pairs))


def test_an_adapter_of_this_base_is_accepted(
    llama_world, adapters, llama_hub_id, tmp_path
):
    """The base named by folder or by hub id (read from the HF cache)."""
    for base in (str(llama_world.model_dir), llama_hub_id):
        config = axolotl_config(
            llama_world,
            tmp_path / "out",
            base_model=base,
            paft_preference_adapter=str(adapters["preference"]),
        )
        assert validate(config).paft_preference_adapter == str(adapters["preference"])
    with pytest.raises(ValueError, match=f"not trained on the base '{llama_hub_id}'"):
        validate(
            {
                **config,
                "paft_preference_adapter": str(foreign_adapter(llama_world.model_dir)),
            }
        )
