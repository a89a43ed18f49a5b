"""The plugin in real `axolotl train` runs: QLoRA 4-bit, a second architecture,
gradient accumulation and checkpointing, outputs after the final save."""

from __future__ import annotations

import json

import pytest
import yaml

from axolotl_paft.lab.toy import axolotl_config, run_axolotl_train
from axolotl_paft.merging.configs import validate_config

pytestmark = pytest.mark.slow


def test_qlora_mistral_proximal_run(mistral_world, tmp_path):
    out = tmp_path / "qlora"
    cfg = run_axolotl_train(
        axolotl_config(
            mistral_world,
            out,
            adapter="qlora",
            load_in_4bit=True,
            paft_l1_mode="proximal",
            paft_l1_lambda=0.5,
            micro_batch_size=2,
            gradient_accumulation_steps=2,
            gradient_checkpointing=True,
            max_steps=40,
        )
    )
    assert cfg.load_in_4bit
    report = json.loads((out / "paft_report.json").read_text())
    overall = report["adapters"]["sft"]["overall"]
    assert overall["modules"] == 2 * 7  # every linear layer of both blocks
    assert overall["lora_exact_zeros"] > 0.05
    ties = yaml.safe_load((out / "mergekit" / "ties.yml").read_text())
    validate_config(ties)
    # QLoRA adapters merge into the full-precision base folder
    assert ties["base_model"] == str(mistral_world.model_dir.resolve())
    assert ties["models"][0]["model"] == f"{ties['base_model']}+{out.resolve()}"
    assert "slerp" in report["merge"]["skipped"]
