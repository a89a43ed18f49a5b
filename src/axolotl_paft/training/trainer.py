"""Parallel mode: one base, an SFT LoRA and a preference LoRA trained side by side.

Every SFT micro-batch of Axolotl's usual loop is followed by one preference
micro-batch. The SFT loss (plus the L1 callback's penalty) reaches only the SFT
adapter and the preference loss only the preference adapter: each backward runs
while its adapter is the active one (so gradient checkpointing recomputes the right
forward), each adapter has its own optimizer parameter groups (Axolotl's groups,
LoRA+ and `lr_groups` included, each rate scaled for the preference adapter) and
gradients are clipped per adapter. The preference step draws its dropout masks from
a random stream of its own, so the SFT side consumes exactly the random numbers of
a plain SFT run at any `lora_dropout`. Optimizer state is per parameter anyway, and
both adapters follow the same schedule shape, so a parallel run computes what two
independent runs would.

The SFT adapter is the active one outside the preference step: evaluation,
prediction and every eval callback see the SFT adapter, as in a plain SFT run. A
held-out preference split is evaluated with the preference adapter at each
evaluation and reported with TRL's names (`eval_<adapter>/rewards/accuracies`...).

Steps and epochs count SFT data, as in any Axolotl run; the preference data cycle,
reshuffled on every pass. Forwards run on the unwrapped PEFT model and gradients of
both adapters are averaged across processes once per optimizer step, which is what
DDP would do for a single adapter (DDP's own reducer cannot follow two backwards per
micro-batch through two different adapters).
"""

from __future__ import annotations

import logging
import math
import os
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from axolotl.core.trainers.base import AxolotlTrainer
from peft import set_peft_model_state_dict
from safetensors.torch import load_file

from axolotl_paft.training.adapters import AdapterRouter, adapter_parameters
from axolotl_paft.training.losses import (
    batch_preference_loss,
    loss_spec,
    reference_pair_logps,
)
from axolotl_paft.training.sharded import is_sharded, whole

LOG = logging.getLogger(f"axolotl.{__name__}")

# Seed offsets from the run's seed: the preference adapter's initialisation (+1,
# adapters.py) and the preference step's dropout stream (+2).
PREFERENCE_STREAM_SEED_OFFSET = 2
STATE_FILE = "paft_state_{rank}.pth"


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
    cache_reference: bool = True

    @property
    def adapters(self) -> list[str]:
        return [self.sft_adapter, self.preference_adapter]


