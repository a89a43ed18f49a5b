"""mergekit configs: layout per method, mergekit's validation, and real merges."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from axolotl_paft.config.args import (
    DEFAULT_MERGE_METHODS,
    SUPPORTED_MERGE_METHODS,
    PAFTArgs,
)
from axolotl_paft.const import OFFLINE_ENV
from axolotl_paft.merging.configs import (
    METHOD_LAYOUTS,
    MergeDeltas,
    MergeSettings,
    build_config,
    model_reference,
    run_merge_config,
    validate_config,
    write_merge_configs,
)
from axolotl_paft.merging.scoring import load_model

ALL = MergeSettings(methods=SUPPORTED_MERGE_METHODS)


@pytest.fixture(scope="module")
def deltas(llama_world, adapters) -> MergeDeltas:
    return MergeDeltas(
        str(llama_world.model_dir), adapters["sft"], adapters["preference"]
    )


def test_every_method_validates_with_two_deltas(deltas, tmp_path):
    emitted = write_merge_configs(tmp_path, deltas, ALL)
    assert not emitted.skipped
    assert set(emitted.written) == set(SUPPORTED_MERGE_METHODS)
    for path in emitted.written.values():
        text = path.read_text()
        assert "mergekit-yaml" in text.splitlines()[1]
        validate_config(yaml.safe_load(text))


def test_one_delta_skips_two_endpoint_methods_with_a_reason(deltas, tmp_path):
    sft_only = MergeDeltas(deltas.base_model, deltas.sft_adapter)
    emitted = write_merge_configs(tmp_path, sft_only, ALL)
    assert set(emitted.skipped) == {"linear", "slerp", "nuslerp"}
    assert all("paft_preference_adapter" in why for why in emitted.skipped.values())
    assert not (tmp_path / "slerp.yml").exists()
    assert "ties" in emitted.written


def test_slerp_endpoints_are_sft_and_preference(deltas):
    config = build_config("slerp", deltas, MergeSettings(slerp_t=0.3))
    assert config["base_model"] == model_reference(
        deltas.base_model, deltas.sft_adapter
    )
    assert config["models"] == [
        {"model": model_reference(deltas.base_model, deltas.preference_adapter)}
    ]
    assert config["parameters"] == {"t": 0.3}


def test_linear_has_no_base_and_ties_keeps_method_params_on_top(deltas):
    assert "base_model" not in build_config("linear", deltas, ALL)
    ties = build_config("ties", deltas, MergeSettings(normalize=False))
    assert ties["base_model"] == deltas.base_model
    assert ties["parameters"] == {"lambda": 1.0, "normalize": False}
    assert ties["models"][0]["parameters"] == {"weight": 1.0, "density": 0.5}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c["models"][0]["parameters"].update(desnity=0.3), "desnity"),
        (lambda c: c["models"][0]["parameters"].update(t=0.3), "'t'"),
        (lambda c: c["parameters"].update(weight=1.0), "weight"),
        (lambda c: c.pop("base_model"), "base_model"),
    ],
)
def test_mergekit_traps_are_caught(deltas, mutate, message):
    config = build_config("ties", deltas, ALL)
    mutate(config)
    with pytest.raises(ValueError, match=message):
        validate_config(config)


def mergekit_yaml(config_path: Path, out: Path, cache: Path) -> None:
    exe = Path(sys.executable).with_name("mergekit-yaml")
    subprocess.run(
        [str(exe), str(config_path), str(out), "--lora-merge-cache", str(cache)],
        check=True,
        env={**os.environ, **OFFLINE_ENV},
        capture_output=True,
    )


def run_printed_command(config_path: Path, merged_dir: Path) -> Path:
    """Run the `mergekit-yaml` line printed in a config's header, as a user copies
    it (`MERGED_DIR` replaced by `merged_dir` where the line leaves it open)."""
    line = next(x for x in config_path.read_text().splitlines() if "mergekit-yaml" in x)
    words = shlex.split(line.lstrip("# ").replace("MERGED_DIR", str(merged_dir)))
    words[0] = str(Path(sys.executable).with_name(words[0]))
    subprocess.run(words, check=True, env={**os.environ, **OFFLINE_ENV})
    return Path(words[2])


def assert_same_weights(first: Path, second: Path) -> None:
    a, b = (load_file(Path(p) / "model.safetensors") for p in (first, second))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("method", ["dare_ties", "della"])
def test_a_random_merge_rebuilds_bit_for_bit_from_its_printed_command(
    deltas, method, tmp_path
):
    """DARE and DELLA drop delta entries at random. The merge the plugin builds
    (`paft_merge_run`, the search) and the command printed in the config's header
    must give the same model, or the merge a user rebuilds is not the one whose
    numbers were reported: the header passes mergekit's seed and names the LoRA
    cache the plugin filled (mergekit seeds before merging the LoRAs, and PEFT's
    loading draws from the same generator)."""
    settings = MergeSettings(methods=(method,), dtype="float32")
    emitted = write_merge_configs(tmp_path / "mergekit", deltas, settings)
    config = emitted.written[method]
    ours = run_merge_config(config, tmp_path / "ours", emitted.cache_dir)
    rebuilt = run_printed_command(config, tmp_path / "unused")
    assert rebuilt == tmp_path / "paft_merged" / method
    assert_same_weights(ours, rebuilt)


@pytest.fixture(scope="module")
def merged(llama_world, deltas, tmp_path_factory) -> dict[str, Path]:
    """ties, dare_ties and task_arithmetic really run through `mergekit-yaml`."""
    root = tmp_path_factory.mktemp("merged")
    settings = MergeSettings(
        methods=("ties", "dare_ties", "task_arithmetic"),
        dtype="float32",
        sft_weight=0.7,
        preference_weight=0.4,
    )
    emitted = write_merge_configs(root / "mergekit", deltas, settings)
    out = {}
    for method, path in emitted.written.items():
        mergekit_yaml(path, root / method, emitted.cache_dir)
        out[method] = root / method
    return out


def test_task_arithmetic_is_base_plus_weighted_deltas(llama_world, deltas, merged):
    base = load_file(llama_world.model_dir / "model.safetensors")
    result = load_file(merged["task_arithmetic"] / "model.safetensors")
    expected = {k: v.clone() for k, v in base.items()}
    for adapter, weight in (
        (deltas.sft_adapter, 0.7),
        (deltas.preference_adapter, 0.4),
    ):
        model = load_model(llama_world.model_dir, adapter).merge_and_unload()
        for k, v in model.state_dict().items():
            expected[k] += weight * (v - base[k])
    changed = 0
    for k, v in expected.items():
        torch.testing.assert_close(result[k], v, atol=1e-5, rtol=1e-5)
        changed += not torch.equal(base[k], v)
    assert changed == 6  # q_proj, v_proj, down_proj in two layers


def test_merged_models_load_and_generate(llama_world, merged):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(llama_world.model_dir)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 plus 3?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    for method, path in merged.items():
        model = load_model(path)
        ids = model.generate(**prompt, max_new_tokens=5, do_sample=False)
        assert ids.shape[1] > prompt["input_ids"].shape[1], method
        base = load_file(llama_world.model_dir / "model.safetensors")
        weights = load_file(path / "model.safetensors")
        key = "model.layers.0.self_attn.q_proj.weight"
        assert not torch.equal(base[key], weights[key]), method


def test_default_methods_cover_the_issue_list():
    assert set(DEFAULT_MERGE_METHODS) >= {
        "ties", "dare_ties", "dare_linear", "task_arithmetic", "linear", "slerp",
        "breadcrumbs_ties", "della",
    }  # fmt: skip


def test_every_run_gets_a_fresh_lora_cache(deltas, tmp_path):
    """mergekit keys its LoRA cache by folder name: a reused cache would merge a
    stale adapter, so each emission names a cache folder of its own."""
    first = write_merge_configs(tmp_path, deltas, ALL).cache_dir
    second = write_merge_configs(tmp_path, deltas, ALL).cache_dir
    assert first != second
    assert first.parent == second.parent == tmp_path / "lora-cache"
    assert str(second) in (tmp_path / "ties.yml").read_text()


def test_methods_come_from_one_table_with_their_papers():
    """args.py's allowed values and defaults are read from merge.py's table."""
    assert tuple(METHOD_LAYOUTS) == SUPPORTED_MERGE_METHODS
    assert set(DEFAULT_MERGE_METHODS) <= set(METHOD_LAYOUTS)
    assert all(
        layout.paper.startswith("https://") for layout in METHOD_LAYOUTS.values()
    )


def test_merge_settings_carry_every_merge_key():
    """Each `paft_merge_*` key (but `paft_merge_run`) reaches the settings, and the
    settings' defaults are the keys' defaults."""
    assert PAFTArgs().merge_settings() == MergeSettings()
    keys = {
        "paft_merge_methods": ["ties"],
        "paft_merge_sft_weight": 0.7,
        "paft_merge_preference_weight": 0.4,
        "paft_merge_density": 0.3,
        "paft_merge_epsilon": 0.05,
        "paft_merge_gamma": 0.02,
        "paft_merge_lambda": 0.9,
        "paft_merge_normalize": False,
        "paft_merge_slerp_t": 0.2,
        "paft_merge_dtype": "float32",
    }
    changed = PAFTArgs(**keys).merge_settings()
    defaults = MergeSettings()
    same = [f for f in vars(defaults) if getattr(changed, f) == getattr(defaults, f)]
    assert not same


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"density": 0}, "paft_merge_density"),
        ({"methods": ("della",), "density": 0.95}, "paft_merge_epsilon"),
        ({"methods": ("tiez",)}, "tiez"),
    ],
)
def test_merge_settings_refuse_what_the_keys_refuse(settings, message):
    with pytest.raises(ValueError, match=message):
        MergeSettings(**settings)


def test_the_plugins_merges_stay_out_of_merge_loras_folder(deltas, tmp_path):
    """`axolotl merge-lora` writes its model into output_dir/merged/ itself; the
    plugin's merges (the printed commands, paft_merge_run, the export) go to
    output_dir/paft_merged/<method>, so neither lands in the other's folder."""
    from axolotl_paft.merging.configs import MERGED_DIR, merged_dir

    emitted = write_merge_configs(tmp_path / "mergekit", deltas, ALL)
    for method, config in emitted.written.items():
        command = config.read_text().splitlines()[1]
        assert f" {merged_dir(tmp_path, method)} " in command
        assert f"{tmp_path / 'merged'}/" not in command
    assert MERGED_DIR != "merged"
