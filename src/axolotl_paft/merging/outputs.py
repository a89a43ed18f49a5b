"""What a PAFT run leaves in `output_dir` after training: report, mergekit configs,
the merge search (last, so that its failure loses nothing else), on the machine's
cores."""

from __future__ import annotations

import json
import logging
import shlex
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from axolotl_paft.config.args import PAFTArgs
from axolotl_paft.merging.configs import (
    EmittedConfigs,
    MergeDeltas,
    mergekit_command,
    run_chat_template,
    run_merge_config,
    run_tokenizer,
    write_merge_configs,
)
from axolotl_paft.merging.export import export_run_adapters
from axolotl_paft.merging.report import build_report, write_report

if TYPE_CHECKING:
    from axolotl_paft.merging.search import SearchResult

LOG = logging.getLogger(f"axolotl.{__name__}")  # shown by axolotl's log config

MERGEKIT_DIR = "mergekit"
SEARCH_DIR = "search"


class MergeSearchFailed(RuntimeError):
    """`paft_merge_search` failed after training; everything else was written.

    The run then exits non-zero although training succeeded: the user asked for
    the search, and a pipeline that goes on to read `mergekit/best.yml` (or a
    scheduler that reports the job done) must not take a run without it for a
    finished one. Nothing is lost by it: adapters, report and mergekit configs
    are on disk before the search starts, and the message names the error and
    the command that reruns only the search."""


@dataclass
class RunOutputs:
    """What the steps after training hand each other, typed: nothing is read back
    from the files the same process wrote."""

    written: list[Path] = field(default_factory=list)
    emitted: EmittedConfigs | None = None  # the mergekit configs and their cache
    merge: dict | None = None  # the emitted configs as the report summarises them
    search: SearchResult | None = None


def write_run_outputs(
    output_dir: Path,
    base_model: str,
    adapters: dict[str, Path],
    args: PAFTArgs,
    held_out: Callable[[], tuple] | None = None,
) -> RunOutputs:
    """Write the mergekit configs and the report for `adapters` (role -> folder),
    then, with `paft_merge_search`, search on the rows `held_out()` returns
    (`search_rows`). `base_model`: a `configs.base_model_reference`.

    The search comes last: one that fails (a bad held-out row, a merge mergekit
    refuses, memory) leaves the report and configs (and a `paft_merge_run`
    merge) written, logs where everything is, and raises `MergeSearchFailed`
    with the command that reruns only the search (which takes `--export` too:
    `paft_merge_export` runs only after a search that ended, last, so that its
    lines close the log)."""
    run = RunOutputs()
    if args.paft_merge_methods:
        _write_configs(run, output_dir, base_model, adapters, args)
    if args.paft_report:
        _write_report(run, output_dir, adapters, args)
    if run.emitted and args.paft_merge_run:
        merged = output_dir / "merged" / args.paft_merge_run
        LOG.info("paft: merging with %s into %s", args.paft_merge_run, merged)
        method_config = run.emitted.written[args.paft_merge_run]
        run.written.append(
            run_merge_config(method_config, merged, run.emitted.cache_dir)
        )
    failed = None
    if args.paft_merge_search and "preference" in adapters:
        try:
            run.search = run_merge_search(
                output_dir, base_model, adapters, args, held_out()
            )
            run.written += [
                output_dir / MERGEKIT_DIR / "best.yml", *run.search.paths[1:3],
                run.search.merged,
            ]  # fmt: skip
        except Exception as err:  # noqa: BLE001 - reported, then raised again
            failed = err
            LOG.exception("paft: merge search failed: %s: %s", type(err).__name__, err)
    LOG.info(
        results_and_next_steps(output_dir, base_model, adapters, run.written, run.merge)
    )
    if failed is not None:
        raise MergeSearchFailed(
            f"paft_merge_search failed ({type(failed).__name__}: {failed}); "
            f"training finished and its outputs are in {output_dir} (adapters, "
            "report, mergekit configs). Rerun only the search: "
            + rerun_search_command(output_dir, base_model, adapters, args)
        ) from failed
    # paft_merge_export: one adapter per merge; its log lines name it and its use
    run.written += export_run_adapters(
        output_dir, base_model, adapters, args, run.emitted, run.search
    )
    return run


