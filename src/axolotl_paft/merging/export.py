"""One adapter out: a PAFT merge as a single PEFT LoRA adapter folder.

Users who serve many fine-tunes keep one base and load adapters (PEFT, vLLM's
multi-LoRA, LoRAX); a full merged model per experiment is the wrong artifact for
them. `paft_merge_export: adapter | both` (and `axolotl-paft-sweep --export`)
writes the merge as one LoRA:

- **exact** where the algebra allows: task arithmetic and linear (normalized, or
  with weights summing to 1) add the scaled deltas, and a sum of LoRA deltas is a
  LoRA, c_s B_s A_s + c_p B_p A_p = [c_s B_s | c_p B_p] [A_s ; A_p], of rank
  r_s + r_p. Each adapter's own scaling (lora_alpha / r, or / sqrt(r) with
  rsLoRA, per module with rank_pattern / alpha_pattern) and the merge's
  coefficient (weight, lambda, normalize, read from the mergekit config with
  mergekit's own defaults) are folded into B; the combined adapter has
  lora_alpha = r (scaling 1). A module only one adapter targets gets zero blocks
  from the other, so every module has the same rank (vLLM takes no rank_pattern).
  Refused (and extracted instead), by name: DoRA (its magnitude vector makes the
  merge no plain sum), `modules_to_save`, bias training, trainable tokens, layer
  replication, initialisations that rewrite the base (PiSSA, OLoRA, LoftQ, ...),
  mixed `fan_in_fan_out`.
- **extracted** where it does not: TIES, DARE, DELLA, breadcrumbs and SLERP
  deltas are not low rank. mergekit's own `mergekit-extract-lora` (truncated SVD
  per module) extracts a LoRA from the merged model, on the modules the two
  adapters target only (other tensors are the base's in every PAFT merge), and
  we report the relative Frobenius error ||D - B A|| / ||D|| per module and
  overall, with D = merged - base in float32, so the user sees what the smaller
  artifact costs; with held-out rows, the adapter's scores beside the merged
  model's (`_scores`, the search's measures). Above `paft_merge_export_max_error`
  the export warns, last, with the rank that meets it (`check_bound`,
  `rank_for_error`), and paft_export.json records `within_bound: false`.

The folder carries `adapter_config.json`, `adapter_model.safetensors` and
`paft_export.json` (how it was made, its rank, its error or gap, its scores).
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from axolotl_paft.const import DEFAULT_EXPORT_MAX_ERROR
from axolotl_paft.merging.runs import run_stamp

if TYPE_CHECKING:
    import torch

LOG = logging.getLogger(f"axolotl.{__name__}")  # shown by axolotl's log config

# mergekit methods whose merge of LoRA deltas is a LoRA (`exact_plan`)
EXACT_METHODS = ("task_arithmetic", "linear")
# vLLM's `--max-lora-rank` choices (vllm.config.lora.MaxLoRARanks, 0.14)
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
SUMMARY = "paft_export.json"
# PEFT adapter settings that make an adapter's delta something else than
# scaling * B A, or add tensors a plain LoRA sum cannot carry
_REFUSED = {
    "use_dora": "DoRA's magnitude vector rescales each merged column: not a sum",
    "modules_to_save": "full copies of modules are no low-rank delta",
    "trainable_token_indices": "trained token rows are no low-rank delta",
    "layer_replication": "replicated layers share base weights",
    "lora_bias": "a trained bias on B is no low-rank delta",
}
_BASE_REWRITING_INITS = ("pissa", "olora", "corda", "eva", "loftq", "orthogonal")
_KEY = re.compile(
    r"^base_model\.model\.(?P<module>.+)\."
    r"(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B)(?:\.weight)?$"
)


class NotExact(ValueError):
    """The merge is not a LoRA: the reason, by name."""


@dataclass(frozen=True)
class LoraModule:
    """One module of a saved LoRA: A, B and PEFT's scaling for it."""

    a: torch.Tensor  # r x in (Linear) or r x vocab (Embedding)
    b: torch.Tensor  # out x r (Linear) or dim x r (Embedding)
    scaling: float
    embedding: bool
    fan_in_fan_out: bool

    def delta(self) -> torch.Tensor:
        """The module's weight delta, in the weight's layout, float32 (as PEFT's
        `get_delta_weight`)."""
        d = self.b.float() @ self.a.float() * self.scaling
        return d.T if self.embedding or self.fan_in_fan_out else d


