"""Parallel mode under FSDP2 (`fsdp_config`, Axolotl's only FSDP): what a sharded
tensor is and how to get its whole value (`is_sharded`, `whole`), and the final
save.

Training needs nothing FSDP-specific beyond what `trainer.py`, `l1.py` and
`sparsity.py` say about DTensors (FSDP2 averages each backward's gradients itself,
clipping and the L1 step act on the shards, metrics gather each module's factors).
The final save does: for a LoRA run under FSDP2, Axolotl's `save_trained_model`
writes the adapter through its own `save_fsdp2_lora_adapter`, which gathers every
`lora_` tensor and then keeps PEFT's `default` adapter only
(`get_peft_model_state_dict(model)` with no adapter name): with the two named
adapters of parallel mode it stops with `KeyError: 'default'` after training.
`save_both_adapters` takes its place for parallel runs: the same gather, then
PEFT's own `save_pretrained`, which writes every adapter to `output_dir/<name>/`
exactly as a run without FSDP does.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from axolotl_paft.const import PEFT_DEFAULT_ADAPTER

LOG = logging.getLogger(f"axolotl.{__name__}")

# What activation checkpointing inserts into parameter names (PEFT's state-dict
# keys have no such level).
_CHECKPOINT_WRAPPER = "._checkpoint_wrapped_module"
_AXOLOTL_SAVE = "save_fsdp2_lora_adapter"


def is_sharded(tensor: torch.Tensor) -> bool:
    """True for an FSDP2 (`fully_shard`) parameter or gradient: a DTensor."""
    return isinstance(tensor, DTensor)


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor's global value (`full_tensor`, a collective: every process calls
    it), else the tensor itself."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor


def gathered_adapter_state_dict(
    model: torch.nn.Module,
) -> tuple[dict[str, torch.Tensor], int]:
    """Every adapter tensor (`lora_` in its name) as a whole tensor on the CPU,
    and how many of them were sharded. A collective under FSDP2: every process
    iterates the same parameters."""
    state, sharded = {}, 0
    for name, param in model.named_parameters():
        if "lora_" not in name:
            continue
        sharded += is_sharded(param)
        state[name.replace(_CHECKPOINT_WRAPPER, "")] = whole(param.detach()).cpu()
    return state, sharded


def save_both_adapters(model, output_dir: str) -> bool:
    """Save every adapter of `model` to `output_dir/<adapter>/` from gathered
    tensors (rank 0 writes). Returns True, as Axolotl's save it replaces does
    when it has handled the save."""
    state, sharded = gathered_adapter_state_dict(model)
    main = not dist.is_initialized() or dist.get_rank() == 0
    model.save_pretrained(output_dir, state_dict=state, is_main_process=main)
    LOG.info(
        "paft: saved adapters %s to %s (%d adapter tensors, %d of them gathered "
        "from FSDP2 shards)",
        sorted(model.peft_config),
        output_dir,
        len(state),
        sharded,
    )
    if dist.is_initialized():
        dist.barrier()
    return True


def use_for_final_save() -> None:
    """Make Axolotl's final save of an FSDP2 LoRA run write both adapters. It
    imports `save_fsdp2_lora_adapter` from its module at call time, so replacing
    the module's attribute is enough; a model with PEFT's `default` adapter (any
    run that is not parallel mode) still goes to Axolotl's own function."""
    from axolotl.integrations.expert_parallel import shard

    axolotl_save = getattr(shard, _AXOLOTL_SAVE)
    if getattr(axolotl_save, "paft_wrapped", False):
        return

    def save(model, output_dir: str) -> bool:
        if PEFT_DEFAULT_ADAPTER in getattr(model, "peft_config", ()):
            return axolotl_save(model, output_dir)
        return save_both_adapters(model, output_dir)

    save.paft_wrapped = True
    setattr(shard, _AXOLOTL_SAVE, save)
