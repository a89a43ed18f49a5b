"""Merge sweep: several mergekit configs (methods x densities) run and evaluated.

    axolotl-paft-sweep --base BASE --sft OUT/sft --preference OUT/dpo \
        --methods ties,dare_ties,task_arithmetic --densities 0.3,0.5,0.9 \
        --sft-data heldout_sft.jsonl --preference-data heldout_prefs.jsonl \
        --out OUT/sweep

Each config is built and checked like the ones a training run emits
(`axolotl_paft.merging.configs`), run through mergekit's Python API into
`OUT/sweep/merged/<name>`, and every merge plus both adapters is scored by
`axolotl_paft.merging.scoring` (table, eval.json, eval.png, best candidate).

With `--search` it runs the merge search of `axolotl_paft.merging.search` instead, over
`--methods` within `--budget` candidates, and writes `OUT/mergekit/best.yml`,
`OUT/leaderboard.{json,md}`, `OUT/search.png` and the winner in `OUT/merged/best`;
with `--lm-eval-tasks` it ranks the candidates by those lm-eval tasks
(`axolotl_paft.merging.lm_eval_objective`, the training run's
`paft_merge_search_lm_eval_*` keys).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import yaml

from axolotl_paft.cli.eval import add_data_arguments, evaluate_and_report
from axolotl_paft.cli.inputs import (
    check_adapter,
    check_data,
    check_searchable,
    count,
    densities,
    error_bound,
    lm_eval_tasks,
    methods,
    positive,
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
    METHOD_LAYOUTS,
    MergeDeltas,
    MergeSettings,
    base_model_reference,
    build_config,
    lora_cache_dir,
    run_merge_config,
    validate_config,
    write_config,
)
from axolotl_paft.merging.export import export_search_best
from axolotl_paft.merging.lm_eval_objective import LmEvalObjective
from axolotl_paft.merging.scoring import (
    DEFAULT_PREFERENCE_MEASURE,
    PREFERENCE_MEASURES,
    SKILL_MEASURES,
    read_jsonl,
)
from axolotl_paft.merging.search import search


def sweep_configs(
    deltas: MergeDeltas, methods: list[str], densities: list[float]
) -> dict[str, dict]:
    """Name -> mergekit config; densities only for methods that take one."""
    configs = {}
    for method in methods:
        uses_density = "density" in METHOD_LAYOUTS[method].per_model
        base = MergeSettings(methods=(method,), dtype="float32")
        for density in densities if uses_density else [None]:
            settings = base if density is None else replace(base, density=density)
            config = build_config(method, deltas, settings)
            if isinstance(config, str):
                raise SystemExit(f"{method}: {config}")
            validate_config(config)
            configs[method if density is None else f"{method}-d{density:g}"] = config
    return configs


def run_sweep(deltas: MergeDeltas, configs: dict[str, dict], out: Path) -> dict:
    """Merge every config into `out/merged/<name>`; returns name -> folder."""
    cache = lora_cache_dir(out)
    merged = {}
    for name, config in configs.items():
        path = write_config(out / "configs" / f"{name}.yml", config)
        print(f"merging {name}", flush=True)
        merged[name] = run_merge_config(path, out / "merged" / name, cache)
    return merged


def build_parser() -> argparse.ArgumentParser:
    """The command's flags: the sweep's, then `--search`'s."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--base", required=True, help="the base model: a folder or a hub id"
    )
    parser.add_argument("--sft", required=True, type=Path, help="the SFT adapter")
    parser.add_argument(
        "--preference", required=True, type=Path, help="the preference adapter"
    )
    parser.add_argument(
        "--methods", type=methods, default=methods("ties,dare_ties,task_arithmetic"),
        help="comma-separated mergekit methods (--search: searchable ones)",
    )  # fmt: skip
    parser.add_argument(
        "--densities", type=densities, default=densities("0.3,0.5,0.9"),
        help="without --search: comma-separated densities in (0, 1]",
    )  # fmt: skip
    parser.add_argument(
        "--search", action="store_true", help="search methods, weights and density"
    )
    parser.add_argument(
        "--profiles", type=_profiles,
        help="--search: per-layer weight profiles tried, comma-separated, of "
        + ",".join(PROFILES),
    )  # fmt: skip
    parser.add_argument(
        "--budget", type=positive, help=f"--search: candidates ({DEFAULT_BUDGET})"
    )
    parser.add_argument(
        "--lm-eval-tasks",
        type=lm_eval_tasks,
        help="--search: rank by lm-eval tasks, a name or a YAML list as "
        "mergekit-evolve's tasks: '[my_task, {name: other, weight: 0.5}]'",
    )
    parser.add_argument("--lm-eval-include-path", help="folder of task YAMLs")
    parser.add_argument("--lm-eval-limit", type=positive, help="rows per lm-eval task")
    parser.add_argument(
        "--lm-eval-num-fewshot", type=count, help="few-shot examples per lm-eval task"
    )
    parser.add_argument(
        "--lm-eval-batch-size", type=positive, help="lm-eval's batch size (8)"
    )
    parser.add_argument(
        "--tokenizer", type=Path,
        help="--search: the tokenizer that renders the held-out rows and whose chat "
        "template the merges carry (a training run's output_dir; default: the base's)",
    )  # fmt: skip
    parser.add_argument(
        "--lm-eval-no-chat-template",
        action="store_true",
        help="lm-eval prompts without the base tokenizer's chat template",
    )
    parser.add_argument(
        "--skill-measure", choices=("auto", *SKILL_MEASURES),
        help="--search: the skill measure (auto, the default: by the answers' "
        "lengths)",
    )  # fmt: skip
    parser.add_argument(
        "--preference-measure", choices=PREFERENCE_MEASURES,
        help=f"--search: the preference measure ({DEFAULT_PREFERENCE_MEASURE})",
    )  # fmt: skip
    parser.add_argument(
        "--export", choices=EXPORTS,
        help="--search: adapter or both also writes the best merge as one LoRA "
        "adapter in OUT/adapter/best (docs/export.md)",
    )  # fmt: skip
    parser.add_argument(
        "--export-rank", type=positive, default=None,
        help="--export: the extracted adapter's rank (default r_s + r_p)",
    )  # fmt: skip
    parser.add_argument(
        "--export-max-error", type=error_bound, default=None,
        help="--export: the largest relative error an extracted adapter may have; "
        "above it a warning names the rank that meets it "
        f"(default {DEFAULT_EXPORT_MAX_ERROR})",
    )  # fmt: skip
    parser.add_argument(
        "--answer-checks", type=_answer_checks, metavar="YAML",
        help="--search: re-rank the screen's finalists by checks on their greedy "
        "answers, per side, as paft_merge_search_answer_checks: "
        "'{skill: [{starts_with: CARD}], preference: [{regex: ^Happy}]}'",
    )  # fmt: skip
    parser.add_argument(
        "--finalists", type=positive,
        help=f"--answer-checks: the screen's best re-ranked by their answers "
        f"({DEFAULT_FINALISTS})",
    )  # fmt: skip
    parser.add_argument(
        "--answer-tokens", type=positive,
        help=f"--answer-checks: most tokens of each greedy answer "
        f"({DEFAULT_ANSWER_TOKENS})",
    )  # fmt: skip
    add_data_arguments(parser, out="paft_sweep")
    return parser


