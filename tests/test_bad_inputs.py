"""Every value a user gives is checked before anything loads, and the refusal names
the key or flag (and what it allows): one row per mistake. A new key or flag
joins these tables."""

from __future__ import annotations

import pytest
from conftest import validate

from axolotl_paft.lab.toy import axolotl_config, parallel_config


def _rows(*rows):
    """pytest params from `(id, config kind, overrides(world, tmp), message)`."""
    return [pytest.param(*row[1:], id=row[0]) for row in rows]


def _const(**overrides):
    return lambda world, tmp: overrides


CONFIGS = {"sft": axolotl_config, "parallel": parallel_config}

# numbers written as YAML reads them: `1e-4` (no dot) is the string "1e-4"
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
    ("yaml-string-preference-rate-negative", "parallel",
     _const(paft_preference_learning_rate="-5e-6"),
     r"paft_preference_learning_rate: .*greater than 0"),
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
