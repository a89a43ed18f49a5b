"""Two named LoRA adapters on one PEFT model, both trainable, one active at a time.

PEFT traps handled here: `set_adapter(x)` and leaving `disable_adapter()` turn
`requires_grad` off on every other adapter and walk the whole module tree, so
training switches adapters with `AdapterRouter`, which does neither;
PEFT initialises a new adapter from the global RNG, so adapters are created under a
forked RNG and the run's random stream is the one a single-adapter run would see;
`add_adapter` keeps a reference to the config it is given, so each adapter gets a
deep copy (PEFT writes per-adapter state such as `target_modules` into it).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import AuxiliaryTrainingWrapper

from axolotl_paft.const import PEFT_DEFAULT_ADAPTER

# The LoRA factors, whose product is the low-rank delta: what L1 penalises.
FACTOR_LAYERS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B")


def add_parallel_adapters(
    model: PeftModel, sft: str, preference: str, seed: int
) -> None:
    """Replace Axolotl's `default` LoRA by `sft` (same initial weights) and
    `preference` (same config, its own seeded initialisation)."""
    config = model.peft_config[PEFT_DEFAULT_ADAPTER]
    with torch.random.fork_rng(devices=[]):
        model.add_adapter(sft, copy.deepcopy(config))
        torch.manual_seed(seed + 1)
        model.add_adapter(preference, copy.deepcopy(config))
    with torch.no_grad():
        default = adapter_tensors(model, PEFT_DEFAULT_ADAPTER)
        for name, tensor in adapter_tensors(model, sft).items():
            tensor.copy_(default[name])
    model.set_adapter(sft)
    model.delete_adapter(PEFT_DEFAULT_ADAPTER)
    model.set_requires_grad([sft, preference], True)


def adapter_tensors(model: torch.nn.Module, adapter: str) -> dict[str, torch.Tensor]:
    """Every tensor `adapter` owns, by a name without the adapter's: LoRA A and B
    (with `lora_bias`), embedding LoRA, DoRA magnitudes, `modules_to_save` copies.

    The set is the one PEFT's own `set_requires_grad(adapter)` walks (each tuner
    layer's and auxiliary wrapper's `adapter_layer_names`), so clipping, the
    cross-process average, the optimizer groups and the checkpoints all see the
    same tensors PEFT trains.
    """
    owned: dict[str, torch.Tensor] = {}
    for module_name, module in model.named_modules():
        if not isinstance(module, (BaseTunerLayer, AuxiliaryTrainingWrapper)):
            continue
        for layer_name in module.adapter_layer_names:
            container = module
            for part in layer_name.split("."):
                container = getattr(container, part, None)
            if container is None or adapter not in container:
                continue
            item = container[adapter]
            prefix = f"{module_name}.{layer_name}"
            if isinstance(item, torch.nn.Parameter):
                owned[prefix] = item
            else:
                for name, tensor in item.named_parameters():
                    owned[f"{prefix}.{name}"] = tensor
    return owned


def adapter_parameters(
    model: torch.nn.Module, adapter: str
) -> list[torch.nn.Parameter]:
    """The trainable tensors of `adapter` (see `adapter_tensors`), each once."""
    unique = {id(p): p for p in adapter_tensors(model, adapter).values()}
    return list(unique.values())


def factor_parameters(model: torch.nn.Module, adapter: str) -> list[torch.nn.Parameter]:
    """The LoRA factor weights of `adapter` (A and B, embedding A and B): what the
    L1 penalty acts on. Not DoRA magnitudes (shrinking them scales the base
    weights' columns towards 0, not the delta), not `lora_bias` (no factor of the
    low-rank product) and not `modules_to_save` copies (full weights)."""
    factors = []
    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        for layer_name in FACTOR_LAYERS:
            container = getattr(module, layer_name)
            if adapter in container:
                item = container[adapter]
                factors.append(item if isinstance(item, torch.Tensor) else item.weight)
    return factors


class AdapterRouter:
    """Routes forwards through one adapter, or through the base alone, by setting
    the two flags a tuner layer's forward reads (`_active_adapter`,
    `_disable_adapters`) on the layers found once.

    PEFT's own switches walk the whole module tree each time: `set_adapter` once,
    leaving `disable_adapter()` twice (it also builds the model status), and both
    turn `requires_grad` off on every other adapter, so each switch needed a
    `set_requires_grad` walk after it: about nine walks per parallel-mode
    micro-batch, which on a 32-layer model cost more than the adapters' own
    arithmetic. The router never touches `requires_grad` (every adapter stays
    trainable) and restores the routing it found on exit. The `active_adapter`
    attributes of the PEFT model and its tuner are kept in step, so code that
    reads them (saving, `active_peft_config`) sees the adapter in use.
    """

    def __init__(self, model: PeftModel):
        self.model = model
        self.layers = [
            m
            for m in model.modules()
            if isinstance(m, (BaseTunerLayer, AuxiliaryTrainingWrapper))
        ]

    def _route(self, layer_active, disabled: bool, model_active: str) -> None:
        for layer in self.layers:
            layer._active_adapter = layer_active
            layer._disable_adapters = disabled
        self.model.active_adapter = self.model.base_model.active_adapter = model_active

    @contextmanager
    def through(self, adapter: str | None) -> Iterator[None]:
        """Forwards go through `adapter` only (None: no adapter, the pre-trained
        base, e.g. as DPO's reference); the previous routing is restored on exit."""
        first = self.layers[0]
        previous = (
            first._active_adapter,
            first._disable_adapters,
            self.model.active_adapter,
        )
        if adapter is None:
            self._route(previous[0], True, previous[2])
        else:
            self._route([adapter], False, adapter)
        try:
            yield
        finally:
            self._route(*previous)
