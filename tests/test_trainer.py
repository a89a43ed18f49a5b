"""Parallel mode in real `axolotl train` runs: equivalence with independent runs,
independence of the two adapters, QLoRA, checkpoints and resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import last_trainer
from safetensors.torch import load_file

from axolotl_paft.lab.toy import axolotl_config, parallel_config, run_axolotl_train

pytestmark = pytest.mark.slow

STEPS = {"max_steps": 12, "lora_dropout": 0.0, "paft_merge_methods": []}


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "adapter_model.safetensors")


def max_gap(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def parallel_run(llama_world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("parallel") / "out"
    run_axolotl_train(parallel_config(llama_world, out, **STEPS))
    return out


def test_outputs_are_two_peft_adapter_folders(llama_world, parallel_run):
    from axolotl_paft.merging.scoring import load_model

    for name in ("sft", "dpo"):
        model = load_model(llama_world.model_dir, parallel_run / name)
        assert list(model.peft_config) == ["default"]
    report = json.loads((parallel_run / "paft_report.json").read_text())
    assert set(report["adapters"]) == {"sft", "preference"}
    assert "interference" in report


def test_sft_adapter_equals_a_standalone_sft_run(llama_world, parallel_run, tmp_path):
    alone = tmp_path / "alone"
    run_axolotl_train(axolotl_config(llama_world, alone, **STEPS))
    gap = max_gap(weights(parallel_run / "sft"), weights(alone))
    print(f"parallel SFT adapter vs standalone SFT run: max |diff| = {gap:.3g}")
    assert gap < 1e-6


def test_adapters_do_not_influence_each_other(llama_world, parallel_run, tmp_path):
    """Changing only the preference side leaves the SFT adapter bit-identical, and
    changing only the SFT side leaves the preference adapter bit-identical."""
    pref_changed = tmp_path / "pref_changed"
    run_axolotl_train(
        parallel_config(
            llama_world, pref_changed, paft_preference_learning_rate=1e-2, **STEPS
        )
    )
    sft_changed = tmp_path / "sft_changed"
    run_axolotl_train(
        parallel_config(llama_world, sft_changed, learning_rate=1e-2, **STEPS)
        | {"paft_preference_learning_rate": 3e-3}
    )
    sft_gap = max_gap(weights(parallel_run / "sft"), weights(pref_changed / "sft"))
    dpo_gap = max_gap(weights(parallel_run / "dpo"), weights(sft_changed / "dpo"))
    print(f"SFT adapter moved by preference LR change: {sft_gap:.3g}")
    print(f"DPO adapter moved by SFT LR change: {dpo_gap:.3g}")
    assert sft_gap < 1e-6 and dpo_gap < 1e-6
    assert max_gap(weights(parallel_run / "dpo"), weights(pref_changed / "dpo")) > 1e-4


def resume_gaps(world, root: Path, config: dict, checkpoint: str) -> dict:
    """Train `config` uninterrupted (in root/full), then again from a copy of its
    `checkpoint` (in root/resumed): each adapter's max |diff| between the two."""
    full, resumed = root / "full", root / "resumed"
    run_axolotl_train(parallel_config(world, full, **config))
    resumed.mkdir()
    shutil.copytree(full / checkpoint, resumed / checkpoint)
    run_axolotl_train(
        parallel_config(
            world,
            resumed,
            resume_from_checkpoint=str(resumed / checkpoint),
            **config,
        )
    )
    gaps = {n: max_gap(weights(full / n), weights(resumed / n)) for n in ("sft", "dpo")}
    print(f"resumed from {checkpoint} vs uninterrupted, max |diff|: {gaps}")
    return gaps


