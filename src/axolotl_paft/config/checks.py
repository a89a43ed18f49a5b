"""The rules between the `paft_` keys and against Axolotl's own config, one named
function each (as Axolotl's integrations name theirs, e.g. `liger/args.py`).

`PAFTArgs` runs them in Axolotl's config validation, so that a bad config fails,
naming its key, before any model or data set loads: `check_run` on the raw config,
where Axolotl's keys sit beside ours (`RUN_RULES`, parallel mode's
`PARALLEL_RULES`), and `check_keys` on the validated keys (`KEY_RULES`). A config
with several faults sees the first rule's refusal, so the tuples keep their order.
The plugin runs the two hook-time rules itself: `check_output_dir_is_ours` when a
training run starts, `check_adapter_choice` before a model loads in the commands
that use a trained adapter. `search_split_defaults` is what the search rules
assume when a config names no held-out data; the plugin sets it before validation.
"""

from __future__ import annotations

import difflib
import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from pydantic import BaseModel

from axolotl_paft.const import PEFT_DEFAULT_ADAPTER
from axolotl_paft.merging.configs import (
    DEFAULT_MERGE_METHODS,
    DEFAULT_SEARCH_METHODS,
    base_model_reference,
    check_della_bounds,
)
from axolotl_paft.merging.export import EXACT_METHODS as EXACT_EXPORTS
from axolotl_paft.merging.lm_eval_objective import unknown_tasks
from axolotl_paft.merging.scoring import check_held_out_file

if TYPE_CHECKING:
    from axolotl_paft.config.args import PAFTArgs

LOG = logging.getLogger(f"axolotl.{__name__}")  # shown by axolotl's log config
LORA_ADAPTERS = ("lora", "qlora")
DEFAULT_OUTPUT_DIR = "./model-out"  # Axolotl's default output_dir
# The share of each side's data held out for paft_merge_search when the config
# names neither a file nor a split for it.
SEARCH_HELD_OUT = 0.05

# Axolotl options that act through the Trainer's wrapped model or its
# `training_step` and so reach only the SFT half of a parallel step: the
# preference step (trainer.py) runs its forwards on the unwrapped PEFT model,
# after `training_step` returned. Refused until they cover both steps.
PARALLEL_ONLY_SFT_STEP = {
    "torch_compile": (
        "the Trainer compiles the model it wraps, and the preference forwards run "
        "on the unwrapped PEFT model, so half of every step (and the DPO "
        "reference forward) would run uncompiled"
    ),
    "activation_offloading": (
        "Axolotl offloads activations inside the Trainer's training_step, which "
        "covers the SFT step only; the preference step's activations (chosen and "
        "rejected, twice the rows) would stay on the GPU"
    ),
}
LORA_KERNELS = (
    "lora_mlp_kernel",
    "lora_qkv_kernel",
    "lora_o_kernel",
    "lora_embedding_kernel",
)
# Axolotl keys that shard the model or the sequence across processes.
MODEL_PARALLEL_KEYS = (
    "context_parallel_size",
    "tensor_parallel_size",
    "expert_parallel_size",
)


def plugin_enabled(data: dict) -> bool:
    """The config lists the PAFT plugin (the rules on Axolotl's keys apply)."""
    plugins = data.get("plugins") or []
    return any(str(p).startswith("axolotl_paft") for p in plugins)


def check_known_keys(data: dict, known: list[str]) -> None:
    """pydantic drops unknown keys silently, so a misspelt `paft_` key would leave
    its default in force without a word: refuse it, naming the nearest key."""
    unknown = [k for k in data if str(k).startswith("paft_") and k not in known]
    if unknown:
        raise ValueError("; ".join(_unknown_key_message(k, known) for k in unknown))


def typed_keys(data: dict, fields: dict) -> dict:
    """The `paft_` keys of a raw config validated one by one against their
    fields' types and bounds, so that the rules below compare numbers and a bad
    value fails naming its key and what it allows. YAML reads `1e-4` (no dot)
    as the string "1e-4": it is taken as the number, as pydantic and Axolotl's
    own float keys (`learning_rate: 1e-4`) take it."""
    from pydantic import ValidationError

    typed = dict(data)
    for key, value in data.items():
        field = fields.get(key)
        if field is None or value is None:
            continue
        try:
            typed[key] = _adapter(key, field).validate_python(value)
        except ValidationError as err:
            reasons = "; ".join(e["msg"] for e in err.errors())
            raise ValueError(f"{key}: {reasons} (got {value!r})") from None
    return typed


@functools.cache
def _adapter(key: str, field):
    from pydantic import TypeAdapter

    annotated = field.annotation
    if field.metadata:
        annotated = Annotated[field.annotation, *field.metadata]
    return TypeAdapter(annotated)


