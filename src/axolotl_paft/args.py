"""The plugin's config keys (flat, `paft_` prefixed), their defaults and checks.

Axolotl merges this model into its own config schema, so every check here runs in
`axolotl train`'s config validation, before any model or data set is loaded.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from axolotl_paft.const import PEFT_DEFAULT_ADAPTER

L1Mode = Literal["loss", "proximal"]
PreferenceLoss = Literal["dpo", "ipo", "orpo"]
MergeDtype = Literal["float32", "bfloat16", "float16"]

SUPPORTED_MERGE_METHODS = (
    "ties",
    "dare_ties",
    "dare_linear",
    "task_arithmetic",
    "linear",
    "slerp",
    "nuslerp",
    "breadcrumbs",
    "breadcrumbs_ties",
    "della",
    "della_linear",
)
# First = the method the report's merge command names: task arithmetic had the
# best mean score at default parameters on the miniature world, TIES the worst
# preference accuracy (it drops the preference delta; docs/evidence.md).
DEFAULT_MERGE_METHODS = (
    "task_arithmetic",
    "dare_ties",
    "ties",
    "dare_linear",
    "linear",
    "slerp",
    "breadcrumbs_ties",
    "della",
)
DEFAULT_SEARCH_METHODS = (
    "ties",
    "dare_ties",
    "task_arithmetic",
    "linear",
    "slerp",
    "breadcrumbs_ties",
    "della",
)
LORA_ADAPTERS = ("lora", "qlora")


class PAFTArgs(BaseModel):
    """Config keys of `axolotl_paft.PAFTPlugin`."""

    paft_parallel: bool = Field(
        default=False,
        description=(
            "Train the SFT LoRA (on `datasets`) and a preference LoRA (on "
            "`paft_preference_datasets`) together on one base model."
        ),
    )
    paft_preference_datasets: list[dict] | None = Field(
        default=None,
        description=(
            "Parallel mode's preference data: entries exactly as under `datasets` "
            "of an `rl: dpo` config (chatml.*, chat_template.default, llama3.*, ...)."
        ),
    )
    paft_preference_loss: PreferenceLoss = Field(
        default="dpo",
        description="Preference loss: `dpo` (sigmoid), `ipo` or `orpo`, as in TRL.",
    )
    paft_preference_beta: float = Field(
        default=0.1, gt=0, description="beta of the preference loss (TRL's `beta`)."
    )
    paft_preference_learning_rate: float | None = Field(
        default=None,
        gt=0,
        description="Learning rate of the preference adapter; unset: `learning_rate`.",
    )
    paft_preference_micro_batch_size: int | None = Field(
        default=None,
        ge=1,
        description="Preference pairs per micro-batch; unset: `micro_batch_size`.",
    )
    paft_sft_adapter_name: str = Field(
        default="sft",
        description="Parallel mode: name (and output_dir subfolder) of the SFT LoRA.",
    )
    paft_preference_adapter_name: str = Field(
        default="dpo",
        description="Parallel mode: name (and subfolder) of the preference LoRA.",
    )
    paft_l1_lambda: float = Field(
        default=0.0,
        ge=0,
        description=(
            "Strength of the L1 penalty on the SFT LoRA weights (A and B); 0, the "
            "default, turns it off: on the miniature world (docs/evidence.md) no "
            "strength made the merges reliably better and `loss` 1e-3 made TIES "
            "worse. To try it: 1e-3 (`loss`) or 0.3 (`proximal`) keep the SFT skill."
        ),
    )
    paft_l1_mode: L1Mode = Field(
        default="loss",
        description=(
            "`loss`: add lambda*sign(w), the gradient of lambda*||w||_1, once per "
            "optimizer step (paper-faithful). `proximal`: after each optimizer step "
            "shrink every weight towards 0 by lr*lambda and clip at 0 (exact zeros)."
        ),
    )
    paft_preference_l1_lambda: float = Field(
        default=0.0,
        ge=0,
        description=(
            "Parallel mode: L1 strength on the preference LoRA too (same mode as the "
            "SFT one; logged as paft/<preference name>/...). 0: off, as in the paper."
        ),
    )
    paft_sparsity_threshold: float = Field(
        default=0.01,
        ge=0,
        lt=1,
        description=(
            "An entry of a module's delta scale*B@A counts as zero when its magnitude "
            "is at most this fraction of the largest magnitude in that delta."
        ),
    )
    paft_report: bool = Field(
        default=True,
        description="Write paft_report.{json,md,png} into output_dir after training.",
    )
    paft_preference_adapter: str | None = Field(
        default=None,
        description=(
            "Folder of a preference (DPO/ORPO) LoRA trained separately from the same "
            "base; the emitted mergekit configs then merge both deltas."
        ),
    )
    paft_merge_methods: list[str] = Field(
        default=list(DEFAULT_MERGE_METHODS),
        description="mergekit methods to write configs for ([] writes none).",
    )
    paft_merge_run: str | None = Field(
        default=None,
        description=(
            "Also run this method's config through mergekit's Python API after "
            "training, into output_dir/merged/<method>."
        ),
    )
    paft_merge_sft_weight: float = Field(
        default=1.0, description="mergekit `weight` of the SFT delta."
    )
    paft_merge_preference_weight: float = Field(
        default=1.0, description="mergekit `weight` of the preference delta."
    )
    paft_merge_density: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Fraction of each delta kept by ties/dare/breadcrumbs/della.",
    )
    paft_merge_epsilon: float = Field(
        default=0.1,
        gt=0,
        lt=1,
        description="DELLA's spread of keep-probabilities around `density`.",
    )
    paft_merge_gamma: float = Field(
        default=0.01,
        ge=0,
        lt=1,
        description="Breadcrumbs: fraction of largest-magnitude outliers removed.",
    )
    paft_merge_lambda: float = Field(
        default=1.0,
        description="Scale of the merged delta (task-arithmetic family).",
    )
    paft_merge_normalize: bool | None = Field(
        default=None,
        description="Divide by the sum of weights; unset keeps each method's default.",
    )
    paft_merge_slerp_t: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="SLERP position: 0 = the SFT model, 1 = the preference model.",
    )
    paft_merge_dtype: MergeDtype = Field(
        default="bfloat16", description="dtype mergekit computes the merge in."
    )
    paft_merge_search: bool = Field(
        default=False,
        description=(
            "After training with two deltas (parallel mode or "
            "paft_preference_adapter), search merge method, both weights and "
            "density on held-out data within paft_merge_search_budget merges, each "
            "built by mergekit; writes mergekit/best.yml, search/leaderboard."
            "{json,md}, search/search.png and the winner in search/merged/best."
        ),
    )
    paft_merge_search_budget: int = Field(
        default=24,
        ge=1,
        description="paft_merge_search: most merge candidates built and scored.",
    )
    paft_merge_search_methods: list[str] = Field(
        default=list(DEFAULT_SEARCH_METHODS),
        description="paft_merge_search: the mergekit methods searched.",
    )
    paft_merge_search_sft_data: str | None = Field(
        default=None,
        description=(
            "paft_merge_search: held-out SFT rows (JSONL, `messages`); the skill "
            "score is the greedy exact match of their last answer."
        ),
    )
    paft_merge_search_preference_data: str | None = Field(
        default=None,
        description=(
            "paft_merge_search: held-out preference rows (JSONL: question, chosen, "
            "rejected); scored by implicit-reward accuracy against the base."
        ),
    )
    paft_merge_search_rows: int = Field(
        default=64,
        ge=1,
        description="paft_merge_search: rows read from each held-out file.",
    )

    @field_validator("paft_merge_methods")
    @classmethod
    def _known_methods(cls, methods: list[str]) -> list[str]:
        unknown = [m for m in methods if m not in SUPPORTED_MERGE_METHODS]
        if unknown:
            raise ValueError(
                f"paft_merge_methods: unknown method(s) {unknown}; "
                f"supported: {list(SUPPORTED_MERGE_METHODS)}"
            )
        if len(set(methods)) != len(methods):
            raise ValueError(f"paft_merge_methods: duplicate entries in {methods}")
        return methods

    @field_validator(
        "paft_merge_sft_weight", "paft_merge_preference_weight", "paft_merge_lambda"
    )
    @classmethod
    def _finite(cls, value: float, info) -> float:
        if not math.isfinite(value):
            raise ValueError(f"{info.field_name} must be a finite number, got {value}")
        return value

    @field_validator("paft_preference_adapter")
    @classmethod
    def _adapter_folder(cls, path: str | None) -> str | None:
        if path is not None and not (Path(path) / "adapter_config.json").is_file():
            raise ValueError(
                f"paft_preference_adapter: {path!r} is not a PEFT adapter folder "
                "(no adapter_config.json)"
            )
        return path

    @model_validator(mode="before")
    @classmethod
    def _check_against_run(cls, data: dict) -> dict:
        """Cross-key checks against Axolotl's own keys (adapter, rl, deepspeed...)."""
        if not isinstance(data, dict) or not _plugin_enabled(data):
            return data
        if data.get("adapter") not in LORA_ADAPTERS:
            raise ValueError(
                "paft: the PAFT plugin trains LoRA deltas; set `adapter: lora` or "
                f"`adapter: qlora` (got adapter: {data.get('adapter')!r})"
            )
        if data.get("rl"):
            raise ValueError(
                f"paft: `rl: {data['rl']}` is not an SFT run; the L1 sparsity of "
                "paft_l1_lambda applies to the SFT LoRA. Remove `rl` from this config."
            )
        l1_on = (data.get("paft_l1_lambda") or 0) > 0
        if l1_on and data.get("deepspeed"):
            raise ValueError(
                "paft_l1_lambda: DeepSpeed keeps gradients and weights in its own "
                "partitions, where the L1 step cannot reach them; use DDP or FSDP, "
                "or set paft_l1_lambda: 0"
            )
        if data.get("paft_parallel"):
            _check_parallel(data)
        two_deltas = data.get("paft_parallel") or data.get("paft_preference_adapter")
        if data.get("paft_merge_search") and not two_deltas:
            raise ValueError(
                "paft_merge_search: searches merges of two deltas; set paft_parallel "
                "(with paft_preference_datasets) or paft_preference_adapter"
            )
        methods = data.get("paft_merge_methods", DEFAULT_MERGE_METHODS)
        if methods:
            _check_merge_paths(data)
        return data

    @model_validator(mode="after")
    def _merge_run_is_emitted(self):
        run = self.paft_merge_run
        if run is not None and run not in self.paft_merge_methods:
            raise ValueError(
                f"paft_merge_run: {run!r} is not among paft_merge_methods "
                f"{self.paft_merge_methods}"
            )
        return self

    @model_validator(mode="after")
    def _search_inputs(self):
        if not self.paft_merge_search:
            return self
        unfit = [
            m for m in self.paft_merge_search_methods if m not in DEFAULT_SEARCH_METHODS
        ]
        if unfit or not self.paft_merge_search_methods:
            raise ValueError(
                f"paft_merge_search_methods: {unfit or 'empty'}; searchable: "
                f"{list(DEFAULT_SEARCH_METHODS)}"
            )
        for key in ("paft_merge_search_sft_data", "paft_merge_search_preference_data"):
            path = getattr(self, key)
            if path is None or not Path(path).is_file():
                raise ValueError(
                    f"{key}: paft_merge_search needs held-out data in a JSONL file "
                    f"(got {path!r})"
                )
        return self

    @model_validator(mode="after")
    def _della_bounds(self):
        """mergekit only finds a bad DELLA epsilon while merging; find it here."""
        density, epsilon = self.paft_merge_density, self.paft_merge_epsilon
        della = {"della", "della_linear"} & set(self.paft_merge_methods)
        if della and not (density - epsilon > 0 and density + epsilon < 1):
            raise ValueError(
                "paft_merge_epsilon: DELLA needs 0 < density - epsilon and "
                f"density + epsilon < 1 (density {density}, epsilon {epsilon})"
            )
        return self

    def resolved_l1_lambda(self) -> float:
        """The L1 strength in force (0: off)."""
        return self.paft_l1_lambda


