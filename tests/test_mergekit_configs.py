"""The reference configs in mergekit_configs/ pass mergekit's schema and our checks,
and say what our emitter would say for the same setting."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from axolotl_paft.config.args import PAFTArgs
from axolotl_paft.merging.configs import MergeDeltas, build_config, validate_config

CONFIGS = sorted((Path(__file__).parents[1] / "mergekit_configs").glob("*.yml"))
BASE = "mistralai/Mistral-7B-v0.1"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_reference_config_is_valid_and_matches_the_emitter(path):
    config = yaml.safe_load(path.read_text())
    validate_config(config)
    deltas = MergeDeltas(
        BASE, "./outputs/paft-mistral/sft", "./outputs/paft-mistral/dpo"
    )
    emitted = build_config(config["merge_method"], deltas, PAFTArgs().merge_settings())
    expected_shared = {**emitted.get("parameters", {}), **config.get("parameters", {})}
    assert config.get("parameters", {}) == expected_shared
    assert config["models"] == emitted["models"]
    assert config.get("base_model") == emitted.get("base_model")


def test_there_are_reference_configs():
    assert {p.stem for p in CONFIGS} >= {"paft_mistral7b_ties"}