def test_resume_reproduces_the_uninterrupted_run(llama_world, tmp_path):
    checkpoints = {"save_strategy": "steps", "save_steps": 6, **STEPS}
    gaps = resume_gaps(llama_world, tmp_path, checkpoints, "checkpoint-6")
    checkpoint = tmp_path / "full" / "checkpoint-6"
    assert (checkpoint / "dpo" / "adapter_model.safetensors").exists()
    assert (checkpoint / "optimizer.pt").exists()
    assert max(gaps.values()) < 1e-5


def test_qlora_parallel_run_learns_both_skills(mistral_world, tmp_path):
    from transformers import AutoTokenizer

    from axolotl_paft.lab.toy import preference_rows, sft_rows
    from axolotl_paft.merging.scoring import (
        assistant_loss,
        load_model,
        preference_margins,
    )

    out = tmp_path / "qlora"
    run_axolotl_train(
        parallel_config(
            mistral_world,
            out,
            adapter="qlora",
            load_in_4bit=True,
            gradient_checkpointing=True,
            gradient_accumulation_steps=1,
            micro_batch_size=2,
            max_steps=30,
            paft_merge_methods=["ties"],
            paft_merge_run="ties",
        )
    )
    tokenizer = AutoTokenizer.from_pretrained(mistral_world.model_dir)
    rows = sft_rows(32)
    base = load_model(mistral_world.model_dir)
    base_loss = assistant_loss(base, tokenizer, rows)
    sft_loss = assistant_loss(
        load_model(mistral_world.model_dir, out / "sft"), tokenizer, rows
    )
    print(f"QLoRA parallel: SFT answer loss {base_loss:.3f} -> {sft_loss:.3f}")
    assert sft_loss < base_loss - 1.0
    margins = preference_margins(
        load_model(mistral_world.model_dir, out / "dpo"),
        base,
        tokenizer,
        preference_rows(32),
    )
    accuracy = float((margins > 0).float().mean())
    print(f"QLoRA parallel: preference accuracy on training pairs {accuracy:.2f}")
    assert accuracy > 0.8
    assert (out / "mergekit" / "ties.yml").exists()
    merged = load_model(
        out / "paft_merged" / "ties"
    )  # mergekit's API ran after training
    assert assistant_loss(merged, tokenizer, rows) < assistant_loss(
        base, tokenizer, rows
    )


def test_optional_l1_on_the_preference_adapter(llama_world, parallel_run, tmp_path):
    out = tmp_path / "pref_l1"
    run_axolotl_train(
        parallel_config(
            llama_world,
            out,
            paft_l1_mode="proximal",
            paft_preference_l1_lambda=0.5,
            **{**STEPS, "paft_merge_methods": ["ties"]},
        )
    )
    zeros = json.loads((out / "paft_report.json").read_text())["adapters"]
    plain = json.loads((parallel_run / "paft_report.json").read_text())["adapters"]
    assert zeros["preference"]["overall"]["lora_exact_zeros"] > 0.05
    assert plain["preference"]["overall"]["lora_exact_zeros"] == 0


def test_reference_cache_changes_nothing_and_skips_later_passes(llama_world, tmp_path):
    """64 pairs at micro-batch 4 are 16 micro-batches a pass; 40 steps make 2.5
    passes. Reusing each row's reference log-probs from its first use trains the
    preference adapter exactly as recomputing them every time does, and skips the
    reference forward on every micro-batch after the first pass."""
    config = {**STEPS, "max_steps": 40}
    run_axolotl_train(
        parallel_config(
            llama_world,
            tmp_path / "recomputed",
            paft_preference_cache_reference=False,
            **config,
        )
    )
    run_axolotl_train(parallel_config(llama_world, tmp_path / "cached", **config))
    cache = last_trainer().reference_cache
    cached, recomputed = (tmp_path / n / "dpo" for n in ("cached", "recomputed"))
    gap = max_gap(weights(cached), weights(recomputed))
    print(f"reference cache: {cache.hits} of 40 micro-batches served, gap {gap:.3g}")
    assert cache.hits == 40 - 16
    assert gap == 0