def _answer_checks(text: str) -> dict:
    """`--answer-checks`: YAML, checked as the config key is (`parse_checks`)."""
    declared = yaml.safe_load(text)
    try:
        parse_checks(declared)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err
    return declared


# flag -> (the flag it qualifies, when that flag is given, its default)
DEPENDENT_FLAGS = {
    "budget": ("--search", "search", DEFAULT_BUDGET),
    "skill_measure": ("--search", "search", "auto"),
    "preference_measure": ("--search", "search", DEFAULT_PREFERENCE_MEASURE),
    "export": ("--search", "search", "model"),
    "lm_eval_tasks": ("--search", "search", None),
    "answer_checks": ("--search", "search", None),
    "profiles": ("--search", "search", list(PROFILES)),
    "lm_eval_include_path": ("--lm-eval-tasks", "lm_eval_tasks", None),
    "lm_eval_limit": ("--lm-eval-tasks", "lm_eval_tasks", None),
    "lm_eval_no_chat_template": ("--lm-eval-tasks", "lm_eval_tasks", False),
    "lm_eval_num_fewshot": ("--lm-eval-tasks", "lm_eval_tasks", None),
    "lm_eval_batch_size": ("--lm-eval-tasks", "lm_eval_tasks", 8),
    "tokenizer": ("--search", "search", None),
    "finalists": ("--answer-checks", "answer_checks", DEFAULT_FINALISTS),
    "answer_tokens": ("--answer-checks", "answer_checks", DEFAULT_ANSWER_TOKENS),
}