def _unknown_key_message(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{key}: not a key of the PAFT plugin{hint}"


def _names(data) -> tuple[str, str]:
    """(SFT adapter name, preference adapter name) of a raw or validated config."""
    from axolotl_paft.config.args import PAFTArgs  # here: args imports checks

    fields = PAFTArgs.model_fields
    return (
        data.get("paft_sft_adapter_name") or fields["paft_sft_adapter_name"].default,
        data.get("paft_preference_adapter_name")
        or fields["paft_preference_adapter_name"].default,
    )


def _sft_split(data: dict) -> bool:
    """The config holds out SFT rows (Axolotl's eval split)."""
    return bool(data.get("val_set_size") or data.get("test_datasets"))


def _preference_split(data: dict) -> bool:
    """The config holds out preference rows (parallel mode's held-out split)."""
    return bool(
        data.get("paft_preference_val_set_size")
        or data.get("paft_preference_test_datasets")
    )


# Rules on the raw config, in the order check_run applies them.


def check_lora_adapter(data: dict) -> None:
    """The plugin penalises, measures and merges LoRA deltas: no LoRA, nothing."""
    if data.get("adapter") not in LORA_ADAPTERS:
        raise ValueError(
            "paft: the PAFT plugin trains LoRA deltas; set `adapter: lora` or "
            f"`adapter: qlora` (got adapter: {data.get('adapter')!r})"
        )


def check_sft_run(data: dict) -> None:
    """The config trains the SFT LoRA (parallel mode adds the preference one)."""
    if data.get("rl"):
        raise ValueError(
            f"paft: `rl: {data['rl']}` is not an SFT run; the L1 sparsity of "
            "paft_l1_lambda applies to the SFT LoRA. Remove `rl` from this config."
        )


def check_l1_without_deepspeed(data: dict) -> None:
    """The L1 step edits weights and gradients, which DeepSpeed partitions."""
    if (data.get("paft_l1_lambda") or 0) > 0 and data.get("deepspeed"):
        raise ValueError(
            "paft_l1_lambda: DeepSpeed keeps gradients and weights in its own "
            "partitions, where the L1 step cannot reach them; use DDP or FSDP, "
            "or set paft_l1_lambda: 0"
        )


def check_parallel(data: dict) -> None:
    """Parallel mode's rules (`PARALLEL_RULES`), in order."""
    if data.get("paft_parallel"):
        _apply(PARALLEL_RULES, data)


def check_parallel_keys_unused(data: dict) -> None:
    """Outside parallel mode, a parallel-only key (every ParallelArgs key and the
    preference adapter's L1) is a mistake, not a no-op."""
    if data.get("paft_parallel"):
        return
    from axolotl_paft.config.args import PAFTArgs, ParallelArgs  # as in _names

    parallel_only = [k for k in ParallelArgs.model_fields if k != "paft_parallel"]
    for key in [*parallel_only, "paft_preference_l1_lambda"]:
        default = PAFTArgs.model_fields[key].default
        if data.get(key) not in (None, default):
            raise ValueError(
                f"{key}: only parallel mode reads this key; set paft_parallel: true "
                "or remove it"
            )


def check_search_has_two_deltas(data: dict) -> None:
    """The search merges an SFT and a preference delta: it needs both."""
    two_deltas = data.get("paft_parallel") or data.get("paft_preference_adapter")
    if data.get("paft_merge_search") and not two_deltas:
        raise ValueError(
            "paft_merge_search: searches merges of two deltas; set paft_parallel "
            "(with paft_preference_datasets) or paft_preference_adapter"
        )


def check_search_sft_rows(data: dict) -> None:
    """The search scores the SFT skill on held-out rows: a file, or the run's split."""
    if not data.get("paft_merge_search"):
        return
    if not (data.get("paft_merge_search_sft_data") or _sft_split(data)):
        raise ValueError(
            "paft_merge_search_sft_data: the search scores the SFT skill on held-out "
            "rows: name a JSONL file (`messages`), or hold out part of the SFT data "
            "(val_set_size > 0 or test_datasets; unset, val_set_size defaults to "
            f"{SEARCH_HELD_OUT})"
        )


def check_search_preference_rows(data: dict) -> None:
    """The search scores the preference on held-out pairs: a file, or parallel
    mode's split (a separately trained adapter brings no data)."""
    if not data.get("paft_merge_search"):
        return
    preference_split = data.get("paft_parallel") and _preference_split(data)
    if not (data.get("paft_merge_search_preference_data") or preference_split):
        where = (
            "or hold out part of paft_preference_datasets (paft_preference_val_set_"
            "size > 0 or paft_preference_test_datasets; unset, it defaults to "
            f"{SEARCH_HELD_OUT})"
            if data.get("paft_parallel")
            else "(with paft_preference_adapter the run has no preference data)"
        )
        raise ValueError(
            "paft_merge_search_preference_data: the search scores preference "
            "accuracy on held-out pairs: name a JSONL file (question or messages, "
            f"chosen, rejected) {where}"
        )


def check_merge_paths(data: dict) -> None:
    """mergekit splits model references on `+` and `@`: refuse such paths early."""
    if not data.get("paft_merge_methods", DEFAULT_MERGE_METHODS):
        return
    for key in ("base_model", "output_dir", "paft_preference_adapter"):
        value = data.get(key)
        if not value:
            continue
        is_path = key != "base_model" or Path(value).exists()
        written = str(Path(value).resolve()) if is_path else str(value)
        if "+" in written or "@" in written:
            raise ValueError(
                f"{key}: {value!r} contains '+' or '@', which mergekit's "
                "`base+adapter` references cannot hold; rename the folder or set "
                "paft_merge_methods: []"
            )


def check_preference_adapter_fits(data: dict) -> None:
    """A separately trained preference adapter: outside this run's output_dir
    (which training writes), and trained on this base (`adapter_fits_base`)."""
    adapter = data.get("paft_preference_adapter")
    if not adapter:
        return
    try:
        adapter_outside(
            "output_dir", data.get("output_dir") or DEFAULT_OUTPUT_DIR, adapter
        )
        adapter_fits_base(
            adapter, data.get("base_model"), data.get("revision_of_model")
        )
    except ValueError as err:
        raise ValueError(f"paft_preference_adapter: {err}") from None


def adapter_outside(what: str, folder: str | Path, adapter: str | Path) -> None:
    """Refuse an input adapter at or inside `folder`, which the run writes (an
    SFT-only run saves its adapter into output_dir itself; merges, exports and
    the search write beside it): it would be overwritten, or merged with itself."""
    folder, path = Path(folder).resolve(), Path(adapter).resolve()
    if path == folder or path.is_relative_to(folder):
        raise ValueError(
            f"{str(adapter)!r} is inside {what} {str(folder)!r}, which this run "
            "writes (and would overwrite the adapter or merge a delta with "
            f"itself): copy the adapter out of it, or choose another {what}"
        )


def adapter_fits_base(
    adapter: str | Path, base_model: str | Path | None, revision: str | None = None
) -> None:
    """A PEFT LoRA folder whose every module is one of the base's, with that
    module's shapes (`lora_A` [r, in], `lora_B` [out, r], embeddings likewise),
    read from the adapter's safetensors header and the base's config.json (the
    model built on the meta device: no weights load). A base given by hub id is
    read from the HF cache (`configs.base_model_reference`); a base this machine
    cannot read is left to Axolotl's or transformers' own loading to name."""
    folder = Path(adapter)
    if not (folder / "adapter_config.json").is_file():
        raise ValueError(
            f"{str(adapter)!r} is not a PEFT adapter folder (no adapter_config.json)"
        )
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        raise ValueError(f"{str(adapter)!r} holds no adapter_model.safetensors")
    if not base_model:
        return
    modules = _base_modules(base_model_reference(base_model, revision))
    if modules is None:
        return
    from safetensors import safe_open

    with safe_open(weights, "pt") as tensors:
        shapes = {k: tuple(tensors.get_slice(k).get_shape()) for k in tensors.keys()}  # noqa: SIM118
    for key, shape in shapes.items():
        problem = _lora_tensor_problem(key, shape, modules)
        if problem:
            raise ValueError(
                f"{str(adapter)!r} was not trained on the base {str(base_model)!r}: "
                f"{problem}"
            )


def _base_modules(base: str) -> dict[str, tuple[int, int] | None] | None:
    """Module name -> (in, out) of the base's linear and embedding modules (None
    for other modules), from its config on the meta device; None when the base
    cannot be read here."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    try:
        config = AutoConfig.from_pretrained(base)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError, KeyError):
        return None
    modules = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            modules[name] = (module.in_features, module.out_features)
        elif isinstance(module, torch.nn.Embedding):
            modules[name] = (module.num_embeddings, module.embedding_dim)
        elif isinstance(module, Conv1D):
            modules[name] = tuple(module.weight.shape)
        else:
            modules[name] = None
    return modules


LORA_FACTORS = {  # the saved tensor's suffix -> which dimension of the base's
    ".lora_A.weight": (1, 0),  # [r, in]: dimension 1 is `in`
    ".lora_B.weight": (0, 1),  # [out, r]: dimension 0 is `out`
    ".lora_embedding_A": (1, 0),  # [r, num_embeddings]
    ".lora_embedding_B": (0, 1),  # [embedding_dim, r]
    ".lora_magnitude_vector": (0, 1),  # DoRA: [out]
    ".lora_magnitude_vector.weight": (0, 1),
}


def _lora_tensor_problem(key: str, shape: tuple, modules: dict) -> str | None:
    suffix = next((s for s in LORA_FACTORS if key.endswith(s)), None)
    if suffix is None:
        return None
    name = key[: -len(suffix)].removeprefix("base_model.model.")
    if name not in modules:
        return f"its module {name!r} is not in the base"
    sizes = modules[name]
    if sizes is None:
        return None
    axis, which = LORA_FACTORS[suffix]
    if shape[axis] != sizes[which]:
        return (
            f"{key} has shape {list(shape)}, and the base's {name} has "
            f"{('in', 'out')[which]} size {sizes[which]}"
        )
    return None


def warn_untrained_end_of_turn(data: dict) -> None:
    """A parallel run or a search whose chat template's end-of-turn token will
    not be trained (`untrained_end_of_turn`) is warned about at validation,
    naming the key to set: no model of the run would learn to stop its answer,
    and every greedy answer and end-of-turn score depends on it."""
    for problem in run_traps(data):  # none where no tokenizer or template loads
        LOG.warning("paft: %s", problem)


def run_traps(data) -> tuple[str, ...]:
    """The run's settings that make its numbers mean little, for its summary
    and report after training (warned at validation too): today the turn
    terminator that will not be trained (`untrained_end_of_turn`)."""
    if not (data.get("paft_parallel") or data.get("paft_merge_search")):
        return ()
    try:
        problem = untrained_end_of_turn(data)
    except (OSError, ValueError):
        return ()
    return (problem,) if problem else ()


def untrained_end_of_turn(data: dict) -> str | None:
    """What Axolotl's chat_template strategy will do with the turn terminator of
    each `type: chat_template` SFT dataset, as `ChatTemplateStrategy` decides
    it: with `eot_tokens` unset it trains the tokenizer's `eos_token`, which a
    template that never writes it (`chat_template: gemma3` or `llama3` on a
    base whose eos is `<eos>` or `<|end_of_text|>`) leaves untrained; a listed
    token the template does not write is dropped; `train_on_eot` (or
    `train_on_eos`) `none` trains none. None when the terminator is trained."""
    entries = [  # dicts (Axolotl's DictDefault after training), or its models
        d.model_dump() if isinstance(d, BaseModel) else d
        for d in data.get("datasets") or []
    ]
    entries = [
        d
        for d in entries
        if isinstance(d, dict) and str(d.get("type") or "").startswith("chat_template")
    ]
    if not entries:
        return None
    from axolotl.utils.chat_templates import get_chat_template_from_config
    from transformers import AutoTokenizer

    source = data.get("tokenizer_config") or data.get("base_model")
    tokenizer = AutoTokenizer.from_pretrained(
        base_model_reference(source, data.get("revision_of_model"))
    )
    for entry in entries:
        # a dataset's own template, unless tokenizer_default: the tokenizer
        # Axolotl loads carries the config's `chat_template`
        own = _choice(entry.get("chat_template"))
        entry = {**entry, "chat_template": own}
        cfg = {**data, "chat_template": _choice(data.get("chat_template"))}
        template = get_chat_template_from_config(cfg, entry, tokenizer)
        name = own or cfg["chat_template"] or "tokenizer_default"
        off = entry.get("train_on_eot") or entry.get("train_on_eos")
        if off == "none":
            return (
                f"datasets: {entry.get('path')} sets train_on_eot/train_on_eos: none, "
                "so no end-of-turn token is trained and no model of this run "
                "learns to stop its answer; unset it (default: turn)"
            )
        listed = data.get("eot_tokens")
        if listed:
            missing = [t for t in listed if t not in template]
            if missing:
                return (
                    f"eot_tokens: {missing} do not occur in chat_template {name!r}, "
                    "and Axolotl drops them untrained; list the template's own "
                    f"turn-ending token{_suggest(tokenizer, template)}"
                )
            continue
        eos = tokenizer.eos_token
        if eos and eos not in template and "eos_token" not in template:
            return (
                f"eot_tokens: unset, so Axolotl trains the tokenizer's eos_token "
                f"{eos!r} as the end of each turn, which chat_template {name!r} never "
                "writes: the turn terminator will not be trained, no model of this "
                "run learns to stop its answer, and the search's end-of-turn "
                f"scores and greedy answers mean little. Set eot_tokens"
                f"{_suggest(tokenizer, template)}"
            )
    return None


def _choice(template) -> str | None:
    """A `chat_template` value as a name, None for the tokenizer's own."""
    name = getattr(template, "value", template)
    return None if name in (None, "tokenizer_default") else name


def _suggest(tokenizer, template: str) -> str:
    """`, e.g. eot_tokens: [...]` with the tokenizer's special tokens the
    template writes (its bos excepted), or nothing."""
    specials = set(tokenizer.all_special_tokens) | {
        str(t) for t in getattr(tokenizer, "added_tokens_decoder", {}).values()
    }
    written = sorted(
        t for t in specials if t and t in template and t != tokenizer.bos_token
    )
    enders = [t for t in written if any(k in t.lower() for k in ("end", "eot"))]
    written = enders or written
    return f", e.g. eot_tokens: {written}" if written else ""


# Parallel mode's rules, in the order check_parallel applies them.


def check_preference_data(data: dict) -> None:
    """Parallel mode trains a preference LoRA: it needs preference data."""
    if not data.get("paft_preference_datasets"):
        raise ValueError(
            "paft_preference_datasets: parallel mode (paft_parallel: true) needs "
            "preference data, e.g. [{path: prefs.jsonl, type: chatml.intel}]"
        )


def check_no_preference_adapter(data: dict) -> None:
    """Parallel mode trains its own preference LoRA; a second one has no place."""
    if data.get("paft_preference_adapter"):
        raise ValueError(
            "paft_preference_adapter: parallel mode trains its own preference "
            "adapter; remove paft_preference_adapter or paft_parallel"
        )


def check_adapter_names(data: dict) -> None:
    """The two names are PEFT adapter names on one model and output_dir folders."""
    sft, preference = _names(data)
    names = {sft, preference}
    if (
        len(names) == 1
        or PEFT_DEFAULT_ADAPTER in names
        or not all(n.isidentifier() for n in names)
    ):
        raise ValueError(
            "paft_preference_adapter_name: the two adapter names must differ, be "
            f"identifiers and not {PEFT_DEFAULT_ADAPTER!r} "
            f"(got {sft!r} and {preference!r})"
        )


def check_preference_learning_rate(data: dict) -> None:
    """No fixed multiple of the SFT rate fits every DPO recipe: ask for the rate."""
    if data.get("paft_preference_learning_rate") is None:
        rate = data.get("learning_rate")
        raise ValueError(
            "paft_preference_learning_rate: parallel mode needs the preference "
            f"adapter's own rate (learning_rate {rate} is the SFT adapter's). DPO "
            "LoRA recipes train at 5e-6 to 5e-5, 4-40x below SFT LoRA rates, and the "
            "SFT rate over-trains the preference LoRA; e.g. "
            "paft_preference_learning_rate: 5.0e-6 (docs/parallel-mode.md)"
        )


def check_not_deepspeed(data: dict) -> None:
    """Parallel mode runs on one process, DDP or FSDP2; DeepSpeed is untested."""
    if data.get("deepspeed"):
        raise ValueError(
            "deepspeed: parallel mode is not supported on DeepSpeed. ZeRO keeps "
            "gradients in its own flat partitions, reduced and clipped by its engine "
            "over all parameters at once (one norm, not one per adapter), and the "
            "second backward per micro-batch (the preference adapter's) would have "
            "to go through `engine.backward`; none of it has been run (DeepSpeed "
            "was not available where this plugin is tested). Use fsdp_config "
            "(FSDP2) to shard the base, or train the two adapters in two runs"
        )


def check_not_fsdp1(data: dict) -> None:
    """Parallel mode shards with FSDP2 only."""
    if data.get("fsdp"):
        raise ValueError(
            "fsdp: the FSDP1 list is not supported (Axolotl >= 0.21 removed FSDP1); "
            "parallel mode shards with fsdp_config (FSDP2)"
        )


def check_no_cpu_ram_efficient_loading(data: dict) -> None:
    """Meta-device loading breaks the second adapter (measured, see the message)."""
    fsdp = data.get("fsdp_config") or {}
    if fsdp.get("cpu_ram_efficient_loading") or fsdp.get(
        "fsdp_cpu_ram_efficient_loading"
    ):
        raise ValueError(
            "fsdp_config.cpu_ram_efficient_loading: with it, the processes other "
            "than rank 0 build the model on the meta device, where parallel mode "
            "adds its two adapters; measured on 2 CPU processes: with DoRA the "
            "preference adapter cannot initialise there, without DoRA the SFT "
            "adapter no longer equals the run without the option (Axolotl's own "
            "single-adapter run does). Refused: set cpu_ram_efficient_loading: false"
        )


def check_no_offload_params(data: dict) -> None:
    """Parallel mode's collectives run on the mesh's device, not on the CPU."""
    fsdp = data.get("fsdp_config") or {}
    if fsdp.get("offload_params") or fsdp.get("fsdp_offload_params"):
        raise ValueError(
            "fsdp_config.offload_params: parallel mode under FSDP2 gathers adapter "
            "shards (gradient norms per adapter, sparsity metrics, final save) "
            "with collectives on the mesh's device, which CPU-offloaded shards are "
            "not on; untested, so refused: set offload_params: false"
        )


def check_options_cover_both_steps(data: dict) -> None:
    """Options that reach the SFT step only would weaken the run silently."""
    for key, why in PARALLEL_ONLY_SFT_STEP.items():
        if data.get(key):
            raise ValueError(
                f"{key}: {why}; in parallel mode it would make the run silently "
                f"weaker than a plain Axolotl run of this YAML: set {key}: false"
            )


def check_lora_kernels_off(data: dict) -> None:
    """Axolotl's fused LoRA kernels see one adapter; parallel mode has two."""
    for key in LORA_KERNELS:
        if data.get(key):
            raise ValueError(
                f"{key}: Axolotl's fused LoRA kernels read only the first active "
                "adapter; set it to false for parallel mode"
            )


def check_data_parallel_only(data: dict) -> None:
    """Parallel mode averages its adapters' gradients over data-parallel processes
    only; it splits no model or sequence."""
    for key in MODEL_PARALLEL_KEYS:
        if (data.get(key) or 1) > 1:
            raise ValueError(
                f"{key}: parallel mode splits no model or sequence across processes "
                "(its two adapters' gradients are averaged over data-parallel "
                f"processes only); set {key}: 1 or train the adapters separately"
            )


def check_no_modules_to_save(data: dict) -> None:
    """A trainable full copy of a module is no delta the plugin sees."""
    if data.get("lora_modules_to_save"):
        raise ValueError(
            "lora_modules_to_save: a trainable full copy of a module is no low-rank "
            "delta: the L1 penalty, the sparsity report and the mergekit configs "
            "would not see it. Parallel mode trains LoRA (and DoRA) deltas only; "
            "remove lora_modules_to_save (and any new tokens that need it)"
        )


def check_no_one_cycle(data: dict) -> None:
    """OneCycleLR would train the preference adapter at the SFT rate."""
    if data.get("lr_scheduler") == "one_cycle":
        raise ValueError(
            "lr_scheduler: one_cycle sets every optimizer group to the same peak "
            "rate (OneCycleLR's max_lr = learning_rate), which would train the "
            "preference adapter at the SFT rate; use cosine, linear or constant"
        )


def check_no_rex_floor(data: dict) -> None:
    """REX's floor is one absolute rate for both adapters' optimizer groups."""
    if data.get("lr_scheduler") == "rex" and data.get("cosine_min_lr_ratio"):
        raise ValueError(
            "cosine_min_lr_ratio: with lr_scheduler: rex it is one absolute floor "
            "for every optimizer group, the preference adapter's too; unset it or "
            "use lr_scheduler: cosine"
        )


def check_preference_rows(data: dict) -> None:
    """Unreadable preference files fail here, not after the model loaded."""
    from axolotl_paft.training.data import check_preference_entries  # loads Axolotl

    check_preference_entries(data["paft_preference_datasets"])


def check_one_preference_eval(data: dict) -> None:
    """Held-out preference rows come from a split or from files, not both."""
    if data.get("paft_preference_val_set_size") and data.get(
        "paft_preference_test_datasets"
    ):
        raise ValueError(
            "paft_preference_test_datasets: set either paft_preference_val_set_size "
            "(a split of paft_preference_datasets) or paft_preference_test_datasets, "
            "not both"
        )


def check_preference_eval_has_sft_eval(data: dict) -> None:
    """Held-out preference rows are evaluated at Axolotl's evaluations, which a
    config without SFT eval data never runs (unless the search scores them)."""
    if (
        _preference_split(data)
        and not _sft_split(data)
        and not data.get("paft_merge_search")
    ):
        raise ValueError(
            "paft_preference_val_set_size: held-out preference rows are evaluated "
            "at Axolotl's evaluations, and this config has none: set val_set_size "
            "or test_datasets (and eval_steps) for the SFT side too (or "
            "paft_merge_search, which scores merges on them)"
        )


def check_preference_test_rows(data: dict) -> None:
    """Unreadable held-out preference files fail here, not after the model loaded."""
    from axolotl_paft.training.data import check_preference_entries  # loads Axolotl

    test = data.get("paft_preference_test_datasets")
    if test:
        check_preference_entries(test, key="paft_preference_test_datasets")


def check_merge_lora_adapter(data: dict) -> None:
    """`axolotl merge-lora` on a parallel-mode config merges one named adapter."""
    if data.get("merge_lora"):
        check_adapter_choice(data, _names(data), command="axolotl merge-lora")


def check_merge_lora_output_free(data: dict) -> None:
    """`axolotl merge-lora` would overwrite an earlier merged model."""
    if not data.get("merge_lora"):
        return
    merged = Path(data.get("output_dir") or DEFAULT_OUTPUT_DIR) / "merged"
    if (merged / "config.json").exists():
        raise ValueError(
            f"output_dir: axolotl merge-lora writes {merged}, which already "
            "holds a merged model; pass another --output-dir"
        )


# Rules between the validated keys, in the order check_keys applies them.


def check_merge_run_is_written(args: PAFTArgs) -> None:
    """paft_merge_run runs one of the configs written, so it must be among them."""
    run = args.paft_merge_run
    if run is not None and run not in args.paft_merge_methods:
        raise ValueError(
            f"paft_merge_run: {run!r} is not among paft_merge_methods "
            f"{args.paft_merge_methods}"
        )


def check_something_to_export(args: PAFTArgs) -> None:
    """An adapter export is of the search's winner or of the method the user
    named (`paft_merge_run`), never of a config nobody chose."""
    if args.paft_merge_export == "model" or args.paft_merge_search:
        return
    if args.paft_merge_run is None:
        exact = [m for m in args.paft_merge_methods if m in EXACT_EXPORTS]
        named = (
            f"set paft_merge_run to one of {args.paft_merge_methods}"
            + (f" ({', '.join(exact)}: an exact adapter)" if exact else "")
            if args.paft_merge_methods
            else "set paft_merge_search: true, or paft_merge_methods and paft_merge_run"
        )
        if args.paft_merge_methods:
            named += ", or paft_merge_search: true"
        raise ValueError(
            f"paft_merge_export: {args.paft_merge_export!r} exports the search's "
            "winner or the method paft_merge_run names, and this config has "
            f"neither: {named}"
        )


def check_search_methods(args: PAFTArgs) -> None:
    """The search tries its methods on a grid; not every mergekit method fits."""
    if not args.paft_merge_search:
        return
    methods = args.paft_merge_search_methods
    unfit = [m for m in methods if m not in DEFAULT_SEARCH_METHODS]
    if unfit or not methods:
        raise ValueError(
            f"paft_merge_search_methods: {unfit or 'empty'}; searchable: "
            f"{list(DEFAULT_SEARCH_METHODS)}"
        )


def check_search_files(args: PAFTArgs) -> None:
    """A held-out file the scorer would misread (none, empty, a bad line, a row
    of the wrong shape) fails here, not after training, naming the line."""
    if not args.paft_merge_search:
        return
    sides = {
        "paft_merge_search_sft_data": "skill",
        "paft_merge_search_preference_data": "preference",
    }
    for key, side in sides.items():
        path = getattr(args, key)
        if path is not None:
            try:
                check_held_out_file(path, side)
            except ValueError as err:
                raise ValueError(f"{key}: {err}") from None


def check_lm_eval_include_path(args: PAFTArgs) -> None:
    """A task folder that does not exist fails here, not after training."""
    folder = args.paft_merge_search_lm_eval_include_path
    if args.paft_merge_search and folder is not None and not Path(folder).exists():
        raise ValueError(
            f"paft_merge_search_lm_eval_include_path: no such folder {folder!r}"
        )


def check_lm_eval_tasks(args: PAFTArgs) -> None:
    """Task names lm-eval does not know fail here, not after training."""
    tasks = args.paft_merge_search_lm_eval_tasks
    if not args.paft_merge_search or tasks is None:
        return
    if not tasks:
        raise ValueError("paft_merge_search_lm_eval_tasks: empty")
    folder = args.paft_merge_search_lm_eval_include_path
    unknown = unknown_tasks(tasks, folder)
    if unknown:
        raise ValueError(
            f"paft_merge_search_lm_eval_tasks: lm-eval knows no task {unknown} "
            f"(paft_merge_search_lm_eval_include_path: {folder})"
        )


def check_della_epsilon(args: PAFTArgs) -> None:
    """mergekit only finds a bad DELLA epsilon while merging; find it here."""
    check_della_bounds(
        args.paft_merge_methods, args.paft_merge_density, args.paft_merge_epsilon
    )


PARALLEL_RULES: tuple[Callable[[dict], None], ...] = (
    check_preference_data,
    check_no_preference_adapter,
    check_adapter_names,
    check_preference_learning_rate,
    check_not_deepspeed,
    check_not_fsdp1,
    check_no_cpu_ram_efficient_loading,
    check_no_offload_params,
    check_options_cover_both_steps,
    check_lora_kernels_off,
    check_data_parallel_only,
    check_no_modules_to_save,
    check_no_one_cycle,
    check_no_rex_floor,
    check_preference_rows,
    check_one_preference_eval,
    check_preference_eval_has_sft_eval,
    check_preference_test_rows,
    check_merge_lora_adapter,
    check_merge_lora_output_free,
)
RUN_RULES: tuple[Callable[[dict], None], ...] = (
    check_lora_adapter,
    check_sft_run,
    check_l1_without_deepspeed,
    check_parallel,
    check_parallel_keys_unused,
    check_search_has_two_deltas,
    check_search_sft_rows,
    check_search_preference_rows,
    check_merge_paths,
    check_preference_adapter_fits,
    warn_untrained_end_of_turn,
)
KEY_RULES: tuple[Callable[[PAFTArgs], None], ...] = (
    check_merge_run_is_written,
    check_something_to_export,
    check_search_methods,
    check_search_files,
    check_lm_eval_include_path,
    check_lm_eval_tasks,
    check_della_epsilon,
)


def _apply(rules, config) -> None:
    for rule in rules:
        rule(config)


def check_run(data: dict) -> None:
    """`RUN_RULES` on a raw config that enables the plugin."""
    if plugin_enabled(data):
        _apply(RUN_RULES, data)


def check_keys(args: PAFTArgs) -> None:
    """`KEY_RULES` on the validated keys."""
    _apply(KEY_RULES, args)


def search_split_defaults(data: dict) -> dict[str, float]:
    """`paft_merge_search` without held-out files scores the run's own held-out
    splits; where a side has neither a file nor a split key, hold out
    SEARCH_HELD_OUT of its data (Axolotl's `val_set_size` semantics). Returns
    the keys to set; the plugin sets them before validation and logs them."""
    if not data.get("paft_merge_search"):
        return {}
    defaults = {}
    if not data.get("paft_merge_search_sft_data") and (
        data.get("val_set_size") is None and not data.get("test_datasets")
    ):
        defaults["val_set_size"] = SEARCH_HELD_OUT
    if (
        data.get("paft_parallel")
        and not data.get("paft_merge_search_preference_data")
        and data.get("paft_preference_val_set_size") is None
        and not data.get("paft_preference_test_datasets")
    ):
        defaults["paft_preference_val_set_size"] = SEARCH_HELD_OUT
    return defaults


# Rules the plugin runs at its hooks.


def check_adapter_choice(cfg, names: tuple[str, str], command: str) -> str:
    """A command that uses a trained adapter (merge-lora, inference, evaluate) on a
    parallel-mode config: `lora_model_dir` must name one adapter folder, as a
    parallel run saves none in output_dir itself (Axolotl's default there would
    load nothing, or a stale adapter of an earlier run). Returns what is loaded."""
    output_dir = Path(cfg.get("output_dir") or DEFAULT_OUTPUT_DIR)
    folders = {"SFT": output_dir / names[0], "preference": output_dir / names[1]}
    hint = (
        f"pass --lora-model-dir {folders['SFT']} (the SFT adapter) or "
        f"--lora-model-dir {folders['preference']} (the preference adapter); a "
        f"merged model (mergekit-yaml's {output_dir / 'merged' / '<method>'}) loads "
        "as base_model in a config without the PAFT plugin"
    )
    chosen = cfg.get("lora_model_dir")
    if not chosen or Path(chosen).resolve() == output_dir.resolve():
        raise ValueError(
            f"lora_model_dir: this parallel-mode config trains two adapters, saved "
            f"in {folders['SFT']} and {folders['preference']}, none in output_dir; "
            f"{command} needs one of them: {hint}"
        )
    if not (Path(chosen) / "adapter_config.json").is_file():
        raise ValueError(
            f"lora_model_dir: {chosen!r} is not a PEFT adapter folder (no "
            f"adapter_config.json); {hint}"
        )
    role = next(
        (r for r, f in folders.items() if f.resolve() == Path(chosen).resolve()), None
    )
    what = f"the {role} adapter" if role else "an adapter from outside output_dir"
    return f"loading {what} {chosen} as a plain LoRA"


def check_output_dir_is_ours(cfg, args: PAFTArgs) -> None:
    """At the start of a training run (not in the commands that use its outputs):
    never let a new run silently overwrite another run's adapters."""
    output_dir = Path(cfg.get("output_dir") or DEFAULT_OUTPUT_DIR)
    resuming = cfg.get("resume_from_checkpoint") or (
        cfg.get("auto_resume_from_checkpoints") and any(output_dir.glob("checkpoint-*"))
    )
    existing = [
        str(output_dir / a)
        for a in (args.paft_sft_adapter_name, args.paft_preference_adapter_name)
        if (output_dir / a / "adapter_model.safetensors").exists()
    ]
    if existing and not resuming:
        raise ValueError(
            f"output_dir: {existing} already hold adapters of an earlier run; "
            "choose a new output_dir, delete them, or resume that run "
            "(resume_from_checkpoint / auto_resume_from_checkpoints)"
        )
