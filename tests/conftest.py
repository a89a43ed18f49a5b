"""Shared fixtures: an offline environment, a tiny local world, in-process training."""

from __future__ import annotations

import collections
import os
from pathlib import Path

from axolotl_paft.const import OFFLINE_ENV

os.environ.update(OFFLINE_ENV, TOKENIZERS_PARALLELISM="false")

import pytest  # noqa: E402

from axolotl_paft.toy import ToySetup, build_toy_setup  # noqa: E402


@pytest.fixture(autouse=True)
def reset_plugin_manager():
    """Axolotl's PluginManager is a process-wide singleton: empty it per test."""
    from axolotl.integrations.base import PluginManager

    manager = PluginManager.get_instance()
    manager._cfg = None
    manager.plugins = collections.OrderedDict()
    yield


@pytest.fixture(scope="session")
def llama_world(tmp_path_factory) -> ToySetup:
    return build_toy_setup(tmp_path_factory.mktemp("llama"), arch="llama")


@pytest.fixture(scope="session")
def mistral_world(tmp_path_factory) -> ToySetup:
    return build_toy_setup(tmp_path_factory.mktemp("mistral"), arch="mistral")


def validate(config: dict):
    """Axolotl's config loading and validation only (raises on a bad config)."""
    from axolotl.cli.config import load_cfg
    from axolotl.utils.dict import DictDefault

    return load_cfg(DictDefault(config))


def last_trainer():
    """The trainer of the last in-process `axolotl train` (the plugin's L1
    callback holds it)."""
    from axolotl.integrations.base import PluginManager

    from axolotl_paft.plugin import PAFTPlugin

    plugins = PluginManager.get_instance().plugins.values()
    (plugin,) = [p for p in plugins if isinstance(p, PAFTPlugin)]
    return plugin._callback.trainer


def make_adapter(base_dir: Path, out_dir: Path, seed: int, zero_fraction=0.0) -> Path:
    """A saved PEFT LoRA with non-zero A and B (LoRA's B starts at 0 otherwise),
    optionally with a fraction of A and B entries set exactly to 0."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj", "down_proj"],
        init_lora_weights=False,
    )
    model = get_peft_model(model, config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name and zero_fraction:
                p.mul_(torch.rand_like(p) >= zero_fraction)
    model.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def adapters(llama_world, tmp_path_factory) -> dict[str, Path]:
    """Two adapters on the llama base: a half-sparse 'sft' and a dense 'preference'."""
    root = tmp_path_factory.mktemp("adapters")
    return {
        "sft": make_adapter(llama_world.model_dir, root / "sft", 1, zero_fraction=0.5),
        "preference": make_adapter(llama_world.model_dir, root / "pref", 2),
    }