def read_adapter(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """A PEFT adapter folder's config and tensors."""
    folder = Path(folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    if (folder / "adapter_model.safetensors").exists():
        from safetensors.torch import load_file

        tensors = load_file(folder / "adapter_model.safetensors")
    else:
        import torch

        tensors = torch.load(folder / "adapter_model.bin", map_location="cpu")
    return config, tensors


def _scaling(config: dict, module: str, rank: int) -> float:
    """PEFT's scaling of `module` (LoraModel._create_and_replace)."""
    from peft.utils.other import get_pattern_key

    alpha_pattern = config.get("alpha_pattern") or {}
    alpha = alpha_pattern.get(
        get_pattern_key(alpha_pattern.keys(), module), config["lora_alpha"]
    )
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def lora_modules(folder: Path) -> dict[str, LoraModule]:
    """Module name (as in the model, e.g. `model.layers.0.self_attn.q_proj`) ->
    its LoRA; raises NotExact for an adapter that is not a plain LoRA."""
    config, tensors = read_adapter(folder)
    refuse_unless_plain(config, folder)
    parts: dict[str, dict] = {}
    for key, tensor in tensors.items():
        match = _KEY.match(key)
        if key.endswith(".lora_B.bias") and not tensor.any():
            continue  # mergekit-extract-lora saves a module's bias delta: zero here
        if not match:
            raise NotExact(f"{folder}: tensor {key} is not a LoRA A or B")
        parts.setdefault(match["module"], {})[match["kind"]] = tensor
    modules = {}
    for name, p in parts.items():
        embedding = "lora_embedding_A" in p
        a = p["lora_embedding_A" if embedding else "lora_A"]
        b = p["lora_embedding_B" if embedding else "lora_B"]
        if a.dim() != 2:
            raise NotExact(f"{folder}: {name} is a convolution LoRA")
        modules[name] = LoraModule(
            a, b, _scaling(config, name, a.shape[0]), embedding,
            bool(config.get("fan_in_fan_out")),
        )  # fmt: skip
    return modules


def refuse_unless_plain(config: dict, folder: Path) -> None:
    """Raise NotExact naming the adapter setting that makes its delta other than
    scaling * B A."""
    if config.get("peft_type", "LORA") != "LORA":
        raise NotExact(f"{folder}: peft_type {config['peft_type']} is not LORA")
    for key, why in _REFUSED.items():
        if config.get(key):
            raise NotExact(f"{folder}: {key} is set ({why})")
    if config.get("bias", "none") != "none":
        raise NotExact(f"{folder}: bias {config['bias']!r} trains biases")
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(_BASE_REWRITING_INITS):
        raise NotExact(f"{folder}: init_lora_weights {init!r} rewrites the base")


def _adapter_of(reference: str, adapters: list[Path]) -> Path:
    for adapter in adapters:
        if reference.endswith("+" + str(Path(adapter).resolve())):
            return Path(adapter)
    raise NotExact(f"model {reference} is none of the adapters {adapters}")


def exact_plan(config: dict, adapters: list[Path]) -> list[tuple[Path, float]]:
    """(adapter, coefficient) per delta when `config`'s merge of `adapters` is
    sum_i c_i * delta_i on the base (mergekit's arithmetic, its defaults from
    the method's spec); raises NotExact with the reason otherwise."""
    from mergekit.merge_methods import get as get_method

    method = config["merge_method"]
    if method not in EXACT_METHODS:
        raise NotExact(f"{method} merges are not a sum of the LoRA deltas")
    defaults = {p.name: p.default for p in get_method(method).spec.parameters}
    shared = {**defaults, **config.get("parameters", {})}
    plan = [
        (
            _adapter_of(model["model"], adapters),
            float(model.get("parameters", {}).get("weight", defaults.get("weight"))),
        )
        for model in config["models"]
    ]
    total = sum(w for _, w in plan)
    if method == "linear":
        # linear averages whole models: the base's coefficient is sum(w) / divisor
        if not shared["normalize"] and abs(total - 1) > 1e-6:
            raise NotExact(
                f"linear without normalize scales the base by {total:g}: "
                "no delta on the base"
            )
        divisor = total if shared["normalize"] else 1.0
        return [(a, w / divisor) for a, w in plan]
    # generalized task arithmetic: sum(w_i d_i) [/ sum(w_i)] * lambda
    divisor = total if shared["normalize"] and abs(total) >= 1e-8 else 1.0
    return [(a, w * shared["lambda"] / divisor) for a, w in plan]


def combine_adapters(plan: list[tuple[Path, float]], out: Path) -> dict:
    """Write sum_i c_i * delta_i (`plan`) as one LoRA into `out`: A stacked, B
    side by side times c_i and each adapter's scaling, lora_alpha = r. Returns
    {"rank", "modules"}."""
    import torch
    from safetensors.torch import save_file

    loras = [lora_modules(adapter) for adapter, _ in plan]
    configs = [read_adapter(adapter)[0] for adapter, _ in plan]
    if len({bool(c.get("fan_in_fan_out")) for c in configs}) > 1:
        raise NotExact("the adapters differ in fan_in_fan_out")
    ranks = [max(m.a.shape[0] for m in lora.values()) for lora in loras]
    names = sorted({name for lora in loras for name in lora})
    dtype = torch.float32
    for lora in loras:
        for m in lora.values():
            dtype = torch.promote_types(dtype, m.a.dtype)
    tensors = {}
    for name in names:
        present = [lora[name] for lora in loras if name in lora]
        if len({m.embedding for m in present}) > 1:
            raise NotExact(f"{name}: an embedding LoRA in one adapter only")
        shape_a, shape_b = present[0].a.shape[1], present[0].b.shape[0]
        a_blocks, b_blocks = [], []
        for lora, (_, coefficient), rank in zip(loras, plan, ranks, strict=True):
            a = torch.zeros(rank, shape_a)
            b = torch.zeros(shape_b, rank)
            if name in lora:
                m = lora[name]
                r = m.a.shape[0]
                a[:r] = m.a.float()
                b[:, :r] = m.b.float() * (coefficient * m.scaling)
            a_blocks.append(a)
            b_blocks.append(b)
        kind = "lora_embedding" if present[0].embedding else "lora"
        suffix = "" if present[0].embedding else ".weight"
        prefix = f"base_model.model.{name}.{kind}"
        tensors[f"{prefix}_A{suffix}"] = torch.cat(a_blocks).to(dtype).contiguous()
        tensors[f"{prefix}_B{suffix}"] = torch.cat(b_blocks, 1).to(dtype).contiguous()
    rank = sum(ranks)
    config = dict(configs[0])
    config.update(
        r=rank,
        lora_alpha=rank,
        use_rslora=False,
        rank_pattern={},
        alpha_pattern={},
        lora_dropout=0.0,  # training only
        target_modules=sorted({n.rsplit(".", 1)[-1] for n in names}),
        inference_mode=True,
        use_dora=False,
        modules_to_save=None,
    )
    if any(
        c.get("layers_to_transform") != config.get("layers_to_transform")
        for c in configs
    ):
        config["layers_to_transform"] = None  # modules left out: their B is 0
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / "adapter_model.safetensors")
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return {"rank": rank, "modules": len(names)}


def extract_command(
    base: str, merged: Path, out: Path, rank: int, modules: list[str],
    sv_epsilon: float = 0.0,
) -> list[str]:  # fmt: skip
    """`mergekit-extract-lora` on the modules named `modules` (leaf names) only:
    one exclusion regex for every other module, embeddings included (mergekit
    would otherwise save them whole, 2 x 262 MB at Mistral-7B)."""
    leaves = "|".join(sorted({re.escape(m) for m in modules}))
    command = [
        sys.executable, "-m", "mergekit.scripts.extract_lora",
        "--model", str(merged), "--base-model", str(base), "--out-path", str(out),
        "--max-rank", str(rank), "--exclude-regex", rf"^(?!(.*\.)?({leaves})$)",
    ]  # fmt: skip
    if sv_epsilon:
        command += ["--sv-epsilon", str(sv_epsilon)]
    if any(m in ("embed_tokens", "wte", "embed_in") for m in modules):
        command.append("--embed-lora")
    return command


def extract_adapter(
    base: str, merged: Path, out: Path, rank: int, modules: list[str],
    sv_epsilon: float = 0.0,
) -> Path:  # fmt: skip
    """Run `mergekit-extract-lora` (`extract_command`) into `out`."""
    command = extract_command(base, merged, out, rank, modules, sv_epsilon)
    LOG.info("paft: extracting a rank-%d LoRA: %s", rank, " ".join(command))
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(
            f"mergekit-extract-lora failed ({done.returncode}):\n{done.stderr[-3000:]}"
        )
    return out


def delta_gap(base: str, merged: Path, adapter: Path) -> dict:
    """How far `adapter`'s delta is from merged - base (float32) on the modules it
    targets: the relative Frobenius error per module and overall, and the
    largest absolute difference."""
    from mergekit.common import ModelReference

    base_tensors = ModelReference.model_validate(str(base)).lazy_loader()
    merged_tensors = ModelReference.model_validate(str(merged)).lazy_loader()
    per_module, err2, norm2, largest = {}, 0.0, 0.0, 0.0
    for name, module in sorted(lora_modules(adapter).items()):
        key = f"{name}.weight"
        delta = (
            merged_tensors.get_tensor(key).float()
            - base_tensors.get_tensor(key).float()
        )
        diff = delta - module.delta()
        e2, n2 = float(diff.square().sum()), float(delta.square().sum())
        per_module[name] = math.sqrt(e2 / n2) if n2 else math.sqrt(e2)
        err2, norm2 = err2 + e2, norm2 + n2
        largest = max(largest, float(diff.abs().max()))
    return {
        "relative_frobenius": math.sqrt(err2 / norm2) if norm2 else math.sqrt(err2),
        "max_abs": largest,
        "per_module": per_module,
    }


def rank_for_error(base: str, merged: Path, modules: list[str], bound: float) -> int:
    """The smallest rank r whose truncated SVD of every module's delta D =
    merged - base (float32, `modules` as in the model) has an overall relative
    Frobenius error sqrt(sum_m ||D_m - D_m,r||^2 / sum_m ||D_m||^2) <= `bound`:
    the rank at which `mergekit-extract-lora` (which keeps each module's r
    largest singular values, at most the module's full rank) meets it. The
    squared singular values are the eigenvalues of the delta's smaller Gram
    matrix (float64, on the GPU when there is one): about 12 times cheaper
    than `svdvals` on a CPU (0.5 s against 5.8 s for 2048 x 8192, one core)."""
    import torch
    from mergekit.common import ModelReference

    device = "cuda" if torch.cuda.is_available() else "cpu"
    base_tensors = ModelReference.model_validate(str(base)).lazy_loader()
    merged_tensors = ModelReference.model_validate(str(merged)).lazy_loader()
    tails = []  # per module: the squared error left at rank 0, 1, ..., full
    for name in modules:
        key = f"{name}.weight"
        delta = merged_tensors.get_tensor(key).to(device, torch.float64, copy=True)
        delta -= base_tensors.get_tensor(key).to(device, torch.float64)
        if delta.shape[0] > delta.shape[1]:
            delta = delta.T
        energy = torch.linalg.eigvalsh(delta @ delta.T).flip(0).clamp(min=0).cpu()
        del delta
        kept = torch.cat([energy.new_zeros(1), energy.cumsum(0)])
        tails.append(energy.sum() - kept)
    if not tails:
        return 1
    full = max(len(t) for t in tails)
    left = torch.zeros(full, dtype=torch.float64)
    for tail in tails:
        left[: len(tail)] += tail.clamp(min=0)
    allowed = bound**2 * float(sum(t[0] for t in tails))
    meets = (left <= allowed).nonzero()
    return max(1, int(meets[0]) if len(meets) else full - 1)


def check_bound(
    summary: dict, base: str, merged: Path | None, out: Path, bound: float
) -> None:
    """Record in `summary` the error bound and whether the adapter meets it
    (an exact adapter does; an extracted one by its gap to the merged model),
    and for one that does not, the rank that would (`rank_for_error`)."""
    summary["max_error"] = bound
    error = summary.get("gap", {}).get("relative_frobenius")
    if summary["kind"] == "exact" or error is None:
        summary["within_bound"] = summary["kind"] == "exact"
        return
    summary["within_bound"] = error <= bound
    if not summary["within_bound"]:
        summary["suggested_rank"] = rank_for_error(
            base, Path(merged), sorted(summary["gap"]["per_module"]), bound
        )


def bound_warning(summary: dict, out: Path) -> str | None:
    """The warning for an adapter that does not reproduce its merge within the
    bound (`check_bound`); None where it does."""
    if summary.get("within_bound", True):
        return None
    if "suggested_rank" not in summary:
        return (
            f"paft: the adapter in {out} was extracted without a merged model to "
            f"measure it against: its error is unknown, not within "
            f"paft_merge_export_max_error {summary['max_error']:g}"
        )
    error = summary["gap"]["relative_frobenius"]
    rank = summary["suggested_rank"]
    return (
        f"paft: the adapter in {out} does not reproduce its {summary['method']} "
        f"merge: relative error {error:.2g} at rank {summary['rank']} exceeds "
        f"paft_merge_export_max_error {summary['max_error']:g} (paft_export.json: "
        f"within_bound false). Rank {rank} meets it: export again with "
        f"paft_merge_export_rank: {rank} (--export-rank {rank}), or serve the "
        "merged model (paft_merge_export: both or model)"
    )


def _scores(scorer, base: str, merged: Path, adapter: Path) -> dict:
    """The merged model's and the adapter's scores on the held-out rows, by the
    search's `scoring.Scorer` (its measures, rows and references: the base is
    not scored again)."""
    from axolotl_paft.merging.scoring import load_model

    return {
        "measures": scorer.measures,
        "merged": scorer(load_model(merged)),
        "adapter": scorer(load_model(base, adapter)),
    }


def target_rank(rank: int) -> int | None:
    """The smallest vLLM `--max-lora-rank` that takes `rank` (None: none does)."""
    return next((r for r in VLLM_MAX_LORA_RANKS if r >= rank), None)


def export_adapter(
    config_path: Path,
    base: str,
    adapters: list[Path],
    out: Path,
    merged: Path | None = None,
    rank: int | None = None,
    sv_epsilon: float = 0.0,
    build_merged=None,
    scorer=None,
    run: dict | None = None,
    max_error: float = DEFAULT_EXPORT_MAX_ERROR,
) -> dict:
    """Export the merge that `config_path` (a mergekit config of `adapters` on
    `base`) describes as one adapter in `out`: exact when `exact_plan` allows,
    else extracted at `rank` (default: r_s + r_p, the exact adapter's size) from
    `merged` (built by `build_merged()` when absent). Gap or error, and scores by
    `scorer` (the search's) when given and a merged model exists, go to
    `out/paft_export.json` with `run` (`runs.run_stamp`: the run and the
    adapters it was built from), with whether its error is within
    `max_error` (`check_bound`); returns that summary.

    The adapter is built aside (`.<name>.partial-*` beside `out`) and moved
    into place only when complete: an earlier export in `out` stays whole until
    then, and a failure leaves it as it was."""
    config = yaml.safe_load(Path(config_path).read_text())
    summary: dict = {
        "config": str(config_path),
        "method": config["merge_method"],
        "merged_dtype": config.get("dtype"),
        "run": run or run_stamp({str(i): a for i, a in enumerate(adapters)}),
    }
    final, out = Path(out), aside(Path(out), "partial")
    try:
        _build_export(
            config, summary, base, adapters, out, merged, rank, sv_epsilon,
            build_merged, scorer, max_error,
        )  # fmt: skip
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    put_in_place(out, final)
    return summary


def aside(out: Path, kind: str) -> Path:
    """A fresh folder name beside `out` for building it (`kind`: partial, old)."""
    return out.parent / f".{out.name}.{kind}-{uuid.uuid4().hex[:8]}"


def put_in_place(built: Path, final: Path) -> None:
    """Move the complete `built` folder to `final`; an earlier `final` is moved
    aside first and removed only once `built` is in place."""
    old = None
    if final.exists():
        old = aside(final, "old")
        final.rename(old)
    built.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _build_export(
    config, summary, base, adapters, out, merged, rank, sv_epsilon, build_merged,
    scorer, max_error,
) -> None:  # fmt: skip
    """`export_adapter`'s work, into `out` (a folder of its own)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        plan = exact_plan(config, adapters)
        summary |= {"kind": "exact", "coefficients": [c for _, c in plan]}
        summary |= combine_adapters(plan, out)
    except NotExact as why:
        modules = {
            name.rsplit(".", 1)[-1]
            for adapter in adapters
            for name in lora_modules_or_names(adapter)
        }
        if rank is None:
            rank = sum(_adapter_rank(a) for a in adapters)
        if merged is None or not Path(merged).exists():
            merged = build_merged()
        extract_adapter(base, merged, out, rank, sorted(modules), sv_epsilon)
        summary |= {"kind": "extracted", "why_not_exact": str(why), "max_rank": rank}
        summary["rank"] = json.loads((out / "adapter_config.json").read_text())["r"]
    if merged is not None and Path(merged).exists():
        summary["gap"] = delta_gap(base, Path(merged), out)
        if scorer is not None:
            summary["scores"] = _scores(scorer, base, Path(merged), out)
    check_bound(summary, base, merged, out, max_error)
    summary["size_bytes"] = folder_size(out)
    summary["vllm_max_lora_rank"] = target_rank(summary["rank"])
    (out / SUMMARY).write_text(json.dumps(summary, indent=2))


def lora_modules_or_names(adapter: Path) -> list[str]:
    """The module names an adapter targets, read from its tensor names (works
    for adapters `lora_modules` refuses, such as DoRA)."""
    _, tensors = read_adapter(adapter)
    return sorted({m["module"] for k in tensors if (m := _KEY.match(k))})


def _adapter_rank(adapter: Path) -> int:
    config, _ = read_adapter(adapter)
    return max([config["r"], *(config.get("rank_pattern") or {}).values()])


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def usage_lines(base: str, summary: dict, out: Path) -> list[str]:
    """The log lines that name the adapter and the commands that use it."""
    how = (
        f"exact, rank {summary['rank']}"
        if summary["kind"] == "exact"
        else f"extracted at rank {summary['rank']} ({summary['why_not_exact']})"
    )
    if "gap" in summary:
        how += f", relative error {summary['gap']['relative_frobenius']:.2e}"
        dtype = summary["merged_dtype"]
        if dtype != "float32":
            how += f" against the {dtype} merge, its rounding included"
    lines = [
        f"paft: one adapter for {summary['method']} ({how}, "
        f"{summary['size_bytes'] / 1e6:.1f} MB): {out}",
        f"  PEFT: PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("
        f"'{base}'), '{out}')",
        f"  axolotl inference CONFIG --lora-model-dir {out}",
    ]
    vllm = summary["vllm_max_lora_rank"]
    if vllm is None:
        lines.append(
            f"  vLLM: rank {summary['rank']} exceeds every --max-lora-rank choice; "
            "extract at a lower rank (paft_merge_export_rank)"
        )
    else:
        lines.append(
            f"  vllm serve {base} --enable-lora --max-lora-rank {vllm} "
            f"--lora-modules paft={out}"
        )
    return lines


def export_search_best(
    result, base: str, adapters: list[Path], out: Path, rank: int | None = None,
    say=LOG.info, max_error: float = DEFAULT_EXPORT_MAX_ERROR, warn=LOG.warning,
) -> Path:  # fmt: skip
    """`axolotl-paft-sweep --search --export`: the search's best (`result`, a
    `search.SearchResult`) as one adapter in `out`, scored by the search's
    scorer; its lines said by `say`, then a warning (`warn`) where its error
    exceeds `max_error`."""
    summary = export_adapter(
        result.config, base, [Path(a).resolve() for a in adapters], out,
        merged=result.merged, rank=rank, scorer=result.scorer,
        run=result.run, max_error=max_error,
    )  # fmt: skip
    for line in usage_lines(base, summary, out):
        say(line)
    if warning := bound_warning(summary, out):
        warn(warning)
    return out


def export_run_adapters(
    output_dir: Path, base: str, adapters: dict[str, Path], args,
    emitted=None, searched=None, scorer=None, run: dict | None = None,
) -> list[Path]:  # fmt: skip
    """`paft_merge_export` after training: this run's search's best (`searched`,
    a `search.SearchResult`) into output_dir/adapter/best, and the method the
    user named (`paft_merge_run`, one of `emitted`, `configs.EmittedConfigs`)
    into output_dir/adapter/<method>, each scored by `scorer` (default: the
    search's); no other config is exported (`checks.check_something_to_export`
    refuses a config with neither). An adapter whose error exceeds
    `paft_merge_export_max_error` is warned about last, with the rank that
    meets it. A merged model built only for the
    extraction is kept with `both` and removed with `adapter`. A merged folder
    is reused only where its `paft_merge.json` says this config and these
    adapters built it (`stamp_merged`); another run's is built again. `run`:
    the run's `runs.run_stamp`, recorded in each paft_export.json."""
    from axolotl_paft.merging.configs import merged_dir, run_merge_config

    if args.paft_merge_export == "model":
        return []
    folders = [adapters[r].resolve() for r in ("sft", "preference") if r in adapters]
    targets = []  # (name, config, merged model folder, whether a run built it, cache)
    if searched is not None:
        targets.append(("best", searched.config, searched.merged, True, searched.cache))
    method = args.paft_merge_run if emitted else None
    if method:
        merged = merged_dir(output_dir, method)
        config = emitted.written[method]
        current = merged_by(merged, config, folders)
        if merged.exists() and not current:  # an earlier run's: left as it is
            LOG.info(
                "paft: %s was not built from %s and these adapters (an earlier "
                "run's?): the adapter is built from a fresh merge", merged, config,
            )  # fmt: skip
            merged = aside(merged, "export")
        targets.append((method, config, merged, current, emitted.cache_dir))
    if scorer is None and searched is not None:
        scorer = searched.scorer
    written, warnings = [], []
    for name, config, merged, existed, cache in targets:
        out = output_dir / "adapter" / name

        def build(config=config, merged=merged, cache=cache):
            LOG.info("paft: merging %s into %s for the adapter", config, merged)
            run_merge_config(config, merged, cache)
            return stamp_merged(merged, config, folders)

        if args.paft_merge_export == "both" and not merged.exists():
            build()
        summary = export_adapter(
            config, base, folders, out,
            merged=merged if merged.exists() else None,
            rank=args.paft_merge_export_rank, build_merged=build, scorer=scorer,
            run=run, max_error=args.paft_merge_export_max_error,
        )  # fmt: skip
        if args.paft_merge_export == "adapter" and not existed and merged.exists():
            shutil.rmtree(merged)  # built for the extraction only
        home = merged_dir(output_dir, name)
        if name != "best" and merged != home and merged.exists():
            put_in_place(merged, home)  # `both`: the fresh merge, once complete
        for line in usage_lines(base, summary, out):
            LOG.info(line)
        warnings.append(bound_warning(summary, out))
        written.append(out)
    for warning in filter(None, warnings):  # the log's last lines
        LOG.warning(warning)
    return written


MERGED_STAMP = "paft_merge.json"


def _merge_stamp(config: Path, adapters: list[Path]) -> dict:
    import hashlib

    from axolotl_paft.merging.runs import adapter_digest

    return {
        "config_sha256": hashlib.sha256(Path(config).read_bytes()).hexdigest(),
        "adapters": [adapter_digest(a) for a in adapters],
    }


def stamp_merged(merged: Path, config: Path, adapters: list[Path]) -> Path:
    """Record in `merged/paft_merge.json` the config and adapters that built it."""
    (Path(merged) / MERGED_STAMP).write_text(
        json.dumps(_merge_stamp(config, adapters), indent=2)
    )
    return Path(merged)


def merged_by(merged: Path, config: Path, adapters: list[Path]) -> bool:
    """Whether `merged` holds the merge of `config` on these adapters (its
    `stamp_merged` record), not an earlier run's merge of the same name."""
    stamp = Path(merged) / MERGED_STAMP
    if not stamp.is_file():
        return False
    try:
        return json.loads(stamp.read_text()) == _merge_stamp(config, adapters)
    except json.JSONDecodeError:
        return False
