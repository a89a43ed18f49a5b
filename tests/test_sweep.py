"""The merge sweep: methods x densities through mergekit's API, then evaluated."""

from __future__ import annotations

import json

import yaml

from axolotl_paft.cli.sweep import main
from axolotl_paft.merging.configs import validate_config


def test_sweep_merges_and_evaluates_every_config(llama_world, adapters, tmp_path):
    out = tmp_path / "sweep"
    main(
        [
            "--base", str(llama_world.model_dir),
            "--sft", str(adapters["sft"]),
            "--preference", str(adapters["preference"]),
            "--methods", "ties,task_arithmetic",
            "--densities", "0.5,0.9",
            "--sft-data", str(llama_world.sft_path),
            "--preference-data", str(llama_world.preference_path),
            "--limit", "2",
            "--out", str(out),
        ]
    )  # fmt: skip
    names = ["ties-d0.5", "ties-d0.9", "task_arithmetic"]
    for name in names:
        validate_config(yaml.safe_load((out / "configs" / f"{name}.yml").read_text()))
        assert (out / "merged" / name / "model.safetensors").is_file()
    results = json.loads((out / "eval.json").read_text())["results"]
    assert list(results) == ["base", "sft", "preference", *names]
    # a denser TIES keeps more of the deltas: its merge differs from the sparser one
    assert results["ties-d0.5"]["sft_loss"] != results["ties-d0.9"]["sft_loss"]
