"""Sparsity of LoRA deltas, measured the way a weight merge sees them.

For every LoRA module the delta is `scale * B @ A` (what `merge_and_unload` and
mergekit's `base+adapter` references add to the base weight). Per module we count

- `near_zero`: delta entries with `|d| <= threshold * max|d|` of that module (the
  headline *sparsity*, threshold = `paft_sparsity_threshold`, 1% by default);
- `delta_zeros`: delta entries that are exactly 0;
- `factor_zeros`: entries of A and B that are exactly 0 (what `proximal` L1 makes);
- `l1`: `sum|A| + sum|B|`, the quantity the L1 penalty acts on.

The same code measures a live PEFT model (for the training logs) and a saved adapter
folder (for the report), so both agree by construction.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

_PEFT_PREFIX = "base_model.model."
_LAYER_RE = re.compile(r"\.(?:layers|h|blocks)\.(\d+)\.")
_FACTOR_A = re.compile(r"\.lora_(?:embedding_)?A(?=\.weight$|$)")


@dataclass(frozen=True)
class Measure:
    """One summary measure of a delta: its report column and what it means."""

    label: str
    description: str
    fraction: bool = True


# The summary measures of a delta: in the training logs (`<adapter>/<key>`, each
# log step), the report's tables and its JSON. One place for their names; a new
# measure is one entry here plus its count in `summarize`.
SUMMARY_MEASURES: dict[str, Measure] = {
    "sparsity": Measure(
        "sparsity",
        "fraction of delta entries with |d| <= threshold * max|d| of their module "
        "(threshold: paft_sparsity_threshold)",
    ),
    "delta_exact_zeros": Measure(
        "exact zeros (delta)", "fraction of delta entries exactly 0"
    ),
    "lora_exact_zeros": Measure(
        "exact zeros (A, B)", "fraction of LoRA factor entries exactly 0"
    ),
    "l1_norm": Measure(
        "L1(A)+L1(B)", "sum|A| + sum|B|, what the L1 penalty acts on", False
    ),
}


@dataclass(frozen=True)
class LoraFactors:
    """One LoRA module: `delta = scaling * lora_b @ lora_a`."""

    name: str
    lora_a: torch.Tensor
    lora_b: torch.Tensor
    scaling: float

    def delta(self) -> torch.Tensor:
        """The dense weight delta in float32."""
        return self.scaling * (self.lora_b.float() @ self.lora_a.float())


@dataclass(frozen=True)
class ModuleSparsity:
    """Counts for one module's delta and factors."""

    name: str
    layer: int | None
    module_type: str
    numel: int
    near_zero: int
    delta_zeros: int
    factor_numel: int
    factor_zeros: int
    l1: float
    max_abs: float


def module_name(parameter_or_module: str) -> str:
    """Strip PEFT's wrapper prefix and the LoRA suffix from a state-dict name."""
    name = parameter_or_module.removeprefix(_PEFT_PREFIX)
    return re.sub(r"\.lora_(?:embedding_)?[AB](\.[^.]+)?(\.weight)?$", "", name)


def layer_index(name: str) -> int | None:
    """The transformer block number in a module name, if any."""
    match = _LAYER_RE.search(f".{name}.")
    return int(match.group(1)) if match else None


def live_lora_factors(model: torch.nn.Module, adapter: str) -> Iterator[LoraFactors]:
    """LoRA factors of `adapter` in a live PEFT model (no copies).

    Under FSDP2 (`fully_shard`) each factor is a DTensor holding this process's
    rows only; the delta `B @ A`, its per-module maximum and the counts need the
    whole factors, so those are gathered (`full_tensor`, a collective: every
    process must iterate the same modules, which the training callbacks do), one
    module at a time: the copy is the size of one module's LoRA factors."""
    from peft.tuners.lora import LoraLayer

    from axolotl_paft.training.sharded import whole

    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        if adapter in module.lora_A:
            a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
        elif adapter in module.lora_embedding_A:  # delta = (B @ A).T: same counts
            a, b = module.lora_embedding_A[adapter], module.lora_embedding_B[adapter]
        else:
            continue
        yield LoraFactors(
            name=module_name(name),
            lora_a=whole(a.detach()),
            lora_b=whole(b.detach()),
            scaling=float(module.scaling[adapter]),
        )