def _rank_and_world() -> tuple[int, int]:
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class PreferenceStream:
    """Endless, deterministic preference micro-batches.

    Micro-batch `k` is a pure function of `k`: pass `k // per_pass` shuffles the
    data with seed `seed + pass`, and each process takes its slice of the global
    batch. The trainer keeps `k` in its checkpoints.
    """

    def __init__(self, dataset, collator, micro_batch_size: int, seed: int):
        self.rank, world = _rank_and_world()
        self.dataset, self.collator = dataset, collator
        self.micro_batch_size = micro_batch_size
        self.global_batch = micro_batch_size * world
        self.per_pass = max(len(dataset) // self.global_batch, 1)
        self.seed = seed
        self._order: tuple[int, torch.Tensor] | None = None

    def rows(self, index: int) -> list[int]:
        """The dataset rows of micro-batch `index` on this process."""
        pass_, position = divmod(index, self.per_pass)
        if self._order is None or self._order[0] != pass_:
            generator = torch.Generator().manual_seed(self.seed + pass_)
            order = torch.randperm(len(self.dataset), generator=generator)
            self._order = (pass_, order.repeat(-(-self.global_batch // len(order))))
        start = position * self.global_batch + self.rank * self.micro_batch_size
        return self._order[1][start : start + self.micro_batch_size].tolist()

    def collate(self, rows: list[int]) -> dict:
        return self.collator([self.dataset[i] for i in rows])


class ReferenceCache:
    """Reference log-probs (chosen, rejected) of each preference row, kept from
    its first use: a pure function of the frozen base and the row, so later
    passes over the data skip the reference forward. Not checkpointed: a resumed
    run recomputes what it lacks."""

    def __init__(self, size: int):
        self.size = size
        self.values: torch.Tensor | None = None  # [size, 2], NaN: not computed
        self.hits = 0

    def get(self, rows: list[int], device) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.values is None:
            return None
        values = self.values[rows]
        if torch.isnan(values).any():
            return None
        self.hits += 1
        values = values.to(device)
        return values[:, 0], values[:, 1]

    def put(self, rows: list[int], chosen: torch.Tensor, rejected: torch.Tensor):
        if self.values is None:
            self.values = torch.full((self.size, 2), float("nan"), dtype=chosen.dtype)
        self.values[rows] = torch.stack([chosen, rejected], dim=1).detach().cpu()


def _accelerator_devices() -> list[int]:
    return [torch.cuda.current_device()] if torch.cuda.is_available() else []


def _random_state() -> dict[str, torch.Tensor]:
    state = {"cpu": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_random_state(state: dict[str, torch.Tensor]) -> None:
    torch.random.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])


def seeded_random_state(seed: int) -> dict[str, torch.Tensor]:
    """The torch random state (CPU and current GPU) right after `manual_seed`."""
    with torch.random.fork_rng(devices=_accelerator_devices()):
        torch.manual_seed(seed)
        return _random_state()


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Average gradients across processes in one all-reduce of a fixed layout:
    every tensor in order (a missing gradient as zeros, so it averages as zero and
    no process waits on a differently sized buffer), plus per tensor the number of
    processes that had a gradient (none anywhere: it stays None).

    FSDP2 parameters (DTensors) are skipped: FSDP2 reduce-scatters (and averages)
    every gradient in the backward that produced it, each adapter's backward
    included, so their gradients are already the mean over processes, sharded.
    Averaging again would be a no-op at best (equal values) and, on a DTensor, a
    flattening of local shards that no longer have the parameter's shape. Every
    process holds the same parameters, so the skip is the same everywhere."""
    params = [p for p in params if not is_sharded(p)]
    _, world = _rank_and_world()
    if world == 1 or not params:
        return
    present = [p.grad is not None for p in params]
    flat = torch.cat(
        [
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
            for p in params
        ]
        + [torch.tensor(present, dtype=torch.float32, device=params[0].device)]
    )
    dist.all_reduce(flat)
    counts = flat[-len(params) :].tolist()
    offset = 0
    for p, count in zip(params, counts, strict=True):
        average = flat[offset : offset + p.numel()].view_as(p) / world
        offset += p.numel()
        if count == 0:
            continue
        if p.grad is None:
            p.grad = average.to(p.dtype)
        else:
            p.grad.copy_(average)


def _everywhere(flag: bool) -> bool:
    """True when `flag` holds on every process (one all-reduce)."""
    _, world = _rank_and_world()
    if world == 1:
        return flag
    device = "cuda" if torch.cuda.is_available() else "cpu"
    value = torch.tensor([0.0 if flag else 1.0], device=device)
    dist.all_reduce(value)
    return value.item() == 0


class PAFTParallelTrainer(AxolotlTrainer):
    """Axolotl's trainer, stepping an SFT and a preference adapter together."""

    paft: ParallelSettings
    preference: PreferenceStream

    def attach(
        self, settings: ParallelSettings, stream: PreferenceStream, held_out=None
    ) -> None:
        """Hand over the preference side (called from the plugin after creation):
        its settings, its training stream and its held-out rows (or None)."""
        self.paft, self.preference = settings, stream
        self.preference_held_out = held_out
        self._preference_index: int | None = None
        self._preference_random = seeded_random_state(
            settings.seed + PREFERENCE_STREAM_SEED_OFFSET
        )
        self._pending: dict[str, list[torch.Tensor]] = defaultdict(list)
        self.router = AdapterRouter(self.model)
        needs_reference = loss_spec(settings.loss).needs_reference
        self.reference_cache = (
            ReferenceCache(len(stream.dataset))
            if settings.cache_reference and needs_reference
            else None
        )

    # --- optimizer -------------------------------------------------------------

    def create_optimizer(self, model=None):
        """Axolotl's optimizer; each of its groups split in two, the preference
        adapter's copy at the group's rate scaled by preference LR / LR."""
        self.model.set_requires_grad(self.paft.adapters, True)  # also after resume
        self._collect_adapter_parameters()
        self._recollect_parameters = True  # after accelerator.prepare, see below
        optimizer = super().create_optimizer(model)
        scale = self.paft.learning_rate / self.args.learning_rate
        ours = {id(p) for p in self._adapter_parameters[self.paft.preference_adapter]}
        for group in list(optimizer.param_groups):
            preference = [p for p in group["params"] if id(p) in ours]
            if not preference:
                continue
            group["params"] = [p for p in group["params"] if id(p) not in ours]
            optimizer.add_param_group(
                {**group, "params": preference, "lr": group["lr"] * scale}
            )
        optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]
        return optimizer

    def _collect_adapter_parameters(self) -> None:
        """Each adapter's parameters as the model holds them now (clipping and the
        cross-process average act on these).

        Called again at the first training step after the optimizer was created:
        under FSDP2 the Trainer creates the optimizer *before*
        `accelerator.prepare`, whose `fully_shard` replaces every parameter by a
        new DTensor parameter and swaps them into the optimizer
        (`fsdp2_switch_optimizer_parameters`), but not into lists kept elsewhere:
        tensors collected before prepare never get a gradient again, so their
        clipping would silently do nothing."""
        self._adapter_parameters = {
            a: adapter_parameters(self.model, a) for a in self.paft.adapters
        }

    # --- training --------------------------------------------------------------

    def training_step(self, model, inputs, num_items_in_batch=None):
        peft = self.model
        if self._recollect_parameters:  # first step after the optimizer's creation
            self._collect_adapter_parameters()
            self._recollect_parameters = False
        sft_loss = super().training_step(peft, inputs, num_items_in_batch)
        if self._preference_index is None:  # first step, or a checkpoint without it
            accumulation = self.args.gradient_accumulation_steps
            self._preference_index = self.state.global_step * accumulation
        rows = self.preference.rows(self._preference_index)
        batch = self._prepare_inputs(self.preference.collate(rows))
        self._preference_index += 1
        with (
            self._preference_random_stream(),
            self.router.through(self.paft.preference_adapter),
        ):
            reference = self._cached_reference(peft, rows, batch)
            loss, metrics = self.preference_loss(peft, batch, reference)
            self.accelerator.backward(loss / self.current_gradient_accumulation_steps)
        if self.accelerator.sync_gradients:
            average_gradients(
                [p for ps in self._adapter_parameters.values() for p in ps]
            )
        for name, value in {"loss": loss, **metrics}.items():
            self._pending[name].append(value.detach())
        return sft_loss

    @contextmanager
    def _preference_random_stream(self) -> Iterator[None]:
        """Run the preference step on its own random stream (dropout masks), so
        the SFT step's stream is a plain SFT run's."""
        with torch.random.fork_rng(devices=_accelerator_devices()):
            _set_random_state(self._preference_random)
            yield
            self._preference_random = _random_state()

    def _cached_reference(self, peft, rows: list[int], batch: dict):
        """The rows' reference log-probs from the cache, computed and kept on a
        row's first use (None without a cache: the loss computes them).

        Under FSDP2 every forward is a collective (each layer all-gathers its
        shards), so all processes must agree on running the reference forward:
        rows a process has not seen yet (a data set not divisible by the global
        batch leaves different rows unseen after a reshuffle) make every process
        recompute. Same values either way: the reference is a pure function."""
        cache = self.reference_cache
        if cache is None:
            return None
        cached = cache.get(rows, batch["input_ids"].device)
        if self.is_fsdp_enabled and not _everywhere(cached is not None):
            cached = None
        if cached is None:
            cached = reference_pair_logps(
                peft, batch, lambda: self.router.through(None)
            )
            cache.put(rows, *cached)
        return cached

    def preference_loss(
        self, peft, batch: dict, reference=None
    ) -> tuple[torch.Tensor, dict]:
        """Loss and TRL-named metrics of one collated preference micro-batch; the
        reference (DPO, IPO), unless given, is the base with every adapter
        disabled."""
        return batch_preference_loss(
            peft,
            batch,
            self.paft.loss,
            self.paft.beta,
            reference_logps=reference,
            reference_context=lambda: self.router.through(None),
        )

    def _clip_grad_norm(self, model):
        """Clip each adapter's gradients on its own; report the SFT norm.

        Under FSDP2 the gradients are sharded DTensors: `clip_grad_norm_` then
        computes each adapter's norm over all shards (a DTensor reduced across the
        mesh, the same on every process) and scales every shard by it, which is
        the norm and clipping of one process holding the whole gradient. The norm
        comes back as a DTensor; its full value is what is logged."""
        self.accelerator.unscale_gradients()
        norms = {
            adapter: whole(
                torch.nn.utils.clip_grad_norm_(params, self.args.max_grad_norm)
            )
            for adapter, params in self._adapter_parameters.items()
        }
        self._pending["grad_norm"].append(norms[self.paft.preference_adapter])
        return norms[self.paft.sft_adapter]

    # --- logs ------------------------------------------------------------------

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Training logs gain `<sft>/loss`, `<sft>/grad_norm` (the values of
        `loss` and `grad_norm`: the SFT adapter's) and the preference adapter's
        metrics, averaged over the micro-batches since the last log and across
        processes."""
        if "loss" in logs:
            sft = self.paft.sft_adapter
            for name in ("loss", "grad_norm"):
                if name in logs:
                    logs[f"{sft}/{name}"] = logs[name]
            logs.update(self._reduced_pending_metrics())
        return super().log(logs, start_time)

    def _reduced_pending_metrics(self) -> dict[str, float]:
        names = sorted(self._pending)
        if not names:
            return {}
        means = torch.stack(
            [torch.stack(self._pending[n]).float().mean() for n in names]
        )
        self._pending.clear()
        _, world = _rank_and_world()
        if world > 1:
            dist.all_reduce(means)
            means /= world
        prefix = self.paft.preference_adapter
        return {f"{prefix}/{n}": v for n, v in zip(names, means.tolist(), strict=True)}

    # --- evaluation ------------------------------------------------------------

    def evaluate(self, *args, **kwargs):
        with self.router.through(self.paft.sft_adapter):
            return super().evaluate(*args, **kwargs)

    def predict(self, *args, **kwargs):
        with self.router.through(self.paft.sft_adapter):
            return super().predict(*args, **kwargs)

    def evaluation_loop(
        self,
        dataloader,
        description,
        prediction_loss_only=None,
        ignore_keys=None,
        metric_key_prefix="eval",
    ):
        """Axolotl's evaluation (SFT adapter), plus the preference adapter on the
        held-out preference rows, in the same metrics (so logs, early stopping and
        `metric_for_best_model` see both)."""
        output = super().evaluation_loop(
            dataloader,
            description,
            prediction_loss_only,
            ignore_keys,
            metric_key_prefix,
        )
        if self.preference_held_out is not None and metric_key_prefix == "eval":
            output.metrics.update(self.evaluate_preference(metric_key_prefix))
        return output

    @torch.no_grad()
    def evaluate_preference(self, prefix: str = "eval") -> dict[str, float]:
        """TRL-named preference metrics of the held-out rows: each process takes
        every world-th row; sums over pairs are reduced across processes, so the
        result is the mean over all held-out pairs.

        Every process runs the same number of batches: a process with fewer rows
        (or none) runs weight-0 batches of row 0. Under DDP that only keeps the
        reduction aligned; under FSDP2 every forward is a collective, and one
        process's extra forward would hang the others."""
        rows = self.preference_held_out
        rank, world = _rank_and_world()
        size = self.args.per_device_eval_batch_size
        mine = list(range(rank, len(rows), world))
        chunks = [(mine[i : i + size], 1.0) for i in range(0, len(mine), size)]
        most = math.ceil(math.ceil(len(rows) / world) / size)
        chunks += [([0], 0.0)] * (most - len(chunks))
        peft = self.model
        peft.eval()
        sums: dict[str, torch.Tensor] = defaultdict(float)
        pairs = 0.0
        with self.router.through(self.paft.preference_adapter):
            for indices, weight in chunks:
                chunk = [rows[i] for i in indices]
                batch = self._prepare_inputs(self.preference.collator(chunk))
                loss, metrics = self.preference_loss(peft, batch)
                for name, value in {"loss": loss, **metrics}.items():
                    sums[name] = sums[name] + value.float() * len(chunk) * weight
                pairs += len(chunk) * weight
        names = sorted(sums)
        device = sums[names[0]].device
        totals = torch.stack(
            [sums[n] for n in names] + [torch.tensor(pairs, device=device)]
        )
        if world > 1:
            dist.all_reduce(totals)
        means = (totals[:-1] / totals[-1]).tolist()
        adapter = self.paft.preference_adapter
        return {f"{prefix}_{adapter}/{n}": v for n, v in zip(names, means, strict=True)}

    def _load_best_model(self):
        """Both adapters from the best checkpoint's `<adapter>/` folders (the
        Trainer's own loader looks for a single adapter at the top level); under
        FSDP2 from its two sharded adapter states (see `_save_adapter_shards`)."""
        best = Path(self.state.best_model_checkpoint)
        LOG.info(
            "paft: loading both adapters of the best checkpoint %s (%s = %s)",
            best,
            self.args.metric_for_best_model,
            self.state.best_metric,
        )
        if self.is_fsdp_enabled:
            self._load_adapter_shards(str(best), self.paft.adapters)
            return
        for adapter in self.paft.adapters:
            weights = load_file(best / adapter / "adapter_model.safetensors")
            set_peft_model_state_dict(self.model, weights, adapter_name=adapter)

    # --- checkpoints -----------------------------------------------------------

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        """Under FSDP2 the Trainer saves the model's sharded state with
        `save_fsdp_model(adapter_only=True)`, which for a PEFT model keeps the
        *active* adapter only (`get_peft_model_state_dict(adapter_name=
        model.active_adapter)`): the SFT adapter, as `pytorch_model_fsdp_0`. The
        preference adapter's shards go next to it as `pytorch_model_fsdp_1`."""
        super()._save_optimizer_and_scheduler(output_dir)
        if self.is_fsdp_enabled:
            self._save_adapter_shards(output_dir)

    def _save_adapter_shards(self, output_dir: str) -> None:
        from accelerate.utils import save_fsdp_model

        adapter = self.paft.preference_adapter
        with self.router.through(adapter):
            save_fsdp_model(
                self.accelerator.state.fsdp_plugin,
                self.accelerator,
                self.model,
                output_dir,
                model_index=self.paft.adapters.index(adapter),
                adapter_only=True,
            )

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Under FSDP2 (loaded after `fully_shard`), the Trainer restores the
        active (SFT) adapter's shards; the preference adapter's come from
        `pytorch_model_fsdp_1` (see `_save_optimizer_and_scheduler`)."""
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if self.is_fsdp_enabled:
            self._load_adapter_shards(
                resume_from_checkpoint, [self.paft.preference_adapter]
            )

    def _load_adapter_shards(self, checkpoint: str, adapters: list[str]) -> None:
        from accelerate.utils import load_fsdp_model

        for adapter in adapters:
            with self.router.through(adapter):
                load_fsdp_model(
                    self.accelerator.state.fsdp_plugin,
                    self.accelerator,
                    self.model,
                    checkpoint,
                    model_index=self.paft.adapters.index(adapter),
                    adapter_only=True,
                )

    def _save_rng_state(self, output_dir: str) -> None:
        """The Trainer's random states, plus the preference stream's position and
        random state (one file per process, as the Trainer's)."""
        super()._save_rng_state(output_dir)
        rank, _ = _rank_and_world()
        torch.save(
            {"index": self._preference_index, "random": self._preference_random},
            os.path.join(output_dir, STATE_FILE.format(rank=rank)),
        )

    def _load_rng_state(self, checkpoint: str | None) -> None:
        super()._load_rng_state(checkpoint)
        if checkpoint is None:
            return
        rank, _ = _rank_and_world()
        path = Path(checkpoint) / STATE_FILE.format(rank=rank)
        if not path.is_file():
            LOG.warning(
                "paft: %s has no %s; the preference stream restarts at step x "
                "accumulation, with a fresh random stream",
                checkpoint,
                path.name,
            )
            return
        state = torch.load(path, weights_only=True)
        self._preference_index = state["index"]
        self._preference_random = state["random"]
