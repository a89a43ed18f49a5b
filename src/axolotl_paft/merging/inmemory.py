"""Merge-search candidates built in memory, on one resident copy of the base.

`mergekit-yaml` writes every candidate as a whole model (fp32: about 29 GB at
7B), which the search then loads again and deletes: a day and 700 GB of writes
for the default budget at 7B, with the accelerator idle. A PAFT candidate only
differs from the base in the modules the two LoRAs target, so here the base
stays loaded once (on whatever device and in whatever dtype the caller put it)
and each candidate's weights are built module by module with mergekit's own
merge methods through its in-memory API (`mergekit.merge_methods.merge_tensors`),
written into the resident model for scoring, and put back after it. Nothing is
written per candidate; the winner is still written by `mergekit-yaml` from
`best.yml` (`search.search`).

What makes a candidate here the same merge `mergekit-yaml` builds from the same
config (tests/test_inmemory.py checks every searched method against it, max abs
difference per tensor <= 1e-6 in fp32):

- The inputs. mergekit reads `base+adapter` as the base with the LoRA merged in
  by PEFT (`merge_and_unload`, cached in `--lora-merge-cache`): per targeted
  module W + delta, delta = PEFT's own `get_delta_weight` (B A times the
  adapter's scaling), added the way PEFT's merge adds it and rounded to the
  dtype mergekit's cache stores. Untouched tensors are the base in every input.
- The parameters and the order. Each candidate's config goes through mergekit's
  own planner (`MergePlanner`, `Executor`'s schedule): the per-tensor parameters
  it resolves and the order it merges the tensors in. The order matters for
  DARE and DELLA: their masks come from torch's global generator, seeded once
  per merge (`configs.MERGE_SEED`) and drawn tensor after tensor, untouched ones
  included. On CPU the untouched tensors of those methods are not merged (their
  result is the base): their draws are made instead (`draw_untouched`), as many
  32-bit draws of the generator, in the same order, as mergekit's mask of each
  of their inputs takes, so every mask of a targeted tensor is drawn as
  `mergekit-yaml` draws it; on an accelerator the masks come from its own
  generator, so a DARE or DELLA candidate is another draw from the same
  distribution (docs/performance.md).
- What is left out. For untouched tensors the deterministic methods give the
  base back: ties, breadcrumbs-TIES, DARE/DELLA and task arithmetic add a zero
  delta exactly; linear's normalized average and SLERP of a tensor with itself
  give it back up to float rounding (a few ulp), which is the one difference
  here to mergekit's output.

Only plain LoRA on linear layers is built here (no DoRA, LoRA bias,
`modules_to_save` or embedding LoRA); `InMemoryUnsupported` says why for other
adapters and the search then builds its candidates with `mergekit-yaml` on disk.

Memory beyond the resident model: the candidate's targeted weights (the base
copies stay as they are and are swapped back), about the size of the model's
linear layers (13.5 GB at 7B in bf16), plus one module's merge scratch in fp32.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

from axolotl_paft.merging.configs import MERGE_SEED

ROLES = ("sft", "preference")
# Elements of the scratch buffer the draws of an untouched tensor go through
# (16 MB in fp32): a 262144 x 640 embedding is drawn in 40 pieces, never whole.
DRAW_CHUNK = 1 << 22


class InMemoryUnsupported(ValueError):
    """An adapter this module does not build in memory (the reason names it)."""


def _check_adapter(path: Path) -> None:
    config = json.loads((Path(path) / "adapter_config.json").read_text())
    reasons = [
        f"{key}={config.get(key)!r}"
        for key, plain in (
            ("peft_type", "LORA"),
            ("use_dora", False),
            ("lora_bias", False),
            ("modules_to_save", None),
        )
        if (config.get(key) or None) != (plain or None)
    ]
    if reasons:
        raise InMemoryUnsupported(
            f"{path}: in-memory merges take plain LoRA only ({', '.join(reasons)})"
        )


def merge_schedule(config: dict, cache: Path) -> list:
    """mergekit's `ExecuteMergeMethodTask`s for `config`, in the order its
    executor runs them (what `mergekit-yaml` runs, minus loading and saving).
    Fills the LoRA merge cache `cache` on first use, as `mergekit-yaml` does."""
    from mergekit.architecture import get_architecture_info
    from mergekit.config import MergeConfiguration
    from mergekit.graph import Executor
    from mergekit.io.tasks import LoaderCache
    from mergekit.merge import MergeOptions, _model_out_config
    from mergekit.merge_methods.task_adapter import ExecuteMergeMethodTask
    from mergekit.plan import MergePlanner

    merge_config = MergeConfiguration.model_validate(config)
    options = MergeOptions(lora_merge_cache=str(cache), random_seed=MERGE_SEED)
    arch_info = get_architecture_info(merge_config, options)
    loaders = LoaderCache()
    loaders.setup(options=options)
    for model in merge_config.referenced_models():
        loaders.get(model)
    out_config = _model_out_config(merge_config, arch_info)
    targets = MergePlanner(
        merge_config, arch_info, options=options, out_model_config=out_config
    ).plan_to_disk(out_path=str(Path(cache) / "unused"))  # planned, never run
    return [
        handle.task()
        for handle in Executor(targets).schedule.tasks
        if isinstance(handle.task(), ExecuteMergeMethodTask)
    ]


def draw_untouched(task, method, shape, chunk: int = DRAW_CHUNK) -> int:
    """Advance torch's CPU generator as mergekit's merge of the untouched tensor
    of `task` (shape `shape`, all inputs the base) advances it, without merging:
    returns the number of elements drawn.

    DARE (`sparsify.bernoulli`) and DELLA (`sparsify.della_magprune`) sparsify
    each non-base input's delta (zero here) in the input order, and each draws
    its mask with one `torch.bernoulli` over the tensor: on CPU a serial kernel
    that takes one 32-bit output of the MT19937 generator per element, in fp32
    or bf16 (the work dtype there), whatever the probabilities. `uniform_` on an
    fp32 buffer takes the same, one per element, so drawing the same count in
    pieces of `chunk` leaves the generator where mergekit's masks leave it
    (tests/test_inmemory.py holds the states equal). No draw when mergekit
    draws none: a density of 1 or more, DELLA's density of 0 or less; DELLA's
    check of density +/- epsilon raises as mergekit's does."""
    import math

    from mergekit.sparsify import SparsificationMethod

    sparsification = method.sparsification_method
    numel = math.prod(shape)
    draws = 0
    for ref in task.model_order:
        if ref == task.base_model:
            continue
        parameters = task.input_parameters[ref]
        density = parameters["density"]
        if density >= 1:
            continue
        if sparsification == SparsificationMethod.della_magprune:
            if density <= 0:
                continue
            epsilon = parameters["epsilon"]
            if density + epsilon >= 1 or density - epsilon <= 0:
                raise ValueError(
                    "Epsilon must be chosen such that density +/- epsilon is in (0, 1)"
                )
        elif sparsification != SparsificationMethod.random:
            raise ValueError(f"{sparsification} draws no mask")
        draws += numel
    if draws:
        scratch = torch.empty(min(chunk, draws), dtype=torch.float32)
        for start in range(0, draws, chunk):
            scratch[: min(chunk, draws - start)].uniform_()
    return draws