def _write_configs(
    run: RunOutputs, output_dir: Path, base_model: str, adapters: dict, args
) -> None:
    """One checked mergekit config per method into output_dir/mergekit."""
    deltas = MergeDeltas(
        base_model=base_model,
        sft_adapter=adapters["sft"].resolve(),
        preference_adapter=adapters["preference"].resolve()
        if "preference" in adapters
        else None,
        chat_template=run_chat_template(output_dir),
    )
    emitted = write_merge_configs(
        output_dir / MERGEKIT_DIR, deltas, args.merge_settings()
    )
    first = next(iter(emitted.written), None)
    run.emitted, run.written = emitted, [*run.written, *emitted.written.values()]
    run.merge = {
        "written": {m: str(p) for m, p in emitted.written.items()},
        "skipped": emitted.skipped,
        "cache_dir": str(emitted.cache_dir),
        "command": mergekit_command(
            emitted.written[first],
            output_dir.resolve() / "merged" / first,
            emitted.cache_dir,
        )
        if first
        else "",
    }
    for method, path in emitted.written.items():
        LOG.info("paft: wrote mergekit config %s: %s", method, path)


def _write_report(
    run: RunOutputs, output_dir: Path, adapters: dict, args: PAFTArgs
) -> None:
    """paft_report.{json,md,png}, and each delta's sparsity in the log."""
    report = build_report(adapters, args.paft_sparsity_threshold, run.merge)
    run.written += write_report(report, output_dir)
    for role, section in report["adapters"].items():
        overall = section["overall"]
        LOG.info(
            "paft: %s delta sparsity %.1f%% (exact zeros: delta %.1f%%, A/B %.1f%%)",
            role,
            100 * overall["sparsity"],
            100 * overall["delta_exact_zeros"],
            100 * overall["lora_exact_zeros"],
        )


def rerun_search_command(
    output_dir: Path, base_model: str, adapters: dict[str, Path], args: PAFTArgs
) -> str:
    """The `axolotl-paft-sweep --search` line that runs this run's search alone,
    into the run's own `search/` folder. The run's own held-out splits are
    tokenized rows the command cannot read: then it names the files to write."""
    sft_data = args.paft_merge_search_sft_data
    preference_data = args.paft_merge_search_preference_data
    command = (
        f"axolotl-paft-sweep --search --base {base_model} "
        f"--sft {adapters['sft'].resolve()} "
        f"--preference {adapters['preference'].resolve()} "
        f"--sft-data {Path(sft_data).resolve() if sft_data else 'SFT.jsonl'} "
        "--preference-data "
        f"{Path(preference_data).resolve() if preference_data else 'PREFERENCE.jsonl'} "
        f"--limit {args.paft_merge_search_rows} "
        f"--budget {args.paft_merge_search_budget} "
        f"--methods {','.join(args.paft_merge_search_methods)} "
        f"--out {(output_dir / SEARCH_DIR).resolve()}"
    )
    if args.paft_merge_search_answer_checks is not None:
        checks = json.dumps(args.paft_merge_search_answer_checks)
        command += (
            f" --answer-checks {shlex.quote(checks)} "
            f"--finalists {args.paft_merge_search_finalists} "
            f"--answer-tokens {args.paft_merge_search_answer_tokens}"
        )
    if not (sft_data and preference_data):
        command += (
            " (this run scored its own held-out splits, which the command cannot "
            "read: write held-out rows as JSONL first, SFT rows with `messages`, "
            "preference rows with question (or messages), chosen, rejected)"
        )
    return command


