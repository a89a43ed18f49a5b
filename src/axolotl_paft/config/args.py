"""The plugin's config keys (flat, `paft_` prefixed), their defaults and checks.

Axolotl merges this model into its own config schema, so every check here runs in
`axolotl train`'s config validation, before any model or data set is loaded.

The keys are grouped by concern, one parent class each (parallel mode, L1 and
sparsity, report, merging); `PAFTArgs` joins them, so the YAML keys stay flat.
`docs/config.md` is generated from these classes (`python -m axolotl_paft.config.doc`).
Allowed values come from the registries: preference losses from
`losses.LOSS_SPECS`, merge methods from `configs.METHOD_LAYOUTS`.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from axolotl_paft.const import DEFAULT_BUDGET, EXPORTS, PEFT_DEFAULT_ADAPTER
from axolotl_paft.merging.configs import (
    DEFAULT_MERGE_METHODS,
    DEFAULT_SEARCH_METHODS,
    MERGE_DEFAULTS,
    SUPPORTED_MERGE_METHODS,
    MergeSettings,
    check_della_bounds,
)
from axolotl_paft.merging.lm_eval_objective import (
    EVOLVE_DEFAULTS,
    LmEvalObjective,
    TaskConfiguration,
    unknown_tasks,
)
from axolotl_paft.merging.scoring import (
    DEFAULT_PREFERENCE_MEASURE,
    FREE_FORM_MEASURE,
    MEASURES,
    PREFERENCE_MEASURES,
    SHORT_ANSWER_TOKENS,
    SKILL_MEASURES,
)
from axolotl_paft.training.losses import PREFERENCE_LOSSES

L1Mode = Literal["loss", "proximal"]
SparsityLogging = Literal["penalised", "all", "off"]
PreferenceLoss = Literal[PREFERENCE_LOSSES]
SkillMeasure = Literal[("auto", *SKILL_MEASURES)]
PreferenceMeasure = Literal[PREFERENCE_MEASURES]
MergeDtype = Literal["float32", "bfloat16", "float16"]
MergeExport = Literal[EXPORTS]

LORA_ADAPTERS = ("lora", "qlora")
# The share of each side's data held out for paft_merge_search when the config
# names neither a file nor a split for it.
SEARCH_HELD_OUT = 0.05
# Held-out rows scored per side at most (docs/merge-search.md: interval widths).
SEARCH_ROWS = 64


class ParallelArgs(BaseModel):
    """Parallel mode: an SFT and a preference LoRA trained together on one base."""

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
    paft_preference_val_set_size: float = Field(
        default=0,
        ge=0,
        description=(
            "Parallel mode: preference rows held out for evaluation, as Axolotl's "
            "`val_set_size` (a fraction below 1, a row count from 1). Evaluated with "
            "the preference adapter at each evaluation, logged as "
            "`eval_<adapter>/rewards/accuracies`, ... (TRL's names)."
        ),
    )
    paft_preference_test_datasets: list[dict] | None = Field(
        default=None,
        description=(
            "Parallel mode: held-out preference data instead of a split, entries as "
            "`paft_preference_datasets` (as `test_datasets` of an `rl: dpo` config)."
        ),
    )
    paft_preference_loss: PreferenceLoss = Field(
        default="dpo",
        description="Preference loss, as TRL computes it (`dpo` is the sigmoid loss).",
    )
    paft_preference_beta: float = Field(
        default=0.1, gt=0, description="beta of the preference loss (TRL's `beta`)."
    )
    paft_preference_learning_rate: float | None = Field(
        default=None,
        gt=0,
        description=(
            "Learning rate of the preference adapter; parallel mode requires it. "
            "No multiple of `learning_rate` fits every recipe (DPO LoRA recipes "
            "train at 5e-6 to 5e-5 where SFT LoRA trains at 1e-4 to 2e-4), and the "
            "SFT rate, the old fallback, is another recipe: on SmolLM2-135M at r 64 "
            "it moved the held-out reward margin to 2.4 in 12 steps against 0.06 "
            "at 5e-6 (benchmarks/results_real_defaults.md)."
        ),
    )
    paft_preference_micro_batch_size: int | None = Field(
        default=None,
        ge=1,
        description="Preference pairs per micro-batch; unset: `micro_batch_size`.",
    )
    paft_preference_cache_reference: bool = Field(
        default=True,
        description=(
            "Keep each preference row's reference log-probs (DPO, IPO) from its "
            "first use and reuse them on later passes over the data: they depend "
            "only on the frozen base and the row. false: one reference forward per "
            "micro-batch, every time (a base with dropout, say)."
        ),
    )
    paft_sft_adapter_name: str = Field(
        default="sft",
        description="Parallel mode: name (and output_dir subfolder) of the SFT LoRA.",
    )
    paft_preference_adapter_name: str = Field(
        default="dpo",
        description="Parallel mode: name (and subfolder) of the preference LoRA.",
    )


class L1Args(BaseModel):
    """L1 and sparsity: the penalty on the SFT LoRA and how its delta is measured."""

    paft_l1_lambda: float = Field(
        default=0.0,
        ge=0,
        description=(
            "Strength of the L1 penalty on the SFT LoRA weights (A and B); 0, the "
            "default, turns it off: on the miniature world (docs/evidence.md) one "
            "setting of 8 helped one merge method of 7 (TIES, `proximal` 0.03, by "
            "re-weighting the deltas as the merge search does without L1) and 21 "
            "made merges worse; with `paft_merge_search` no setting changed the "
            "searched merge significantly. Up to 1e-3 (`loss`) or 1 (`proximal`) "
            "the SFT skill itself is kept. With L1 on, run the merge search: an "
            "L1 adapter's default merges mostly keep none of the skill."
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
            "SFT one; logged as <preference name>/...). 0: off, as in the paper."
        ),
    )
    paft_log_sparsity: SparsityLogging = Field(
        default="penalised",
        description=(
            "Which adapters' sparsity measures go into the training logs at each log "
            "step (<adapter>/sparsity, ...): `penalised`: those with an L1 lambda > 0 "
            "(each measure is a dense scale*B@A per module, main process only); "
            "`all`: every adapter; `off`: none. The report after training measures "
            "every adapter whatever this says."
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


class ReportArgs(BaseModel):
    """Report: the sparsity report written after training."""

    paft_report: bool = Field(
        default=True,
        description="Write paft_report.{json,md,png} into output_dir after training.",
    )


class MergeArgs(BaseModel):
    """Merging: the mergekit configs written (and optionally run) after training."""

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
        default=MERGE_DEFAULTS.sft_weight,
        description="mergekit `weight` of the SFT delta.",
    )
    paft_merge_preference_weight: float = Field(
        default=MERGE_DEFAULTS.preference_weight,
        description="mergekit `weight` of the preference delta.",
    )
    paft_merge_density: float = Field(
        default=MERGE_DEFAULTS.density,
        gt=0,
        le=1,
        description="Fraction of each delta kept by ties/dare/breadcrumbs/della.",
    )
    paft_merge_epsilon: float = Field(
        default=MERGE_DEFAULTS.epsilon,
        gt=0,
        lt=1,
        description="DELLA's spread of keep-probabilities around `density`.",
    )
    paft_merge_gamma: float = Field(
        default=MERGE_DEFAULTS.gamma,
        ge=0,
        lt=1,
        description="Breadcrumbs: fraction of largest-magnitude outliers removed.",
    )
    paft_merge_lambda: float = Field(
        default=MERGE_DEFAULTS.lambda_,
        description="Scale of the merged delta (task-arithmetic family).",
    )
    paft_merge_normalize: bool | None = Field(
        default=MERGE_DEFAULTS.normalize,
        description="Divide by the sum of weights; unset keeps each method's default.",
    )
    paft_merge_slerp_t: float = Field(
        default=MERGE_DEFAULTS.slerp_t,
        ge=0,
        le=1,
        description="SLERP position: 0 = the SFT model, 1 = the preference model.",
    )
    paft_merge_dtype: MergeDtype = Field(
        default=MERGE_DEFAULTS.dtype,
        description="dtype mergekit computes the merge in.",
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
        default=DEFAULT_BUDGET,
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
            "paft_merge_search: held-out SFT rows (JSONL, `messages`, rendered "
            "with the run's tokenizer and chat template); the skill is their last "
            "answer (paft_merge_search_skill_measure). Unset: the run's "
            "own SFT eval split (val_set_size or test_datasets, as Axolotl tokenized "
            f"it; val_set_size defaults to {SEARCH_HELD_OUT} when neither is set)."
        ),
    )
    paft_merge_search_preference_data: str | None = Field(
        default=None,
        description=(
            "paft_merge_search: held-out preference rows (JSONL: question, chosen, "
            "rejected, as chatml.intel; or messages, chosen, rejected, as "
            "chat_template.default); scored by "
            "paft_merge_search_preference_measure. Unset, "
            "in parallel mode: the run's held-out preference split "
            "(paft_preference_val_set_size or paft_preference_test_datasets; the "
            f"former defaults to {SEARCH_HELD_OUT} when neither is set)."
        ),
    )
    paft_merge_search_rows: int = Field(
        default=SEARCH_ROWS,
        ge=1,
        description=(
            "paft_merge_search: most held-out rows scored per side (from a file "
            "or the run's split). See docs/merge-search.md for the interval "
            "widths by rows."
        ),
    )
    paft_merge_search_skill_measure: SkillMeasure = Field(
        default="auto",
        description=(
            "paft_merge_search: how the skill is scored on the held-out answers: "
            + "; ".join(f"{n}: {MEASURES[n].description}" for n in SKILL_MEASURES)
            + f". auto: exact_match where the median answer is at most "
            f"{SHORT_ANSWER_TOKENS} tokens, {FREE_FORM_MEASURE} otherwise."
        ),
    )
    paft_merge_search_preference_measure: PreferenceMeasure = Field(
        default=DEFAULT_PREFERENCE_MEASURE,
        description=(
            "paft_merge_search: how the preference is scored on the held-out "
            "pairs: "
            + "; ".join(f"{n}: {MEASURES[n].description}" for n in PREFERENCE_MEASURES)
            + "."
        ),
    )
    paft_merge_search_lm_eval_tasks: list[TaskConfiguration] | None = Field(
        default=None,
        description=(
            "paft_merge_search: rank candidates by lm-evaluation-harness tasks "
            "instead of the held-out rows' balanced objective, as mergekit-evolve "
            "takes them: each a task name or {name, weight (1), metric "
            "(`acc,none`)}; the score is the sum of weight x metric, by "
            "`lm_eval.simple_evaluate` on each candidate the search holds "
            "(docs/merge-search.md)."
        ),
    )
    paft_merge_search_lm_eval_include_path: str | None = Field(
        default=None,
        description=(
            "paft_merge_search_lm_eval_tasks: a folder of your own task YAMLs "
            "(lm-eval's include_path, mergekit-evolve's --task-search-path)."
        ),
    )
    paft_merge_search_lm_eval_limit: int | None = Field(
        default=EVOLVE_DEFAULTS["limit"],
        ge=1,
        description="paft_merge_search_lm_eval_tasks: rows per task; unset: all.",
    )
    paft_merge_search_lm_eval_num_fewshot: int | None = Field(
        default=EVOLVE_DEFAULTS["num_fewshot"],
        ge=0,
        description=(
            "paft_merge_search_lm_eval_tasks: few-shot examples; unset: each "
            "task's own."
        ),
    )
    paft_merge_search_lm_eval_apply_chat_template: bool = Field(
        default=EVOLVE_DEFAULTS["apply_chat_template"],
        description=(
            "paft_merge_search_lm_eval_tasks: render prompts with the base "
            "tokenizer's chat template (mergekit-evolve's default)."
        ),
    )
    paft_merge_search_lm_eval_batch_size: int = Field(
        default=8,
        ge=1,
        description="paft_merge_search_lm_eval_tasks: lm-eval's batch size.",
    )
    paft_merge_export: MergeExport = Field(
        default="model",
        description=(
            "The merge as `model` (mergekit's merged model), `adapter` (one PEFT "
            "LoRA in output_dir/adapter/<method> for paft_merge_run or the first "
            "config, and adapter/best for the search's best: exact for "
            "task_arithmetic and linear, else extracted by mergekit-extract-lora "
            "with its error reported) or `both`."
        ),
    )
    paft_merge_export_rank: int | None = Field(
        default=None,
        ge=1,
        description=(
            "paft_merge_export: the extracted adapter's rank (mergekit-extract-lora "
            "--max-rank); unset: r_s + r_p, the exact adapter's rank."
        ),
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
    def _something_to_export(self):
        if self.paft_merge_export != "model" and not (
            self.paft_merge_methods or self.paft_merge_search
        ):
            raise ValueError(
                f"paft_merge_export: {self.paft_merge_export!r} has nothing to "
                "export: paft_merge_methods is empty and paft_merge_search is off"
            )
        return self

    @model_validator(mode="after")
    def _search_inputs(self):
        if not self.paft_merge_search:
            return self
        methods = self.paft_merge_search_methods
        unfit = [m for m in methods if m not in DEFAULT_SEARCH_METHODS]
        if unfit or not methods:
            raise ValueError(
                f"paft_merge_search_methods: {unfit or 'empty'}; searchable: "
                f"{list(DEFAULT_SEARCH_METHODS)}"
            )
        for key in ("paft_merge_search_sft_data", "paft_merge_search_preference_data"):
            path = getattr(self, key)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{key}: no such JSONL file {path!r}")
        self._check_lm_eval_tasks()
        return self

    def _check_lm_eval_tasks(self) -> None:
        """Task names lm-eval does not know fail here, not after training."""
        tasks, folder = (
            self.paft_merge_search_lm_eval_tasks,
            self.paft_merge_search_lm_eval_include_path,
        )
        if folder is not None and not Path(folder).exists():
            raise ValueError(
                f"paft_merge_search_lm_eval_include_path: no such folder {folder!r}"
            )
        if tasks is None:
            return
        if not tasks:
            raise ValueError("paft_merge_search_lm_eval_tasks: empty")
        unknown = unknown_tasks(tasks, folder)
        if unknown:
            raise ValueError(
                f"paft_merge_search_lm_eval_tasks: lm-eval knows no task {unknown} "
                f"(paft_merge_search_lm_eval_include_path: {folder})"
            )

    def lm_eval_objective(self) -> LmEvalObjective | None:
        """paft_merge_search_lm_eval_* as the search takes them (None: unset)."""
        if not self.paft_merge_search_lm_eval_tasks:
            return None
        return LmEvalObjective(
            self.paft_merge_search_lm_eval_tasks,
            limit=self.paft_merge_search_lm_eval_limit,
            include_path=self.paft_merge_search_lm_eval_include_path,
            batch_size=self.paft_merge_search_lm_eval_batch_size,
            num_fewshot=self.paft_merge_search_lm_eval_num_fewshot,
            apply_chat_template=self.paft_merge_search_lm_eval_apply_chat_template,
        )

    @model_validator(mode="after")
    def _della_bounds(self):
        """mergekit only finds a bad DELLA epsilon while merging; find it here."""
        check_della_bounds(
            self.paft_merge_methods, self.paft_merge_density, self.paft_merge_epsilon
        )
        return self

    def merge_settings(self) -> MergeSettings:
        """These keys as `axolotl_paft.merging.configs` takes them."""
        return MergeSettings(
            methods=tuple(self.paft_merge_methods),
            sft_weight=self.paft_merge_sft_weight,
            preference_weight=self.paft_merge_preference_weight,
            density=self.paft_merge_density,
            epsilon=self.paft_merge_epsilon,
            gamma=self.paft_merge_gamma,
            lambda_=self.paft_merge_lambda,
            normalize=self.paft_merge_normalize,
            slerp_t=self.paft_merge_slerp_t,
            dtype=self.paft_merge_dtype,
        )


class PAFTArgs(ParallelArgs, L1Args, ReportArgs, MergeArgs):
    """Config keys of `axolotl_paft.PAFTPlugin`."""

    @model_validator(mode="before")
    @classmethod
    def _refuse_unknown_keys(cls, data: dict) -> dict:
        """pydantic drops unknown keys silently, so a misspelt `paft_` key would
        leave its default in force without a word: refuse it, naming the key."""
        if not isinstance(data, dict):
            return data
        known = list(PAFTArgs.model_fields)
        unknown = [k for k in data if str(k).startswith("paft_") and k not in known]
        if unknown:
            raise ValueError("; ".join(_unknown_key_message(k, known) for k in unknown))
        return data

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
        else:
            _check_parallel_keys_unused(data)
        two_deltas = data.get("paft_parallel") or data.get("paft_preference_adapter")
        if data.get("paft_merge_search") and not two_deltas:
            raise ValueError(
                "paft_merge_search: searches merges of two deltas; set paft_parallel "
                "(with paft_preference_datasets) or paft_preference_adapter"
            )
        if data.get("paft_merge_search"):
            _check_search_rows(data)
        methods = data.get("paft_merge_methods", DEFAULT_MERGE_METHODS)
        if methods:
            _check_merge_paths(data)
        return data


def search_split_defaults(data: dict) -> dict[str, float]:
    """`paft_merge_search` without held-out files scores the run's own held-out
    splits; where a side has neither a file nor a split key, hold out
    SEARCH_HELD_OUT of its data (Axolotl's `val_set_size` semantics). Returns
    the keys to set; the plugin sets them before validation and logs them."""
    from axolotl_paft.training.data import TEST_KEY

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
        and not data.get(TEST_KEY)
    ):
        defaults["paft_preference_val_set_size"] = SEARCH_HELD_OUT
    return defaults


def _sft_split(data: dict) -> bool:
    """The config holds out SFT rows (Axolotl's eval split)."""
    return bool(data.get("val_set_size") or data.get("test_datasets"))


def _preference_split(data: dict) -> bool:
    """The config holds out preference rows (parallel mode's held-out split)."""
    from axolotl_paft.training.data import TEST_KEY

    return bool(data.get("paft_preference_val_set_size") or data.get(TEST_KEY))


def _check_search_rows(data: dict) -> None:
    """Each side of the search needs held-out rows: a file, or the run's split."""
    from axolotl_paft.training.data import TEST_KEY

    if not (data.get("paft_merge_search_sft_data") or _sft_split(data)):
        raise ValueError(
            "paft_merge_search_sft_data: the search scores the SFT skill on held-out "
            "rows: name a JSONL file (`messages`), or hold out part of the SFT data "
            "(val_set_size > 0 or test_datasets; unset, val_set_size defaults to "
            f"{SEARCH_HELD_OUT})"
        )
    preference_split = data.get("paft_parallel") and _preference_split(data)
    if not (data.get("paft_merge_search_preference_data") or preference_split):
        where = (
            "or hold out part of paft_preference_datasets (paft_preference_val_set_"
            f"size > 0 or {TEST_KEY}; unset, it defaults to {SEARCH_HELD_OUT})"
            if data.get("paft_parallel")
            else "(with paft_preference_adapter the run has no preference data)"
        )
        raise ValueError(
            "paft_merge_search_preference_data: the search scores preference "
            "accuracy on held-out pairs: name a JSONL file (question or messages, "
            f"chosen, rejected) {where}"
        )


def _unknown_key_message(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{key}: not a key of the PAFT plugin{hint}"


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


def _check_parallel_sharding(data: dict) -> None:
    """Parallel mode runs on one process, DDP or Axolotl's FSDP2 (`fsdp_config`);
    not on DeepSpeed, not with FSDP2's parameter offloading."""
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
    if data.get("fsdp"):
        raise ValueError(
            "fsdp: the FSDP1 list is not supported (Axolotl >= 0.21 removed FSDP1); "
            "parallel mode shards with fsdp_config (FSDP2)"
        )
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
    if fsdp.get("offload_params") or fsdp.get("fsdp_offload_params"):
        raise ValueError(
            "fsdp_config.offload_params: parallel mode under FSDP2 gathers adapter "
            "shards (gradient norms per adapter, sparsity metrics, final save) "
            "with collectives on the mesh's device, which CPU-offloaded shards are "
            "not on; untested, so refused: set offload_params: false"
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
    if data.get("paft_preference_learning_rate") is None:
        rate = data.get("learning_rate")
        raise ValueError(
            "paft_preference_learning_rate: parallel mode needs the preference "
            f"adapter's own rate (learning_rate {rate} is the SFT adapter's). DPO "
            "LoRA recipes train at 5e-6 to 5e-5, 4-40x below SFT LoRA rates, and the "
            "SFT rate over-trains the preference LoRA; e.g. "
            "paft_preference_learning_rate: 5.0e-6 (docs/parallel-mode.md)"
        )
    _check_parallel_sharding(data)
    for key, why in PARALLEL_ONLY_SFT_STEP.items():
        if data.get(key):
            raise ValueError(
                f"{key}: {why}; in parallel mode it would make the run silently "
                f"weaker than a plain Axolotl run of this YAML: set {key}: false"
            )
    for key in LORA_KERNELS:
        if data.get(key):
            raise ValueError(
                f"{key}: Axolotl's fused LoRA kernels read only the first active "
                "adapter; set it to false for parallel mode"
            )
    for key in MODEL_PARALLEL_KEYS:
        if (data.get(key) or 1) > 1:
            raise ValueError(
                f"{key}: parallel mode splits no model or sequence across processes "
                "(its two adapters' gradients are averaged over data-parallel "
                f"processes only); set {key}: 1 or train the adapters separately"
            )
    if data.get("lora_modules_to_save"):
        raise ValueError(
            "lora_modules_to_save: a trainable full copy of a module is no low-rank "
            "delta: the L1 penalty, the sparsity report and the mergekit configs "
            "would not see it. Parallel mode trains LoRA (and DoRA) deltas only; "
            "remove lora_modules_to_save (and any new tokens that need it)"
        )
    if data.get("lr_scheduler") == "one_cycle":
        raise ValueError(
            "lr_scheduler: one_cycle sets every optimizer group to the same peak "
            "rate (OneCycleLR's max_lr = learning_rate), which would train the "
            "preference adapter at the SFT rate; use cosine, linear or constant"
        )
    if data.get("lr_scheduler") == "rex" and data.get("cosine_min_lr_ratio"):
        raise ValueError(
            "cosine_min_lr_ratio: with lr_scheduler: rex it is one absolute floor "
            "for every optimizer group, the preference adapter's too; unset it or "
            "use lr_scheduler: cosine"
        )
    from axolotl_paft.training.data import TEST_KEY, check_preference_entries

    check_preference_entries(entries)
    if data.get("paft_preference_val_set_size") and data.get(TEST_KEY):
        raise ValueError(
            f"{TEST_KEY}: set either paft_preference_val_set_size (a split of "
            f"paft_preference_datasets) or {TEST_KEY}, not both"
        )
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
    if data.get(TEST_KEY):
        check_preference_entries(data[TEST_KEY], key=TEST_KEY)
    if data.get("merge_lora"):
        check_adapter_choice(data, _names(data), command="axolotl merge-lora")
        merged = Path(data.get("output_dir") or DEFAULT_OUTPUT_DIR) / "merged"
        if (merged / "config.json").exists():
            raise ValueError(
                f"output_dir: axolotl merge-lora writes {merged}, which already "
                "holds a merged model; pass another --output-dir"
            )


# Axolotl keys that shard the model or the sequence across processes.
MODEL_PARALLEL_KEYS = (
    "context_parallel_size",
    "tensor_parallel_size",
    "expert_parallel_size",
)
DEFAULT_OUTPUT_DIR = "./model-out"  # Axolotl's default output_dir


def _check_parallel_keys_unused(data: dict) -> None:
    """Outside parallel mode, a parallel-only key (every ParallelArgs key and the
    preference adapter's L1) is a mistake, not a no-op."""
    parallel_only = [k for k in ParallelArgs.model_fields if k != "paft_parallel"]
    for key in [*parallel_only, "paft_preference_l1_lambda"]:
        default = PAFTArgs.model_fields[key].default
        if data.get(key) not in (None, default):
            raise ValueError(
                f"{key}: only parallel mode reads this key; set paft_parallel: true "
                "or remove it"
            )


def _names(data) -> tuple[str, str]:
    """(SFT adapter name, preference adapter name) of a raw or validated config."""
    fields = PAFTArgs.model_fields
    return (
        data.get("paft_sft_adapter_name") or fields["paft_sft_adapter_name"].default,
        data.get("paft_preference_adapter_name")
        or fields["paft_preference_adapter_name"].default,
    )


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