class InMemoryMerges:
    """Candidates of one search on `model` (the resident base); `sft` and
    `preference`: the LoRA adapter folders its configs name; `cache`: the
    search's LoRA merge cache (shared with its `mergekit-yaml` runs)."""

    def __init__(self, model, sft: Path, preference: Path, cache: Path):
        from peft import PeftModel
        from peft.tuners.lora import Linear

        for path in (sft, preference):
            _check_adapter(path)
        self.model, self.cache = model, Path(cache)
        self.adapters = {
            "sft": Path(sft).resolve(),
            "preference": Path(preference).resolve(),
        }
        with torch.random.fork_rng(devices=[]):  # LoRA init draws before loading
            peft = PeftModel.from_pretrained(model, str(sft), adapter_name="sft")
            peft.load_adapter(str(preference), adapter_name="preference")
        prefix = "base_model.model."
        # weight name -> its LoRA layer, kept for its factors and scaling after
        # `unload` puts the plain layers back (no LoRA forward ever runs)
        self.layers = {}
        for name, module in peft.named_modules():
            if not hasattr(module, "lora_A") or not module.lora_A:
                continue
            if type(module) is not Linear:
                peft.unload()
                raise InMemoryUnsupported(
                    f"{name}: in-memory merges take LoRA on nn.Linear only "
                    f"({type(module).__name__})"
                )
            self.layers[name.removeprefix(prefix) + ".weight"] = module
        peft.unload()
        self.weights = {n: p for n, p in model.named_parameters()}
        self.base_weights = {n: self.weights[n].data for n in self.layers}
        self.store_dtype = None  # the dtype mergekit's LoRA merge cache holds

    def _endpoints(self, name: str) -> dict[str, torch.Tensor]:
        """The targeted weight `name` as mergekit reads `base+adapter`: PEFT's
        merge (W += get_delta_weight), in the dtype of mergekit's cache."""
        layer, weight = self.layers[name], self.base_weights[name]
        ends = {}
        for role in ROLES:
            end = weight.clone()
            if role in layer.lora_A:
                end += layer.get_delta_weight(role)
            ends[role] = end.to(self.store_dtype).to(weight.dtype)
        return ends

    def _cache_dtype(self, task) -> torch.dtype:
        """The dtype mergekit's cache holds the LoRA-merged models in (the
        checkpoint's: PEFT merges in the dtype the base loads in)."""
        from mergekit.io.tasks import LoaderCache

        ref = next(m for m in task.model_order if self._role(m) != "base")
        return LoaderCache().get(ref).get_tensor(task.output_weight.name).dtype

    def _inputs(self, task) -> list[torch.Tensor]:
        """The tensors of `task`'s (targeted) merge, in mergekit's input order."""
        name = task.output_weight.name
        ends = self._endpoints(name)
        return [
            self.base_weights[name] if role == "base" else ends[role]
            for role in map(self._role, task.model_order)
        ]

    def _role(self, ref) -> str:
        """ "base", "sft" or "preference" for one of mergekit's input models."""
        if ref.lora is None:
            return "base"
        for role, adapter in self.adapters.items():
            if Path(ref.lora.path).resolve() == adapter:
                return role
        raise ValueError(f"mergekit input {ref} is neither the base nor an adapter")

    @staticmethod
    def _parameters(task, method) -> dict:
        """`task`'s parameters as mergekit resolved them for its tensor, keyed
        by input as `merge_tensors` takes them."""
        from mergekit.merge_methods.base import ParameterScope

        parameters = dict(task.parameters.items())
        for spec in method.spec.input_parameters:
            refs = [
                ref
                for ref in task.model_order
                if spec.scope == ParameterScope.INPUT or ref != task.base_model
            ]
            parameters[spec.name] = {
                ref: task.input_parameters[ref][spec.name] for ref in refs
            }
        return parameters

    @torch.no_grad()
    def apply(self, config: dict) -> None:
        """Write the merge of `config` (a `search.candidate_config`) into the
        resident model's targeted weights."""
        from mergekit import merge_methods
        from mergekit.merge_methods.api import merge_tensors
        from mergekit.sparsify import SparsificationMethod

        tasks = merge_schedule(config, self.cache)
        method = merge_methods.get(config["merge_method"])
        draws = getattr(method, "sparsification_method", None) in (
            SparsificationMethod.random,
            SparsificationMethod.della_magprune,
        )
        planned = {task.output_weight.name for task in tasks}
        missing = sorted(set(self.layers) - planned)
        if missing:
            raise ValueError(f"mergekit's plan for {config} lacks {missing[:3]}")
        if self.store_dtype is None:
            self.store_dtype = self._cache_dtype(
                next(t for t in tasks if t.output_weight.name in self.layers)
            )
        state = self.model.state_dict() if draws else {}
        merged = {}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(MERGE_SEED)
            for task in tasks:
                name = task.output_weight.name
                if name not in self.layers:
                    # not merged (the base); DARE / DELLA draw its masks in order
                    base = state.get(name)
                    if not draws or base is None or not base.is_floating_point():
                        continue
                    if base.device.type == "cpu":
                        draw_untouched(task, method, base.shape)
                    continue
                ids = list(task.model_order)
                result = merge_tensors(
                    self._inputs(task),
                    method,
                    parameters=self._parameters(task, method),
                    ids=ids,
                    base_index=(
                        ids.index(task.base_model) if task.base_model in ids else None
                    ),
                    name=name,
                    dtype=torch.float32,
                )
                merged[name] = result.to(self.base_weights[name].dtype)
        for name, tensor in merged.items():
            self.weights[name].data = tensor

    def restore(self) -> None:
        """Put the base's targeted weights back."""
        for name, tensor in self.base_weights.items():
            self.weights[name].data = tensor

    @contextlib.contextmanager
    def candidate(self, config: dict):
        """The resident model holding `config`'s merge, restored afterwards."""
        try:
            self.apply(config)
            yield self.model
        finally:
            self.restore()