def _plugin_enabled(data: dict) -> bool:
    plugins = data.get("plugins") or []
    return any(str(p).startswith("axolotl_paft") for p in plugins)


def _check_merge_paths(data: dict) -> None:
    """mergekit splits model references on `+` and `@`: refuse such paths early."""
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


LORA_KERNELS = (
    "lora_mlp_kernel",
    "lora_qkv_kernel",
    "lora_o_kernel",
    "lora_embedding_kernel",
)


def _check_parallel(data: dict) -> None:
    """Parallel mode's own checks."""
    entries = data.get("paft_preference_datasets")
    if not entries:
        raise ValueError(
            "paft_preference_datasets: parallel mode (paft_parallel: true) needs "
            "preference data, e.g. [{path: prefs.jsonl, type: chatml.intel}]"
        )
    if data.get("paft_preference_adapter"):
        raise ValueError(
            "paft_preference_adapter: parallel mode trains its own preference "
            "adapter; remove paft_preference_adapter or paft_parallel"
        )
    sft = data.get("paft_sft_adapter_name", "sft")
    preference = data.get("paft_preference_adapter_name", "dpo")
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
    for key in ("deepspeed", "fsdp", "fsdp_config"):
        if data.get(key):
            raise ValueError(
                f"paft_parallel: `{key}` is not supported in parallel mode (single "
                "process or DDP); see the README's notes on sharded training"
            )
    for key in LORA_KERNELS:
        if data.get(key):
            raise ValueError(
                f"{key}: Axolotl's fused LoRA kernels read only the first active "
                "adapter; set it to false for parallel mode"
            )
    from axolotl_paft.data import check_preference_entries

    check_preference_entries(entries)
    _check_output_dir_is_ours(data, [sft, preference])


def _check_output_dir_is_ours(data: dict, adapters: list[str]) -> None:
    """Never let a new run silently overwrite another run's adapters."""
    output_dir = Path(data.get("output_dir") or "./model-out")
    resuming = data.get("resume_from_checkpoint") or (
        data.get("auto_resume_from_checkpoints")
        and any(output_dir.glob("checkpoint-*"))
    )
    existing = [
        str(output_dir / a)
        for a in adapters
        if (output_dir / a / "adapter_model.safetensors").exists()
    ]
    if existing and not resuming:
        raise ValueError(
            f"output_dir: {existing} already hold adapters of an earlier run; "
            "choose a new output_dir, delete them, or resume that run "
            "(resume_from_checkpoint / auto_resume_from_checkpoints)"
        )
