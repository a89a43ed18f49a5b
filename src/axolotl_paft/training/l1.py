"""L1 regularisation of one LoRA adapter, and its metrics in the trainer's logs.

Both modes act on the LoRA factors A and B of one adapter (not on the dense delta
`B @ A`, which would cost a d_out x d_in matrix per module per step):

- `loss`: the gradient of `lambda * (sum|A| + sum|B|)`, i.e. `lambda * sign(w)`, is
  added to each factor's gradient in `on_pre_optimizer_step`. That runs once per
  optimizer step whatever the gradient accumulation, after the loss gradient was
  all-reduced (DDP) and clipped, so the penalty is never scaled down by clipping.
  Under Adam the weights then hover around 0 at the scale of the learning rate:
  many near-zeros, few exact zeros.
- `proximal`: after each optimizer step every factor entry is soft-thresholded,
  `w <- sign(w) * max(|w| - lr * lambda, 0)`: the proximal step of L1, applied
  decoupled from the optimizer like AdamW's weight decay. An Adam step moves a
  weight by about `lr`, so `lambda` is the fraction of a step taken back each time:
  entries whose updates do not push consistently away from 0 end exactly at 0.
  A step the optimizer skipped (fp16 loss-scale overflow) is not shrunk either.

Only the LoRA factors are penalised (`adapters.factor_parameters` says why not
DoRA magnitudes, `lora_bias` or `modules_to_save` copies).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable

import torch
from transformers import Trainer, TrainerCallback

from axolotl_paft.training.adapters import factor_parameters
from axolotl_paft.training.sparsity import (
    SUMMARY_MEASURES,
    LoraFactors,
    live_lora_factors,
    measure,
    summarize,
)


@torch.no_grad()
def add_l1_gradient_(param: torch.Tensor, l1_lambda: float) -> None:
    """`loss` mode: add the gradient of `l1_lambda * |param|_1` to its gradient."""
    param.grad.add_(torch.sign(param).to(param.grad.dtype), alpha=l1_lambda)


@torch.no_grad()
def soft_threshold_(param: torch.Tensor, shrink: float) -> None:
    """`proximal` mode: `param <- sign(param) * max(|param| - shrink, 0)`."""
    param.copy_(torch.sign(param) * (param.abs() - shrink).clamp_(min=0))


class L1SparsityCallback(TrainerCallback):
    """Applies the L1 step to `adapter` and, if `log_metrics`, logs `<prefix>/...`
    metrics (the sparsity measures and `l1_penalty`) each log step.

    The metrics are computed on the main process only: the adapters are the same
    on every process (DDP) and only the main process writes the logs, so the dense
    `B @ A` of every module would be computed world-size times for one value.
    Under FSDP2 the other processes still walk the modules, taking part in each
    module's gather of its sharded factors."""

    def __init__(
        self,
        trainer: Trainer,
        adapter: str,
        l1_lambda: float,
        mode: str,
        threshold: float,
        prefix: str,
        log_metrics: bool,
    ):
        self.trainer = trainer
        self.adapter = adapter
        self.l1_lambda = l1_lambda
        self.mode = mode
        self.threshold = threshold
        self.prefix = prefix
        self.log_metrics = log_metrics
        self._params: list[torch.nn.Parameter] = []
        self.started_at: float | None = None
        self.ended_at: float | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.started_at = time.time()
        self._params = factor_parameters(model, self.adapter)
        if not self._params:
            raise RuntimeError(
                f"paft: no LoRA weights of adapter {self.adapter!r} found in the model"
            )

    def on_train_end(self, args, state, control, **kwargs):
        self.ended_at = time.time()

    @torch.no_grad()
    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.mode != "loss" or self.l1_lambda == 0:
            return
        for p in self._params:
            if p.grad is not None:
                add_l1_gradient_(p, self.l1_lambda)

    @torch.no_grad()
    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if self.mode != "proximal" or self.l1_lambda == 0:
            return
        if self.trainer.accelerator.optimizer_step_was_skipped:
            return
        ours = {id(p) for p in self._params}
        for group in optimizer.param_groups:
            shrink = group["lr"] * self.l1_lambda
            for p in group["params"]:
                if id(p) in ours:
                    soft_threshold_(p, shrink)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if not (
            self.log_metrics
            and control.should_log
            and hasattr(self.trainer, "store_metrics")
        ):
            return
        factors = live_lora_factors(model, self.adapter)
        if state.is_world_process_zero:
            self.trainer.store_metrics(self.metrics(factors))
        else:  # under FSDP2 each module's factors are gathered: take part
            collections.deque(factors, maxlen=0)

    def metrics(self, factors: Iterable[LoraFactors]) -> dict[str, float]:
        """Current L1 norm and sparsity of the adapter, as `<prefix>/...` keys."""
        summary = summarize(measure(factors, self.threshold))
        metrics = {f"{self.prefix}/{key}": summary[key] for key in SUMMARY_MEASURES}
        metrics[f"{self.prefix}/l1_penalty"] = self.l1_lambda * summary["l1_norm"]
        return metrics