def check_flags(parser: argparse.ArgumentParser, opts: argparse.Namespace) -> str:
    """Every flag checked before a model loads: none given where it does
    nothing, the adapters against the base and outside --out, the held-out
    files; the defaults filled in. Returns the base as the merges name it."""
    for key, (needs, needed, default) in DEPENDENT_FLAGS.items():
        given = getattr(opts, key) not in (None, False)
        if given and not getattr(opts, needed):
            flag = "--" + key.replace("_", "-")
            parser.error(f"{flag}: only with {needs}, which it qualifies")
        if getattr(opts, key) is None:
            setattr(opts, key, default)
    for flag in ("export_rank", "export_max_error"):
        if getattr(opts, flag) is not None and opts.export == "model":
            name = "--" + flag.replace("_", "-")
            parser.error(f"{name}: only with --export adapter or both")
    if opts.export_max_error is None:
        opts.export_max_error = DEFAULT_EXPORT_MAX_ERROR
    if opts.search:
        check_searchable(parser, opts.methods)
    folder = opts.lm_eval_include_path
    if folder and not Path(folder).is_dir():
        parser.error(f"--lm-eval-include-path: no such folder {folder!r}")
    base = base_model_reference(opts.base)
    for flag, folder in (("--sft", opts.sft), ("--preference", opts.preference)):
        check_adapter(parser, flag, folder, base, opts.out)
    if opts.sft.resolve() == opts.preference.resolve():
        parser.error("--preference: the same folder as --sft")
    check_data(parser, opts)
    return base


def _profiles(text: str) -> list[str]:
    profiles = text.split(",")
    unknown = [p for p in profiles if p not in PROFILES]
    if unknown or len(set(profiles)) < len(profiles):
        raise argparse.ArgumentTypeError(
            f"distinct profiles of {','.join(PROFILES)}, not {text}"
        )
    return profiles


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    opts = parser.parse_args(argv)
    base = check_flags(parser, opts)
    if opts.search:
        run_search(opts, base)
    else:
        run_grid(opts, base)


def run_search(opts: argparse.Namespace, base: str) -> None:
    """`--search`: the merge search on the held-out files, then the export."""
    lm_eval = None
    if opts.lm_eval_tasks is not None:
        lm_eval = LmEvalObjective(
            opts.lm_eval_tasks,
            limit=opts.lm_eval_limit,
            include_path=opts.lm_eval_include_path,
            batch_size=opts.lm_eval_batch_size,
            num_fewshot=opts.lm_eval_num_fewshot,
            apply_chat_template=not opts.lm_eval_no_chat_template,
        )
    tokenizer = None
    if opts.tokenizer is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(opts.tokenizer)
    result = search(
        base, opts.sft, opts.preference,
        read_jsonl(opts.sft_data, opts.limit),
        read_jsonl(opts.preference_data, opts.limit),
        opts.out, budget=opts.budget, methods=tuple(opts.methods),
        profiles=tuple(opts.profiles),
        objective="balanced" if lm_eval is None else "lm_eval", lm_eval=lm_eval,
        skill_measure=opts.skill_measure,
        preference_measure=opts.preference_measure, answers=_stage(opts),
        tokenizer=tokenizer,
        chat_template=None if tokenizer is None else tokenizer.chat_template,
    )  # fmt: skip
    print((opts.out / "leaderboard.md").read_text())
    print(f"best: {result.best}; config {result.config}")
    if opts.export != "model":
        export_search_best(
            result, base, [opts.sft, opts.preference],
            opts.out / "adapter" / "best", opts.export_rank, print,
            opts.export_max_error, lambda warning: print(f"WARNING: {warning}"),
        )  # fmt: skip


def _stage(opts: argparse.Namespace) -> AnswerStage | None:
    if opts.answer_checks is None:
        return None
    return AnswerStage(
        parse_checks(opts.answer_checks), opts.finalists, opts.answer_tokens
    )


def run_grid(opts: argparse.Namespace, base: str) -> None:
    """Without `--search`: every method x density merged, then evaluated."""
    deltas = MergeDeltas(base, opts.sft.resolve(), opts.preference.resolve())
    configs = sweep_configs(deltas, opts.methods, opts.densities)
    merged = run_sweep(deltas, configs, opts.out)
    candidates = {"sft": opts.sft, "preference": opts.preference, **merged}
    evaluate_and_report(opts, base, candidates)


if __name__ == "__main__":
    main()
