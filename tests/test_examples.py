"""The example configs pass the plugin's checks (hub datasets are not fetched)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from axolotl_paft.args import PAFTArgs

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