def results_and_next_steps(
    output_dir: Path,
    base_model: str,
    adapters: dict[str, Path],
    written: list[Path],
    merge: dict | None,
) -> str:
    """Where each result of the run is, and the commands a user runs next."""
    lines = ["paft: results of this run"]
    lines += [f"  {role} adapter: {folder}" for role, folder in adapters.items()]
    lines += [f"  {path.name}: {path}" for path in written]
    lines.append("paft: next")
    if merge and merge["command"]:
        lines.append(f"  build the merged model: {merge['command']}")
    evaluate = " ".join(f"--candidate {r}={f}" for r, f in adapters.items())
    lines.append(
        f"  compare candidates: axolotl-paft-eval --base {base_model} {evaluate} ..."
        " (add merged model folders as more candidates)"
    )
    if "preference" in adapters and adapters["sft"].parent == output_dir:
        lines.append(
            "  one adapter alone: axolotl merge-lora CONFIG --lora-model-dir "
            f"{adapters['sft']} (or {adapters['preference']}); inference and "
            "evaluate take the same --lora-model-dir"
        )
    return "\n".join(lines)


def search_rows(base_model: str, args: PAFTArgs, trainer) -> tuple:
    """The search's held-out rows, at most `paft_merge_search_rows` per side: the
    named JSONL files, rendered with the run's tokenizer as Axolotl loaded it
    (its chat template and end-of-turn token, as training rendered its rows),
    else the run's own held-out splits as it tokenized them (Axolotl's SFT eval
    rows; the preference rows kept out of training)."""
    from axolotl_paft.merging.scoring import (
        TextPairs,
        TextSkill,
        TokenizedPairs,
        TokenizedSkill,
        read_jsonl,
    )

    limit = args.paft_merge_search_rows
    tokenizer = trainer.processing_class

    def first(rows):
        return [rows[i] for i in range(min(limit, len(rows)))]

    if args.paft_merge_search_sft_data:
        skill = TextSkill(tokenizer, read_jsonl(args.paft_merge_search_sft_data, limit))
    else:
        skill = TokenizedSkill(first(trainer.eval_dataset), tokenizer)
    if args.paft_merge_search_preference_data:
        rows = read_jsonl(args.paft_merge_search_preference_data, limit)
        pairs = TextPairs(tokenizer, rows)
    else:
        pairs = TokenizedPairs(
            first(trainer.preference_held_out), trainer.preference.collator
        )
    LOG.info(
        "paft: merge search on %d SFT rows (%s) and %d preference pairs (%s)",
        len(skill.rows),
        args.paft_merge_search_sft_data or "the run's eval split",
        len(pairs.rows),
        args.paft_merge_search_preference_data or "the run's held-out split",
    )
    return skill, pairs


def run_merge_search(
    output_dir: Path,
    base_model: str,
    adapters: dict[str, Path],
    args: PAFTArgs,
    held_out: tuple,
) -> SearchResult:
    """`paft_merge_search`: search into output_dir/search, the winner's config
    copied to output_dir/mergekit/best.yml."""
    from axolotl_paft.merging.search import search

    out = output_dir / SEARCH_DIR
    lm_eval = args.lm_eval_objective()
    tokenizer = run_tokenizer(output_dir)
    result = search(
        base_model,
        adapters["sft"],
        adapters["preference"],
        *held_out,
        out,
        budget=args.paft_merge_search_budget,
        methods=tuple(args.paft_merge_search_methods),
        objective="balanced" if lm_eval is None else "lm_eval",
        lm_eval=lm_eval,
        skill_measure=args.paft_merge_search_skill_measure,
        preference_measure=args.paft_merge_search_preference_measure,
        chat_template=None if tokenizer is None else tokenizer.chat_template,
        answers=args.answer_stage(),
        tokenizer=tokenizer,
    )
    best = output_dir / MERGEKIT_DIR / "best.yml"
    best.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(result.config, best)
    LOG.info("paft: merge search best %s, config %s", result.best, best)
    return result
