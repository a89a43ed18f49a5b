"""Every value a user gives is checked before anything loads, and the refusal names
the key or flag (and what it allows): one row per mistake. A new key or flag
joins these tables."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import pytest
from conftest import log_messages, make_adapter, validate

from axolotl_paft.config.checks import run_traps
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
    ("export-max-error-zero", "parallel",
     _const(paft_merge_export="adapter", paft_merge_run="linear",
            paft_merge_export_max_error=0),
     r"paft_merge_export_max_error: .*greater than 0"),
    ("export-max-error-above-one", "parallel",
     _const(paft_merge_export="adapter", paft_merge_run="linear",
            paft_merge_export_max_error="1.5"),
     r"paft_merge_export_max_error: .*less than or equal to 1"),
    ("export-adapter-nobody-named", "parallel", _const(paft_merge_export="adapter"),
     r"paft_merge_export: 'adapter' .*set paft_merge_run to one of .*, or "
     r"paft_merge_search: true"),
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
    ("held-out-sft-tokenized-unscored", "parallel",
     _held_out("skill", {"input_ids": [1, 2, 3], "labels": [-100, -100, -100]}),
     r"line 1: no token of `labels` is scored"),
    ("held-out-pair-tokenized-empty", "parallel",
     _held_out("preference",
               {"prompt_ids": [1], "chosen_ids": [], "rejected_ids": [2]}),
     r"line 1: `chosen_ids` must be a non-empty list of token ids"),
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


# The console scripts: argv added to a command line that is otherwise right.
BASELINES = {
    "eval": [
        "--base", "{base}", "--candidate", "sft={sft}",
        "--sft-data", "{sft_data}", "--preference-data", "{preference_data}",
        "--out", "{tmp}/eval",
    ],
    "sweep": [
        "--base", "{base}", "--sft", "{sft}", "--preference", "{preference}",
        "--sft-data", "{sft_data}", "--preference-data", "{preference_data}",
        "--out", "{tmp}/sweep",
    ],
}  # fmt: skip

FLAG_MISTAKES = _rows(
    ("eval-limit-zero", "eval", ["--limit", "0"],
     "argument --limit: a whole number >= 1, not 0"),
    ("eval-limit-word", "eval", ["--limit", "all"],
     "argument --limit: a whole number >= 1, not 'all'"),
    ("eval-candidate-named-base", "eval", ["--candidate", "base={preference}"],
     "argument --candidate: 'base' is reserved"),
    ("eval-candidate-name-twice", "eval", ["--candidate", "sft={preference}"],
     r"--candidate: the name\(s\) \['sft'\] given twice"),
    ("eval-candidate-no-name", "eval", ["--candidate", "={preference}"],
     "argument --candidate: use NAME=FOLDER"),
    ("eval-candidate-no-folder", "eval", ["--candidate", "x={tmp}/none"],
     "argument --candidate: .*none' is not a folder"),
    ("eval-candidate-of-another-base", "eval", ["--candidate", "other={foreign}"],
     "--candidate other=.*not trained on the base"),
    ("eval-candidate-neither-adapter-nor-model", "eval", ["--candidate", "x={tmp}"],
     "--candidate x=.*neither a PEFT adapter"),
    ("eval-sft-data-no-answer", "eval", ["--sft-data", "{bad_sft}"],
     "--sft-data: .*bad_sft.jsonl line 1: the last message"),
    ("eval-preference-data-missing", "eval", ["--preference-data", "{tmp}/no.jsonl"],
     "--preference-data: no such JSONL file"),
    ("sweep-budget-zero", "sweep", ["--search", "--budget", "0"],
     "argument --budget: a whole number >= 1, not 0"),
    ("sweep-budget-without-search", "sweep", ["--budget", "4"],
     "--budget: only with --search"),
    ("sweep-skill-measure-without-search", "sweep", ["--skill-measure", "nll"],
     "--skill-measure: only with --search"),
    ("sweep-method-unknown", "sweep", ["--methods", "ties,tiez"],
     r"argument --methods: unknown \['tiez'\]"),
    ("sweep-method-twice", "sweep", ["--methods", "ties,ties"],
     r"argument --methods: \['ties'\] given twice"),
    ("sweep-method-not-searchable", "sweep", ["--search", "--methods", "ties,nuslerp"],
     r"--methods: \['nuslerp'\] cannot be searched"),
    ("sweep-density-above-one", "sweep", ["--densities", "0.5,1.5"],
     r"argument --densities: 1.5 is not in \(0, 1\]"),
    ("sweep-density-zero", "sweep", ["--densities", "0"],
     r"argument --densities: 0 is not in \(0, 1\]"),
    ("sweep-density-twice", "sweep", ["--densities", "0.5,0.50"],
     "argument --densities: a density given twice"),
    ("sweep-export-rank-zero", "sweep",
     ["--search", "--export", "adapter", "--export-rank", "0"],
     "argument --export-rank: a whole number >= 1"),
    ("sweep-export-rank-without-export", "sweep", ["--search", "--export-rank", "4"],
     "--export-rank: only with --export adapter or both"),
    ("sweep-export-max-error-zero", "sweep",
     ["--search", "--export", "adapter", "--export-max-error", "0"],
     r"argument --export-max-error: a number in \(0, 1\], not 0"),
    ("sweep-export-max-error-not-a-number", "sweep",
     ["--search", "--export", "adapter", "--export-max-error", "small"],
     r"argument --export-max-error: a number in \(0, 1\], not 'small'"),
    ("sweep-export-max-error-without-export", "sweep",
     ["--search", "--export-max-error", "0.1"],
     "--export-max-error: only with --export adapter or both"),
    ("sweep-lm-eval-limit-without-tasks", "sweep", ["--search", "--lm-eval-limit", "5"],
     "--lm-eval-limit: only with --lm-eval-tasks"),
    ("sweep-lm-eval-limit-zero", "sweep",
     ["--search", "--lm-eval-tasks", "arc_easy", "--lm-eval-limit", "0"],
     "argument --lm-eval-limit: a whole number >= 1"),
    ("sweep-lm-eval-task-without-name", "sweep",
     ["--search", "--lm-eval-tasks", "[{{weight: 2}}]"], "argument --lm-eval-tasks"),
    ("sweep-finalists-without-checks", "sweep", ["--search", "--finalists", "3"],
     "--finalists: only with --answer-checks"),
    ("sweep-finalists-zero", "sweep", ["--finalists", "0"],
     "argument --finalists: a whole number >= 1"),
    ("sweep-profile-unknown", "sweep", ["--search", "--profiles", "flat,ramp"],
     "argument --profiles: distinct profiles of"),
    ("sweep-profiles-without-search", "sweep", ["--profiles", "lines"],
     "--profiles: only with --search"),
    ("sweep-fewshot-negative", "sweep",
     ["--search", "--lm-eval-tasks", "arc_easy", "--lm-eval-num-fewshot", "-1"],
     "argument --lm-eval-num-fewshot: a whole number >= 0"),
    ("sweep-lm-eval-batch-zero", "sweep",
     ["--search", "--lm-eval-tasks", "arc_easy", "--lm-eval-batch-size", "0"],
     "argument --lm-eval-batch-size: a whole number >= 1"),
    ("sweep-tokenizer-without-search", "sweep", ["--tokenizer", "{tmp}"],
     "--tokenizer: only with --search"),
    ("sweep-sft-of-another-base", "sweep", ["--sft", "{foreign}"],
     "--sft: .*not trained on the base"),
    ("sweep-preference-not-an-adapter", "sweep", ["--preference", "{tmp}"],
     "--preference: .*not a PEFT adapter folder"),
    ("sweep-adapters-inside-out", "sweep", ["--out", "{adapters}"],
     "--sft: .*is inside --out"),
    ("sweep-same-adapter-twice", "sweep", ["--preference", "{sft}"],
     "--preference: the same folder as --sft"),
    ("sweep-preference-data-missing", "sweep", ["--preference-data", "{sft_data}x"],
     "--preference-data: no such JSONL file"),
)  # fmt: skip


@pytest.mark.parametrize(("command", "extra", "message"), FLAG_MISTAKES)
def test_bad_flag_is_refused_naming_it(
    llama_world, adapters, tmp_path, capsys, command, extra, message
):
    from axolotl_paft.cli import eval as evaluate
    from axolotl_paft.cli import sweep

    bad_sft = tmp_path / "bad_sft.jsonl"
    bad_sft.write_text(json.dumps({"messages": ANSWERED[:1]}) + "\n")
    paths = {
        "base": llama_world.model_dir,
        "sft": adapters["sft"],
        "preference": adapters["preference"],
        "adapters": adapters["sft"].parent,
        "foreign": foreign_adapter(llama_world.model_dir),
        "sft_data": llama_world.sft_path,
        "preference_data": llama_world.preference_path,
        "bad_sft": bad_sft,
        "tmp": tmp_path,
    }
    argv = [arg.format(**paths) for arg in BASELINES[command] + extra]
    main = {"eval": evaluate.main, "sweep": sweep.main}[command]
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert re.search(message, error), error


# Traps of the user's own setup: warned about at validation, naming the key.
END_OF_TURN_TRAPS = [
    pytest.param({"chat_template": "gemma3"},
                 r"eot_tokens: unset, .*'<\|im_end\|>'.*chat_template 'gemma3' never",
                 id="template-never-writes-eos"),
    pytest.param({"chat_template": "gemma3", "eot_tokens": ["<|eot_id|>"]},
                 r"eot_tokens: \['<\|eot_id\|>'\] do not occur in chat_template",
                 id="eot-token-not-in-template"),
    pytest.param({"datasets": "train_on_eot-none"}, r"train_on_eot/train_on_eos: none",
                 id="train-on-eot-none"),
    pytest.param({"chat_template": "gemma3", "eot_tokens": ["<end_of_turn>"]}, None,
                 id="eot-tokens-set"),
    pytest.param({}, None, id="chatml-writes-eos"),
]  # fmt: skip


@pytest.mark.parametrize(("overrides", "warning"), END_OF_TURN_TRAPS)
def test_untrained_end_of_turn_is_warned_at_validation(
    llama_world, tmp_path, overrides, warning
):
    """Axolotl logs the trap once among hundreds of lines, at tokenization; the
    plugin names it, and the key to set, when the config is validated."""
    if overrides.get("datasets"):
        entry = {"path": str(llama_world.sft_path), "type": "chat_template"}
        overrides = {"datasets": [{**entry, "train_on_eot": "none"}]}
    config = parallel_config(llama_world, tmp_path / "out", **overrides)
    with log_messages("axolotl_paft.config.checks") as messages:
        cfg = validate(config)  # Axolotl's DictDefault: what post_train gets
    if warning is None:
        assert not messages and run_traps(cfg) == ()
    else:
        assert any(re.search(warning, m) for m in messages), messages
        (trap,) = run_traps(cfg)  # what the run's summary and report repeat
        assert re.search(warning, trap)
