"""Parallel mode: one base, an SFT LoRA and a preference LoRA trained side by side.

Every SFT micro-batch of Axolotl's usual loop is followed by one preference
micro-batch. The SFT loss (plus the L1 callback's penalty) reaches only the SFT
adapter and the preference loss only the preference adapter: each backward runs
while its adapter is the active one (so gradient checkpointing recomputes the right
forward), each adapter has its own optimizer parameter groups and learning rate,
and gradients are clipped per adapter. Optimizer state is per parameter anyway, and
both adapters follow the same schedule shape, so a parallel run computes what two
independent runs would.

Steps and epochs count SFT data, as in any Axolotl run; the preference data cycle,
reshuffled on every pass. Forwards run on the unwrapped PEFT model and gradients of
both adapters are averaged across processes once per optimizer step, which is what
DDP would do for a single adapter (DDP's own reducer cannot follow two backwards per
micro-batch through two different adapters).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from axolotl.core.trainers.base import AxolotlTrainer

from axolotl_paft.adapters import active_adapter, adapter_parameters, base_only
from axolotl_paft.losses import batch_preference_loss


@dataclass(frozen=True)
class ParallelSettings:
    """What the parallel trainer needs beyond Axolotl's own training arguments."""

    sft_adapter: str
    preference_adapter: str
    loss: str
    beta: float
    learning_rate: float
    micro_batch_size: int
    seed: int

    @property
    def adapters(self) -> list[str]:
        return [self.sft_adapter, self.preference_adapter]


class PreferenceStream:
    """Endless, deterministic preference micro-batches.

    Micro-batch `k` is a pure function of `k`: pass `k // per_pass` shuffles the
    data with seed `seed + pass`, and each process takes its slice of the global
    batch. Resuming at step `s` therefore just restarts the count at `s * GA`.
    """

    def __init__(self, dataset, collator, micro_batch_size: int, seed: int):
        world = dist.get_world_size() if dist.is_initialized() else 1
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.dataset, self.collator = dataset, collator
        self.micro_batch_size = micro_batch_size
        self.global_batch = micro_batch_size * world
        self.per_pass = max(len(dataset) // self.global_batch, 1)
        self.seed = seed
        self._order: tuple[int, torch.Tensor] | None = None

    def batch(self, index: int) -> dict:
        pass_, position = divmod(index, self.per_pass)
        if self._order is None or self._order[0] != pass_:
            generator = torch.Generator().manual_seed(self.seed + pass_)
            order = torch.randperm(len(self.dataset), generator=generator)
            self._order = (pass_, order.repeat(-(-self.global_batch // len(order))))
        start = position * self.global_batch + self.rank * self.micro_batch_size
        rows = self._order[1][start : start + self.micro_batch_size].tolist()
        return self.collator([self.dataset[i] for i in rows])


class PAFTParallelTrainer(AxolotlTrainer):
    """Axolotl's trainer, stepping an SFT and a preference adapter together."""

    paft: ParallelSettings
    preference: PreferenceStream

    def attach(self, settings: ParallelSettings, stream: PreferenceStream) -> None:
        """Hand over the preference side (called from the plugin after creation)."""
        self.paft, self.preference = settings, stream
        self._preference_index: int | None = None

    def create_optimizer(self, model=None):
        """Axolotl's optimizer, the preference adapter in groups of its own LR."""
        self.model.set_requires_grad(self.paft.adapters, True)  # also after resume
        self._adapter_parameters = {
            a: adapter_parameters(self.model, a) for a in self.paft.adapters
        }
        optimizer = super().create_optimizer(model)
        ours = {id(p) for p in self._adapter_parameters[self.paft.preference_adapter]}
        for group in list(optimizer.param_groups):
            preference = [p for p in group["params"] if id(p) in ours]
            if not preference:
                continue
            group["params"] = [p for p in group["params"] if id(p) not in ours]
            optimizer.add_param_group(
                {**group, "params": preference, "lr": self.paft.learning_rate}
            )
        optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]
        return optimizer

    def training_step(self, model, inputs, num_items_in_batch=None):
        peft = self.model
        with active_adapter(peft, self.paft.sft_adapter, self.paft.adapters):
            sft_loss = super().training_step(peft, inputs, num_items_in_batch)
        if self._preference_index is None:  # first step, or first after a resume
            accumulation = self.args.gradient_accumulation_steps
            self._preference_index = self.state.global_step * accumulation
        batch = self._prepare_inputs(self.preference.batch(self._preference_index))
        self._preference_index += 1
        with active_adapter(peft, self.paft.preference_adapter, self.paft.adapters):
            loss, metrics = self.preference_loss(peft, batch)
            self.accelerator.backward(loss / self.current_gradient_accumulation_steps)
        if self.accelerator.sync_gradients:
            self._average_gradients_across_processes()
        prefix = self.paft.preference_adapter
        metrics = {"loss": loss, **metrics}
        self.store_metrics({f"{prefix}/{k}": float(v) for k, v in metrics.items()})
        self.store_metrics({f"{self.paft.sft_adapter}/loss": float(sft_loss)})
        return sft_loss

    def preference_loss(self, peft, batch: dict) -> tuple[torch.Tensor, dict]:
        """Loss and TRL-named metrics of one collated preference micro-batch; the
        reference (DPO, IPO) is the base with every adapter disabled."""
        return batch_preference_loss(
            peft,
            batch,
            self.paft.loss,
            self.paft.beta,
            reference_context=lambda: base_only(peft, self.paft.adapters),
        )

    def _average_gradients_across_processes(self) -> None:
        if not dist.is_initialized() or dist.get_world_size() == 1:
            return
        grads = [
            p.grad
            for params in self._adapter_parameters.values()
            for p in params
            if p.grad is not None
        ]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def _clip_grad_norm(self, model):
        """Clip each adapter's gradients on its own; report the SFT norm."""
        self.accelerator.unscale_gradients()
        norms = {
            adapter: torch.nn.utils.clip_grad_norm_(params, self.args.max_grad_norm)
            for adapter, params in self._adapter_parameters.items()
        }
        prefix = self.paft.preference_adapter
        self.store_metrics({f"{prefix}/grad_norm": float(norms[prefix])})
        return norms[self.paft.sft_adapter]
