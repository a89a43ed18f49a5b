"""The adapter router against PEFT's own switches: same forwards, no side effects."""

from __future__ import annotations

import torch


def two_adapter_model(world, **lora):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from axolotl_paft.training.adapters import add_parallel_adapters

    base = AutoModelForCausalLM.from_pretrained(world.model_dir)
    config = LoraConfig(
        r=4, target_modules="all-linear", init_lora_weights=False, **lora
    )
    model = get_peft_model(base, config)
    add_parallel_adapters(model, "sft", "dpo", seed=0)
    return model


def test_router_routes_as_peft_does_and_touches_nothing_else(llama_world):
    """Through "dpo", through None (the base) and back: the logits PEFT's
    `set_adapter` / `disable_adapter` give, every adapter still trainable, and
    the routing found on entry restored (DoRA: magnitudes are per adapter too)."""
    from axolotl_paft.training.adapters import AdapterRouter, adapter_parameters

    model = two_adapter_model(llama_world, use_dora=True)
    model.eval()
    ids = torch.arange(3, 19).view(2, 8)

    def logits():
        with torch.no_grad():
            return model(input_ids=ids).logits

    expected = {}
    for name in ("dpo", "sft"):
        model.set_adapter(name)
        expected[name] = logits()
    with model.disable_adapter():
        expected[None] = logits()
    model.set_requires_grad(["sft", "dpo"], True)  # PEFT's switches turned it off
    assert model.active_adapter == "sft"

    router = AdapterRouter(model)
    with router.through("dpo"):
        assert model.active_adapter == "dpo"
        assert torch.equal(logits(), expected["dpo"])
        with router.through(None):
            assert torch.equal(logits(), expected[None])
        assert torch.equal(logits(), expected["dpo"])
    assert model.active_adapter == "sft"
    assert torch.equal(logits(), expected["sft"])
    assert not torch.equal(expected["sft"], expected["dpo"])
    assert not torch.equal(expected["sft"], expected[None])
    for name in ("sft", "dpo"):
        assert all(p.requires_grad for p in adapter_parameters(model, name))
