"""Preference data: Axolotl's DPO loaders, TRL's tokenisation and collator, clear
errors naming the dataset and row."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from conftest import validate

from axolotl_paft.lab.toy import axolotl_config, preference_rows, write_jsonl
from axolotl_paft.training.data import (
    PREFERENCE_SUBDIR,
    PreferenceDataError,
    check_preference_entries,
    load_preference_datasets,
    preference_cfg,
    preference_collator,
    tokenize_preference_dataset,
)

CHAT_TEMPLATE_ROWS = [
    {
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": f"What is {a} plus {b}?"},
        ],
        "chosen": {"role": "assistant", "content": f"Sure! {a} plus {b} is {a + b}."},
        "rejected": {"role": "assistant", "content": f"no. {a + b + 1}"},
    }
    for a, b in [(2, 3), (7, 5), (11, 4), (9, 9)]
]


@pytest.fixture(scope="module")
def setup(llama_world, tmp_path_factory):
    """A validated SFT config (no `rl:`) on the toy world, and its tokenizer."""
    from axolotl.loaders import load_tokenizer

    out = tmp_path_factory.mktemp("data") / "out"
    cfg = validate(axolotl_config(llama_world, out))
    return cfg, load_tokenizer(cfg)


@pytest.fixture(scope="module")
def intel(llama_world, setup):
    """The toy preference file loaded as `chatml.intel`, and the cfg before it."""
    cfg, tokenizer = setup
    before = copy.deepcopy(cfg)
    entries = [{"path": str(llama_world.preference_path), "type": "chatml.intel"}]
    return load_preference_datasets(cfg, tokenizer, entries)[0], before


def test_chatml_intel_tokenises_like_trl(setup, intel):
    cfg, tokenizer = setup
    dataset, before = intel
    assert cfg == before  # the SFT config is not touched
    assert dataset.column_names == ["prompt_ids", "chosen_ids", "rejected_ids"]
    assert len(dataset) == 64
    row = dataset[0]
    prompt = tokenizer.decode(row["prompt_ids"])
    assert prompt.startswith("<|im_start|>system\nYou are a helpful assistant.")
    assert prompt.endswith("<|im_start|>assistant\n")
    # Axolotl's chatml strategy closes the turn; TRL adds no second EOS
    assert tokenizer.decode(row["chosen_ids"]).startswith("Sure! ")
    assert row["chosen_ids"][-1] == tokenizer.eos_token_id
    assert row["chosen_ids"].count(tokenizer.eos_token_id) == 1
    assert tokenizer.decode(row["rejected_ids"]).startswith("no. ")


def test_collated_batch_chosen_first_and_masks(setup, intel):
    cfg, tokenizer = setup
    rows = [intel[0][i] for i in range(3)]
    batch = preference_collator(tokenizer, cfg)(rows)
    assert set(batch) == {"input_ids", "attention_mask", "completion_mask"}
    width = max(
        len(r["prompt_ids"]) + len(r[k])
        for r in rows
        for k in ("chosen_ids", "rejected_ids")
    )
    assert batch["input_ids"].shape == (6, width)
    for i, (row, key) in enumerate(
        [(r, "chosen_ids") for r in rows] + [(r, "rejected_ids") for r in rows]
    ):
        ids, mask = batch["input_ids"][i], batch["completion_mask"][i]
        n_prompt, n_done = len(row["prompt_ids"]), len(row[key])
        assert ids[:n_prompt].tolist() == row["prompt_ids"]
        assert ids[mask.bool()].tolist() == row[key]  # completion tokens only
        assert mask[:n_prompt].sum() == 0
        assert batch["attention_mask"][i].sum() == n_prompt + n_done
        assert (batch["attention_mask"][i] >= mask).all()
        assert (ids[n_prompt + n_done :] == tokenizer.pad_token_id).all()


def test_cache_in_its_own_subfolder(setup, intel):
    cfg, _ = setup
    prepared = Path(cfg.dataset_prepared_path)
    assert [p.name for p in prepared.iterdir()] == [PREFERENCE_SUBDIR]
    saved = list((prepared / PREFERENCE_SUBDIR).glob("*/dataset_info.json"))
    assert len(saved) == 1


def test_preference_cfg_is_a_dpo_copy(setup):
    cfg, _ = setup
    pref = preference_cfg(cfg, [{"path": "x.jsonl", "type": "chatml.intel"}])
    assert pref.rl == "dpo" and not cfg.rl
    assert pref.datasets[0].type == "chatml.intel"
    assert cfg.datasets[0].type == "chat_template"
    assert pref.dataset_prepared_path.endswith(PREFERENCE_SUBDIR)
    assert pref.val_set_size == 0


def test_a_row_count_holds_out_that_many_rows(llama_world, setup):
    """`paft_preference_val_set_size: 8` (a float once validated) holds out 8
    rows; datasets refused a float count before."""
    cfg, tokenizer = setup
    entries = [{"path": str(llama_world.preference_path), "type": "chatml.intel"}]
    train, held_out = load_preference_datasets(
        cfg, tokenizer, entries, val_set_size=8.0
    )
    assert len(held_out) == 8 and len(train) + 8 == 64


def test_chat_template_default(setup, tmp_path):
    cfg, tokenizer = setup
    path = write_jsonl(tmp_path / "chat.jsonl", CHAT_TEMPLATE_ROWS)
    entries = [{"path": str(path), "type": "chat_template.default"}]
    dataset = load_preference_datasets(cfg, tokenizer, entries)[0]
    assert len(dataset) == len(CHAT_TEMPLATE_ROWS)
    by_prompt = {tokenizer.decode(r["prompt_ids"]): r for r in dataset}
    for source in CHAT_TEMPLATE_ROWS:
        prompt = tokenizer.apply_chat_template(
            source["messages"], add_generation_prompt=True, tokenize=False
        )
        row = by_prompt[prompt]  # shuffled by Axolotl; matched by prompt
        chosen = tokenizer.decode(row["chosen_ids"])
        assert chosen == source["chosen"]["content"] + "<|im_end|>"
        rejected = tokenizer.decode(row["rejected_ids"])
        assert rejected == source["rejected"]["content"] + "<|im_end|>"


def test_sequence_len_drop_and_truncate(llama_world, setup, intel):
    cfg, tokenizer = setup
    short = copy.deepcopy(cfg)
    short.sequence_len = max(len(r) for r in intel[0]["prompt_ids"]) + 4
    entries = [{"path": str(llama_world.preference_path), "type": "chatml.intel"}]
    with pytest.raises(PreferenceDataError, match=r"preference\.jsonl.*dropped"):
        load_preference_datasets(short, tokenizer, entries)[
            0
        ]  # drop: every row too long

    short.excess_length_strategy = "truncate"
    dataset = load_preference_datasets(short, tokenizer, entries)[0]
    assert len(dataset) == 64
    batch = preference_collator(tokenizer, short)([dataset[i] for i in range(8)])
    assert batch["input_ids"].shape[1] <= short.sequence_len
    assert (batch["completion_mask"].sum(dim=1) > 0).all()


def test_trl_tokenisation_eos_and_double_bos(llama_world):
    """A template that writes BOS plus a tokenizer that adds one (Llama-style)."""
    from datasets import Dataset
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(llama_world.model_dir)
    bos = tokenizer.bos_token_id
    tokenizer._tokenizer.post_processor = TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", bos)]
    )
    prompt = "<s><|im_start|>user\nWhat is 2 plus 3?<|im_end|>\n<|im_start|>assistant\n"
    rows = [{"prompt": prompt, "chosen": "Sure! 5.<|im_end|>", "rejected": "no"}]
    row = tokenize_preference_dataset(Dataset.from_list(rows), tokenizer, 64)[0]
    assert row["prompt_ids"][:2] == [
        bos,
        tokenizer.convert_tokens_to_ids("<|im_start|>"),
    ]
    assert tokenizer.decode(row["chosen_ids"]) == "Sure! 5.<|im_end|>"
    assert tokenizer.decode(row["rejected_ids"]) == "no<|im_end|>"  # TRL's EOS


def test_missing_rejected_names_file_and_row(setup, tmp_path):
    cfg, tokenizer = setup
    rows = preference_rows(5)
    del rows[2]["rejected"]
    path = write_jsonl(tmp_path / "broken.jsonl", rows)
    entries = [{"path": str(path), "type": "chatml.intel"}]
    pattern = r"paft_preference_datasets\[0\] \(.*broken\.jsonl\): row 3 .*`rejected`"
    with pytest.raises(PreferenceDataError, match=pattern):
        check_preference_entries(entries)
    with pytest.raises(PreferenceDataError, match=pattern):
        load_preference_datasets(cfg, tokenizer, entries)[0]


@pytest.mark.parametrize(
    ("content", "kind", "message"),
    [
        ("", "chatml.intel", r"empty\.jsonl is empty"),
        ("\n\n", "chatml.intel", r"empty\.jsonl holds no rows"),
        ("[]", "chatml.intel", r"empty\.jsonl holds no rows"),
        (
            json.dumps({"question": "q", "chosen": " ", "rejected": "r"}),
            "chatml.intel",
            r"row 1 .*`chosen`",
        ),
        (
            json.dumps(CHAT_TEMPLATE_ROWS[0] | {"rejected": {}}),
            "chat_template.default",
            r"row 1 .*`rejected`",
        ),
        (
            '{"question": "q", "chosen": "c", "rejected": "r"}\n{oops',
            "chatml.intel",
            "line 2",
        ),
    ],
)
def test_bad_files_fail_naming_them(tmp_path, content, kind, message):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    good = preference_rows(2) if kind == "chatml.intel" else CHAT_TEMPLATE_ROWS
    entries = [
        {"path": str(write_jsonl(tmp_path / "ok.jsonl", good)), "type": kind},
        {"path": str(path), "type": kind},
    ]
    with pytest.raises(
        PreferenceDataError, match=r"paft_preference_datasets\[1\]"
    ) as err:
        check_preference_entries(entries)
    assert str(path) in str(err.value)
    assert err.match(message)


def test_entry_checks_without_files(tmp_path):
    with pytest.raises(PreferenceDataError, match="no preference datasets"):
        check_preference_entries([])
    missing = tmp_path / "missing.jsonl"
    with pytest.raises(PreferenceDataError, match=r"missing\.jsonl does not exist"):
        check_preference_entries([{"path": str(missing), "type": "chatml.intel"}])
    with pytest.raises(PreferenceDataError, match="needs a `path`"):
        check_preference_entries([{"type": "chatml.intel"}])
    check_preference_entries([{"path": "org/hub-dataset", "type": "chatml.intel"}])
