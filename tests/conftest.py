"""Shared fixtures: an offline environment, a tiny local world, in-process training."""

from __future__ import annotations

import collections
import os
from pathlib import Path

os.environ.update(
    HF_HUB_OFFLINE="1",
    WANDB_MODE="disabled",
    DO_NOT_TRACK="1",
    AXOLOTL_DO_NOT_TRACK="1",
    TOKENIZERS_PARALLELISM="false",
)

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
