"""Config keys: defaults, and every bad value fails naming its key before any load."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest
from conftest import validate

from axolotl_paft.config.args import DEFAULT_MERGE_METHODS, PAFTArgs
from axolotl_paft.lab.toy import axolotl_config, parallel_config, write_jsonl


def assert_refused(config: dict, key: str) -> None:
    """Axolotl's validation rejects `config` with a message naming `key`."""
    with pytest.raises(Exception, match=key):
        validate(config)


def test_defaults_survive_axolotl_validation(llama_world, tmp_path):
    cfg = validate(axolotl_config(llama_world, tmp_path / "out"))
    assert cfg.paft_l1_mode == "loss"
    assert cfg.paft_merge_methods == list(DEFAULT_MERGE_METHODS)
    assert cfg.paft_sparsity_threshold == 0.01
    assert cfg.paft_l1_lambda == 0  # off: docs/evidence.md
    assert PAFTArgs(paft_l1_mode="proximal").paft_l1_lambda == 0


def test_every_key_documented():
    for name, field in PAFTArgs.model_fields.items():
        assert name.startswith("paft_")
        assert field.description, name


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"paft_l1_lambda": -1e-4}, "paft_l1_lambda"),
        ({"paft_l1_mode": "l2"}, "paft_l1_mode"),
        ({"paft_merge_methods": ["ties", "tiez"]}, "paft_merge_methods"),
        ({"paft_merge_slerp_t": 1.5}, "paft_merge_slerp_t"),
        ({"paft_merge_slerp_t": -0.1}, "paft_merge_slerp_t"),
        ({"paft_merge_density": 0}, "paft_merge_density"),
        ({"paft_merge_density": 0.95}, "paft_merge_epsilon"),
        ({"paft_sparsity_threshold": 1.0}, "paft_sparsity_threshold"),
        ({"paft_merge_dtype": "float8"}, "paft_merge_dtype"),
        ({"paft_merge_run": "slerp", "paft_merge_methods": ["ties"]}, "paft_merge_run"),
        ({"paft_merge_sft_weight": float("nan")}, "paft_merge_sft_weight"),
        ({"paft_preference_adapter": "/no/such/adapter"}, "paft_preference_adapter"),
        ({"adapter": None}, "adapter"),
        ({"rl": "dpo"}, "rl"),
        ({"deepspeed": "zero2.json", "paft_l1_lambda": 1e-3}, "paft_l1_lambda"),
        # parallel-only keys without parallel mode would be silently ignored
        ({"paft_preference_l1_lambda": 0.5}, "paft_preference_l1_lambda"),
        ({"paft_preference_val_set_size": 0.1}, "paft_preference_val_set_size"),
        ({"paft_preference_beta": 0.5}, "paft_preference_beta"),
        ({"paft_merge_search": True}, "paft_merge_search"),
        ({"paft_merge_search_budget": 0}, "paft_merge_search_budget"),
        (
            {"paft_merge_search_answer_checks": {"skill": [{"startswith": "A"}]}},
            "paft_merge_search_answer_checks",
        ),
        (
            {
                "paft_merge_search_answer_checks": {
                    "skill": [{"regex": "("}],
                    "preference": [{"min_chars": 1}],
                }
            },
            "paft_merge_search_answer_checks: skill check 0: regex",
        ),
        ({"paft_merge_search_finalists": 0}, "paft_merge_search_finalists"),
        (
            {"paft_merge_search_profiles": ["lines", "ramp"]},
            "paft_merge_search_profiles",
        ),
        ({"paft_merge_search_answer_tokens": 0}, "paft_merge_search_answer_tokens"),
    ],
)
def test_bad_config_names_the_key(llama_world, tmp_path, overrides, key):
    assert_refused(axolotl_config(llama_world, tmp_path / "out", **overrides), key)


def test_plus_in_output_dir_is_refused(llama_world, tmp_path):
    config = axolotl_config(llama_world, tmp_path / "a+b")
    with pytest.raises(Exception, match="output_dir"):
        validate(config)
    validate({**config, "paft_merge_methods": []})


def test_not_registered_as_an_auto_loaded_plugin():
    """Axolotl >= 0.20 loads every `axolotl.plugins` entry point in every run; we
    stay opt-in through `plugins:` so that installing us changes no other run."""
    values = [ep.value for ep in entry_points(group="axolotl.plugins")]
    assert not any("axolotl_paft" in v for v in values)


