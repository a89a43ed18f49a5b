"""The plugin's config keys: flat, `paft_` prefixed, grouped by concern.

Axolotl merges `PAFTArgs` into its own config schema, so these keys are validated
in `axolotl train`'s config validation, before any model or data set is loaded.
One class per concern (parallel mode, L1 and sparsity, report, merging, merge
search, export); `PAFTArgs` joins them, so the YAML keys stay flat. The rules
between keys, and against Axolotl's own, are `axolotl_paft.config.checks`;
`PAFTArgs` runs them. Each key's description says what it does; why, and what was
measured, is in docs/. `docs/config.md` is generated from these classes
(`python -m axolotl_paft.config.doc`). Allowed values come from the registries:
preference losses from `losses.LOSS_SPECS`, merge methods from
`configs.METHOD_LAYOUTS`, the search's measures from `scoring.MEASURES`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from axolotl_paft.config.checks import (
    SEARCH_HELD_OUT,
    check_keys,
    check_known_keys,
    check_run,
    typed_keys,
)
from axolotl_paft.const import DEFAULT_BUDGET, DEFAULT_EXPORT_MAX_ERROR, EXPORTS
from axolotl_paft.merging.answers import (
    DEFAULT_ANSWER_TOKENS,
    DEFAULT_FINALISTS,
    AnswerStage,
    parse_checks,
)
from axolotl_paft.merging.candidates import PROFILES
from axolotl_paft.merging.configs import (
    DEFAULT_MERGE_METHODS,
    DEFAULT_SEARCH_METHODS,
    MERGE_DEFAULTS,
    SUPPORTED_MERGE_METHODS,
    MergeSettings,
)
from axolotl_paft.merging.lm_eval_objective import (
    EVOLVE_DEFAULTS,
    LmEvalObjective,
    TaskConfiguration,
)
from axolotl_paft.merging.scoring import (
    DEFAULT_PREFERENCE_MEASURE,
    FREE_FORM_MEASURE,
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
            "`val_set_size` (a fraction below 1, a row count from 1); logged as "
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
            "Learning rate of the preference adapter; parallel mode requires it "
            "(DPO LoRA recipes train at 5e-6 to 5e-5; docs/parallel-mode.md)."
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
            "Reuse each preference row's reference log-probs (DPO, IPO) from its "
            "first use on later passes over the data; false: one reference forward "
            "per micro-batch, every time (a base with dropout, say)."
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
            "default, turns it off. With L1 on, run `paft_merge_search` too "
            "(docs/l1-sparsity.md)."
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
            "step (<adapter>/sparsity, ...): `penalised` (those with an L1 lambda "
            "> 0), `all` or `off`. The report after training measures every adapter."
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


class MergeMethodArgs(BaseModel):
    """Merging: the mergekit configs written (and optionally run) after training."""

    paft_preference_adapter: str | None = Field(
        default=None,
        description=(
            "Folder of a preference (DPO/ORPO) LoRA trained separately from the same "
            "base (checked against it: every module and shape) and outside "
            "output_dir; the emitted mergekit configs then merge both deltas."
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
            "training, into output_dir/paft_merged/<method>."
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


class SearchArgs(BaseModel):
    """Merge search: method, weights and density searched on held-out data (or
    lm-eval tasks) after training."""

    paft_merge_search: bool = Field(
        default=False,
        description=(
            "After training with two deltas (parallel mode or "
            "paft_preference_adapter), search merge method, both weights and "
            "density on held-out data; writes mergekit/best.yml, search/ and the "
            "winner in search/merged/best (docs/merge-search.md)."
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
    paft_merge_search_profiles: list[str] = Field(
        default=list(PROFILES),
        description=(
            "paft_merge_search: the per-layer weight profiles the coordinate search "
            "tries (listed below; `flat`: one weight per delta)."
        ),
    )
    paft_merge_search_sft_data: str | None = Field(
        default=None,
        description=(
            "paft_merge_search: held-out SFT rows (JSONL, `messages`), scored on "
            "their last answer. Unset: the run's own SFT eval split (val_set_size or "
            f"test_datasets; val_set_size defaults to {SEARCH_HELD_OUT} when neither "
            "is set)."
        ),
    )
    paft_merge_search_preference_data: str | None = Field(
        default=None,
        description=(
            "paft_merge_search: held-out preference rows (JSONL: question, chosen, "
            "rejected, as chatml.intel; or messages, chosen, rejected, as "
            "chat_template.default). Unset, in parallel mode: the run's held-out "
            "preference split "
            "(paft_preference_val_set_size or paft_preference_test_datasets; the "
            f"former defaults to {SEARCH_HELD_OUT} when neither is set)."
        ),
    )
    paft_merge_search_rows: int = Field(
        default=SEARCH_ROWS,
        ge=1,
        description=(
            "paft_merge_search: most held-out rows scored per side, from a file or "
            "the run's split (docs/merge-search.md: interval widths by rows)."
        ),
    )
    paft_merge_search_skill_measure: SkillMeasure = Field(
        default="auto",
        description=(
            "paft_merge_search: how the skill is scored on the held-out answers "
            "(measures below); auto: exact_match where the median answer is at "
            f"most {SHORT_ANSWER_TOKENS} tokens, {FREE_FORM_MEASURE} otherwise."
        ),
    )
    paft_merge_search_preference_measure: PreferenceMeasure = Field(
        default=DEFAULT_PREFERENCE_MEASURE,
        description=(
            "paft_merge_search: how the preference is scored on the held-out "
            "pairs (measures below)."
        ),
    )
    paft_merge_search_lm_eval_tasks: list[TaskConfiguration] | None = Field(
        default=None,
        description=(
            "paft_merge_search: rank candidates by lm-evaluation-harness tasks "
            "instead of the held-out rows, as mergekit-evolve takes them: each a "
            "task name or {name, weight (1), metric (`acc,none`)}; the score is the "
            "sum of weight x metric (docs/merge-search.md)."
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
    paft_merge_search_answer_checks: dict[str, list[dict]] | None = Field(
        default=None,
        description=(
            "paft_merge_search: checks on greedy answers, per side (`skill`, "
            "`preference`: lists of `{kind: value}`, kinds below); the screen's "
            "best paft_merge_search_finalists and the references answer the "
            "held-out prompts and are re-ranked by the smaller kept share of "
            "their pass rates (docs/merge-search.md). Unset: no second stage."
        ),
    )
    paft_merge_search_finalists: int = Field(
        default=DEFAULT_FINALISTS,
        ge=1,
        description="paft_merge_search_answer_checks: the screen's best re-ranked.",
    )
    paft_merge_search_answer_tokens: int = Field(
        default=DEFAULT_ANSWER_TOKENS,
        ge=1,
        description=(
            "paft_merge_search_answer_checks: most tokens of each greedy answer "
            "(answers also stop at the chat template's end-of-turn token)."
        ),
    )

    @field_validator("paft_merge_search_profiles")
    @classmethod
    def _known_profiles(cls, profiles: list[str]) -> list[str]:
        unknown = [p for p in profiles if p not in PROFILES]
        if unknown or not profiles or len(set(profiles)) < len(profiles):
            raise ValueError(
                f"paft_merge_search_profiles {profiles}: a list of distinct "
                f"profiles of {list(PROFILES)}"
            )
        return profiles

    @field_validator("paft_merge_search_answer_checks")
    @classmethod
    def _answer_checks_parse(cls, declared: dict | None) -> dict | None:
        if declared is not None:
            try:
                parse_checks(declared)
            except ValueError as err:
                raise ValueError(f"paft_merge_search_answer_checks: {err}") from err
        return declared

    def answer_stage(self) -> AnswerStage | None:
        """paft_merge_search_answer_checks as the search takes them (None: unset)."""
        if self.paft_merge_search_answer_checks is None:
            return None
        return AnswerStage(
            parse_checks(self.paft_merge_search_answer_checks),
            finalists=self.paft_merge_search_finalists,
            max_new_tokens=self.paft_merge_search_answer_tokens,
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


class ExportArgs(BaseModel):
    """Export: the merge as a model, as one LoRA adapter, or both."""

    paft_merge_export: MergeExport = Field(
        default="model",
        description=(
            "The merge as `model` (mergekit's merged model), `adapter` (one PEFT "
            "LoRA: adapter/best for the search's winner, adapter/<method> for "
            "paft_merge_run; one of the two keys must be set; docs/export.md) or "
            "`both`."
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
    paft_merge_export_max_error: float = Field(
        default=DEFAULT_EXPORT_MAX_ERROR,
        gt=0,
        le=1,
        description=(
            "paft_merge_export: the largest relative Frobenius error "
            "||merged - base - BA|| / ||merged - base|| an extracted adapter may "
            "have; above it the export warns, with the rank that meets it, and "
            "paft_export.json records `within_bound: false`."
        ),
    )


class MergeArgs(MergeMethodArgs, SearchArgs, ExportArgs):
    """Merging, its search and its export: the three groups, joined."""


class PAFTArgs(ParallelArgs, L1Args, ReportArgs, MergeArgs):
    """Config keys of `axolotl_paft.PAFTPlugin`."""

    @model_validator(mode="before")
    @classmethod
    def _refuse_unknown_keys(cls, data: dict) -> dict:
        """A misspelt `paft_` key fails naming the nearest known one."""
        if isinstance(data, dict):
            check_known_keys(data, list(PAFTArgs.model_fields))
        return data

    @model_validator(mode="before")
    @classmethod
    def _check_against_run(cls, data: dict, info: ValidationInfo) -> dict:
        """Each key's type and bounds (numbers as YAML reads them), then the rules
        against Axolotl's own keys (adapter, rl, deepspeed...)."""
        if isinstance(data, dict):
            data = typed_keys(data, PAFTArgs.model_fields)
            if not _validated(info):
                check_run(data)
        return data

    @model_validator(mode="after")
    def _check_between_keys(self, info: ValidationInfo):
        """The rules between the validated keys (merge run, export, search)."""
        if not _validated(info):
            check_keys(self)
        return self

    @classmethod
    def of_validated(cls, keys: dict) -> PAFTArgs:
        """The keys of a config Axolotl's validation already ran the rules on
        (the plugin's hooks): typed again, the rules (which read files and
        adapters) not rerun."""
        return cls.model_validate(keys, context={VALIDATED: True})


VALIDATED = "paft_rules_ran"


def _validated(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get(VALIDATED))
