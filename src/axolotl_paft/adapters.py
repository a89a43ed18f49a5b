"""Two named LoRA adapters on one PEFT model, both trainable, one active at a time.

PEFT traps handled here: `set_adapter(x)` and leaving `disable_adapter()` turn
`requires_grad` off on every other adapter, so every switch re-asserts it for both;
PEFT initialises a new adapter from the global RNG, so adapters are created under a
forked RNG and the run's random stream is the one a single-adapter run would see.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer

from axolotl_paft.const import PEFT_DEFAULT_ADAPTER


def add_parallel_adapters(
    model: PeftModel, sft: str, preference: str, seed: int
) -> None:
    """Replace Axolotl's `default` LoRA by `sft` (same initial weights) and
    `preference` (same config, its own seeded initialisation)."""
    config = model.peft_config[PEFT_DEFAULT_ADAPTER]
    with torch.random.fork_rng(devices=[]):
        model.add_adapter(sft, config)
        torch.manual_seed(seed + 1)
        model.add_adapter(preference, config)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoraLayer) and PEFT_DEFAULT_ADAPTER in module.lora_A:
                for factors in (module.lora_A, module.lora_B):
                    factors[sft].weight.copy_(factors[PEFT_DEFAULT_ADAPTER].weight)
    model.set_adapter(sft)
    model.delete_adapter(PEFT_DEFAULT_ADAPTER)
    model.set_requires_grad([sft, preference], True)


def adapter_parameters(
    model: torch.nn.Module, adapter: str
) -> list[torch.nn.Parameter]:
    """The trainable tensors of `adapter` (LoRA A and B of every module)."""
    from axolotl_paft.sparsity import is_lora_parameter

    return [p for n, p in model.named_parameters() if is_lora_parameter(n, adapter)]


@contextmanager
def active_adapter(model: PeftModel, name: str, trained: list[str]) -> Iterator[None]:
    """Route forwards through `name`; keep every adapter in `trained` trainable."""
    model.set_adapter(name)
    model.set_requires_grad(trained, True)
    try:
        yield
    finally:
        model.set_requires_grad(trained, True)


@contextmanager
def base_only(model: PeftModel, trained: list[str]) -> Iterator[None]:
    """The pre-trained base (every adapter disabled), e.g. as DPO's reference."""
    try:
        with model.disable_adapter():
            yield
    finally:
        model.set_requires_grad(trained, True)
