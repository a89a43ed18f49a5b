"""Config keys: defaults, and every bad value fails naming its key before any load."""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

import pytest
from conftest import validate

from axolotl_paft.args import DEFAULT_MERGE_METHODS, PAFTArgs
from axolotl_paft.toy import axolotl_config, parallel_config, write_jsonl


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
    assert PAFTArgs(paft_l1_mode="proximal").resolved_l1_lambda() == 0


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
        ({"paft_merge_search": True}, "paft_merge_search"),
        ({"paft_merge_search_budget": 0}, "paft_merge_search_budget"),
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
        ({"fsdp_config": {"fsdp_version": 2}}, "fsdp_config"),
        ({"paft_preference_loss": "kto"}, "paft_preference_loss"),
        ({"paft_merge_search": True}, "paft_merge_search_sft_data"),
        (
            {"paft_merge_search": True, "paft_merge_search_methods": ["nuslerp"]},
            "paft_merge_search_methods",
        ),
    ],
)
def test_bad_parallel_config_names_the_key(llama_world, tmp_path, overrides, message):
    assert_refused(parallel_config(llama_world, tmp_path / "out", **overrides), message)


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


def test_another_runs_adapters_are_never_overwritten(llama_world, tmp_path):
    out = tmp_path / "out"
    (out / "dpo").mkdir(parents=True)
    (out / "dpo" / "adapter_model.safetensors").write_bytes(b"earlier run")
    with pytest.raises(Exception, match="output_dir"):
        validate(parallel_config(llama_world, out))
    validate(parallel_config(llama_world, out, resume_from_checkpoint=str(out)))


def test_readme_documents_every_key():
    root = Path(__file__).parents[1]
    docs = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    text = "\n".join(p.read_text() for p in docs)
    missing = [k for k in PAFTArgs.model_fields if f"| `{k}` |" not in text]
    assert not missing