def saved_lora_factors(adapter_dir: str | Path) -> Iterator[LoraFactors]:
    """LoRA factors read from a saved PEFT adapter folder (safetensors)."""
    from peft.utils.other import get_pattern_key
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    tensors = load_file(adapter_dir / "adapter_model.safetensors")
    alpha_pattern = config.get("alpha_pattern") or {}
    for key in sorted(k for k in tensors if _FACTOR_A.search(k)):
        name = module_name(key)
        lora_a = tensors[key]
        lora_b = tensors[_FACTOR_A.sub(lambda m: m.group(0)[:-1] + "B", key)]
        rank = lora_a.shape[0]
        alpha = config["lora_alpha"]
        if alpha_pattern:
            pattern = get_pattern_key(alpha_pattern.keys(), name)
            alpha = alpha_pattern.get(pattern, alpha)
        denominator = rank**0.5 if config.get("use_rslora") else rank
        yield LoraFactors(name, lora_a, lora_b, alpha / denominator)


# At most this many delta entries are in memory at once (64 MiB in float32): a
# dense Mistral-7B MLP delta has 58.7M entries, a Llama-3-70B one 235M, and the
# training logs measure every module of an adapter at each log step.
CHUNK_ENTRIES = 1 << 24


def measure_module(
    factors: LoraFactors, threshold: float, chunk_entries: int = CHUNK_ENTRIES
) -> ModuleSparsity:
    """Sparsity counts of one module (threshold: fraction of the module's max).

    `|B @ A|` is computed by blocks of rows into one buffer of at most
    `chunk_entries`, in place; the delta is `scale` times it, and neither its
    zeros nor its near-zero fraction depend on the scale. The near-zero count
    needs the module's max first, so a delta larger than the buffer is computed
    twice rather than held whole."""
    a, b = factors.lora_a.float(), factors.lora_b.float()
    d_out, d_in = b.shape[0], a.shape[1]
    rows = max(chunk_entries // max(d_in, 1), 1)
    buffer = torch.empty(min(rows, d_out), d_in, device=a.device)

    def blocks() -> Iterator[torch.Tensor]:
        for start in range(0, d_out, rows):
            block = buffer[: min(rows, d_out - start)]
            torch.mm(b[start : start + rows], a, out=block)
            yield block.abs_()

    max_abs, delta_zeros = 0.0, 0
    for block in blocks():
        max_abs = max(max_abs, float(block.max()) if block.numel() else 0.0)
        delta_zeros += int(torch.count_nonzero(block == 0))
    limit = threshold * max_abs
    again = [buffer] if d_out <= rows else blocks()  # one block: still there
    near_zero = sum(int(torch.count_nonzero(block <= limit)) for block in again)
    max_abs *= abs(factors.scaling)
    return ModuleSparsity(
        name=factors.name,
        layer=layer_index(factors.name),
        module_type=factors.name.rsplit(".", 1)[-1],
        numel=d_out * d_in,
        near_zero=near_zero,
        delta_zeros=delta_zeros,
        factor_numel=a.numel() + b.numel(),
        factor_zeros=int((a == 0).sum() + (b == 0).sum()),
        l1=float(a.abs().sum() + b.abs().sum()),
        max_abs=max_abs,
    )


def measure(factors: Iterable[LoraFactors], threshold: float) -> list[ModuleSparsity]:
    """Per-module sparsity in (layer, name) order, one delta in memory at a time."""
    with torch.no_grad():
        modules = [measure_module(f, threshold) for f in factors]
    return sorted(modules, key=lambda m: (m.layer is None, m.layer or 0, m.name))


def summarize(modules: list[ModuleSparsity]) -> dict:
    """Aggregate counts over all modules (entry-weighted fractions)."""
    numel = sum(m.numel for m in modules)
    factor_numel = sum(m.factor_numel for m in modules)
    measures = {
        "sparsity": _fraction(sum(m.near_zero for m in modules), numel),
        "delta_exact_zeros": _fraction(sum(m.delta_zeros for m in modules), numel),
        "lora_exact_zeros": _fraction(
            sum(m.factor_zeros for m in modules), factor_numel
        ),
        "l1_norm": sum(m.l1 for m in modules),
    }
    return {"modules": len(modules), "delta_entries": numel, **measures}


def grouped(modules: list[ModuleSparsity], key: str) -> dict[str, dict]:
    """`summarize` per value of `key` ("layer" or "module_type")."""
    groups: dict[str, list[ModuleSparsity]] = {}
    for m in modules:
        groups.setdefault(str(getattr(m, key)), []).append(m)
    return {
        k: summarize(v)
        for k, v in sorted(groups.items(), key=lambda kv: _natural(kv[0]))
    }


def as_records(modules: list[ModuleSparsity]) -> list[dict]:
    """Per-module rows for JSON."""
    return [asdict(m) for m in modules]


def _fraction(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def _natural(text: str) -> tuple:
    return (0, int(text), "") if text.isdigit() else (1, 0, text)
