"""The example configs pass the plugin's checks (hub datasets are not fetched)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from axolotl_paft.config.args import PAFTArgs

EXAMPLES = sorted((Path(__file__).parents[1] / "examples").glob("*.yml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_passes_the_plugin_checks(path):
    config = yaml.safe_load(path.read_text())
    assert config["plugins"] == ["axolotl_paft.PAFTPlugin"]
    args = PAFTArgs.model_validate(config)
    assert args.paft_parallel
    assert config["adapter"] in ("lora", "qlora")


def test_the_three_examples_exist():
    assert {p.stem for p in EXAMPLES} >= {"paft_mistral", "paft_llama3", "paft_orpo"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_follows_the_plugins_own_advice(path):
    """L1 only with the merge search (an L1 adapter's default merges mostly keep
    none of the skill: paft_l1_lambda's description), and a preference rate of
    a DPO LoRA recipe, well below the SFT rate (docs/parallel-mode.md)."""
    config = yaml.safe_load(path.read_text())
    if config.get("paft_l1_lambda", 0) > 0:
        assert config.get("paft_merge_search"), "L1 on without paft_merge_search"
    assert config["paft_preference_learning_rate"] <= config["learning_rate"] / 4


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_trains_its_templates_end_of_turn_token(path):
    """Axolotl trains `eot_tokens`, by default the base's `eos_token`: a template
    that never writes `eos_token` (llama3 writes `<|eot_id|>`, the Llama-3
    base's eos is `<|end_of_text|>`) needs its own terminator listed, or no
    model of the run learns to stop (checks.untrained_end_of_turn warns)."""
    from axolotl.utils.chat_templates import get_chat_template

    config = yaml.safe_load(path.read_text())
    template = get_chat_template(config["chat_template"])
    if "eos_token" in template:
        return
    listed = config.get("eot_tokens") or []
    assert listed, (
        f"{path.name}: chat_template {config['chat_template']} needs eot_tokens"
    )
    assert all(token in template for token in listed)