def test_plain_axolotl_config_has_no_paft_keys(llama_world, tmp_path):
    config = axolotl_config(llama_world, tmp_path / "out")
    del config["plugins"]
    cfg = validate(config)
    assert not [k for k in cfg if str(k).startswith("paft_")]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"paft_preference_datasets": None}, "paft_preference_datasets"),
        ({"paft_preference_adapter_name": "sft"}, "paft_preference_adapter_name"),
        ({"paft_sft_adapter_name": "default"}, "paft_preference_adapter_name"),
        ({"adapter": None}, "adapter"),
        ({"lora_qkv_kernel": True}, "lora_qkv_kernel"),
        ({"deepspeed": "zero2.json"}, "deepspeed"),
        ({"fsdp_config": {"offload_params": True}}, "offload_params"),
        (
            {"fsdp_config": {"cpu_ram_efficient_loading": True}},
            "cpu_ram_efficient_loading",
        ),
        ({"paft_preference_loss": "kto"}, "paft_preference_loss"),
        ({"context_parallel_size": 2}, "context_parallel_size"),
        ({"tensor_parallel_size": 2}, "tensor_parallel_size"),
        ({"expert_parallel_size": 2}, "expert_parallel_size"),
        ({"lora_modules_to_save": ["lm_head"]}, "lora_modules_to_save"),
        ({"lr_scheduler": "one_cycle"}, "lr_scheduler"),
        ({"lr_scheduler": "rex", "cosine_min_lr_ratio": 0.1}, "cosine_min_lr_ratio"),
        ({"paft_preference_val_set_size": 0.1}, "paft_preference_val_set_size"),
        (
            {
                "val_set_size": 0.1,
                "paft_preference_val_set_size": 0.1,
                "paft_preference_test_datasets": [{"path": "p.jsonl"}],
            },
            "paft_preference_test_datasets",
        ),
        ({"merge_lora": True}, "--lora-model-dir"),
        ({"paft_merge_search": True, "val_set_size": 0}, "paft_merge_search_sft_data"),
        (
            {
                "paft_merge_search": True,
                "val_set_size": 0.1,
                "paft_preference_val_set_size": 0,
            },
            "paft_merge_search_preference_data",
        ),
        (
            {"paft_merge_search": True, "paft_merge_search_sft_data": "no.jsonl"},
            "paft_merge_search_sft_data",
        ),
        (
            {
                "paft_merge_search": True,
                "val_set_size": 0.1,
                "paft_merge_search_methods": ["nuslerp"],
            },
            "paft_merge_search_methods",
        ),
        # unset, the preference LoRA trained at the SFT rate (4-40x a DPO rate)
        (
            {"paft_preference_learning_rate": None},
            "paft_preference_learning_rate: parallel mode needs",
        ),
        # options that would cover the SFT half of each step only
        ({"torch_compile": True}, "torch_compile: the Trainer compiles"),
        ({"torch_compile": "auto"}, "torch_compile: the Trainer compiles"),
        (
            {"activation_offloading": True, "gradient_checkpointing": True},
            "activation_offloading: Axolotl offloads",
        ),
        ({"activation_offloading": "legacy"}, "activation_offloading: Axolotl"),
    ],
)
def test_bad_parallel_config_names_the_key(llama_world, tmp_path, overrides, message):
    assert_refused(parallel_config(llama_world, tmp_path / "out", **overrides), message)


def test_merge_search_holds_out_a_split_of_each_side_by_default(llama_world, tmp_path):
    """Without held-out files the search scores the run's own splits: a side
    with no split key gets SEARCH_HELD_OUT of its data; a split or a file the
    config names is kept."""
    from axolotl_paft.config.args import SEARCH_HELD_OUT

    out = tmp_path / "out"
    config = parallel_config(llama_world, out, paft_merge_search=True)
    del config["val_set_size"]  # the toy sets 0; a user's config may not set it
    cfg = validate(config)
    assert cfg.val_set_size == cfg.paft_preference_val_set_size == SEARCH_HELD_OUT
    cfg = validate(
        parallel_config(
            llama_world,
            out,
            paft_merge_search=True,
            val_set_size=0.2,
            paft_merge_search_preference_data=str(llama_world.preference_path),
        )
    )
    assert (cfg.val_set_size, cfg.paft_preference_val_set_size) == (0.2, 0)
    with_adapter = axolotl_config(
        llama_world,
        out,
        paft_merge_search=True,
        paft_preference_adapter=str(tmp_path),
        val_set_size=0.1,
    )
    assert_refused(with_adapter, "paft_merge_search_preference_data")


def test_parallel_mode_accepts_fsdp2(llama_world, tmp_path):
    """Axolotl's FSDP2 (`fsdp_config`) shards parallel mode (test_fsdp.py)."""
    fsdp = {"fsdp_version": 2, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP"}
    cfg = validate(parallel_config(llama_world, tmp_path / "out", fsdp_config=fsdp))
    assert cfg.fsdp_version == 2


def test_parallel_mode_turns_fused_lora_kernels_off(llama_world, tmp_path):
    config = parallel_config(llama_world, tmp_path / "out")
    for key in ("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel"):
        del config[key]
    cfg = validate(config)
    assert not any(cfg[k] for k in ("lora_mlp_kernel", "lora_qkv_kernel"))


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"question": "q", "chosen": "a"}], r"row 1 .*rejected"),
        ([], "empty"),
    ],
)
def test_bad_preference_rows_are_named(llama_world, tmp_path, rows, message):
    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    entries = [{"path": str(bad), "type": "chatml.intel"}]
    config = parallel_config(
        llama_world, tmp_path / "out", paft_preference_datasets=entries
    )
    with pytest.raises(Exception, match=message) as error:
        validate(config)
    assert "bad.jsonl" in str(error.value)


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [
        ("paft_merge_mehtods", "paft_merge_methods"),
        ("paft_l1_lamda", "paft_l1_lambda"),
        ("paft_preference_dataset", "paft_preference_datasets"),
    ],
)
def test_misspelt_key_is_refused_with_a_suggestion(
    llama_world, tmp_path, key, suggestion
):
    """pydantic would drop the key silently and keep the default in force."""
    config = parallel_config(llama_world, tmp_path / "out", **{key: "x"})
    with pytest.raises(Exception, match=rf"{key}.*did you mean '{suggestion}'"):
        validate(config)
    with pytest.raises(ValueError, match=key):
        PAFTArgs(**{key: "x"})


def test_keys_are_grouped_by_concern_and_stay_flat():
    from axolotl_paft.config.args import L1Args, MergeArgs, ParallelArgs, ReportArgs

    groups = (ParallelArgs, L1Args, ReportArgs, MergeArgs)
    assert PAFTArgs.__bases__ == groups
    owned = [k for g in groups for k in g.model_fields]
    assert sorted(owned) == sorted(PAFTArgs.model_fields)
    assert len(set(owned)) == len(owned)
