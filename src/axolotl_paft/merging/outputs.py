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
    merged_dir,
    mergekit_command,
    run_chat_template,
    run_merge_config,
    run_tokenizer,
    write_merge_configs,
)
from axolotl_paft.merging.export import export_run_adapters, stamp_merged
from axolotl_paft.merging.report import build_report, write_report
from axolotl_paft.merging.runs import run_id_of, run_stamp

if TYPE_CHECKING:
    from axolotl_paft.merging.search import SearchResult

LOG = logging.getLogger(f"axolotl.{__name__}")  # shown by axolotl's log config

MERGEKIT_DIR = "mergekit"
ROLES = ("sft", "preference")
SEARCH_DIR = "search"


class RunOutputsFailed(RuntimeError):
    """A step after training (the report, the `paft_merge_run` merge, the
    search) failed; every other step was written, and the message names each
    failed step, its error and the command that redoes it alone."""


class MergeSearchFailed(RunOutputsFailed):
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
    stamp: dict = field(default_factory=dict)  # `runs.run_stamp` of this run
    emitted: EmittedConfigs | None = None  # the mergekit configs and their cache
    merge: dict | None = None  # the emitted configs as the report summarises them
    search: SearchResult | None = None
    traps: tuple[str, ...] = ()  # settings of the run that make its numbers mean little


def write_run_outputs(
    output_dir: Path,
    base_model: str,
    adapters: dict[str, Path],
    args: PAFTArgs,
    held_out: Callable[[], tuple] | None = None,
    traps: tuple[str, ...] = (),
) -> RunOutputs:
    """Write the mergekit configs and the report for `adapters` (role -> folder),
    then, with `paft_merge_search`, search on the rows `held_out()` returns
    (`search_rows`). `base_model`: a `configs.base_model_reference`.

    The steps after the configs are each behind one guard: one that fails (a
    bad held-out row, a merge mergekit refuses, memory, an unreadable adapter
    for the report) leaves every other step written, logs where everything is,
    and raises `RunOutputsFailed` (`MergeSearchFailed` where the search failed)
    naming each failed step with the command that redoes it alone (the
    search's takes `--export` too: `paft_merge_export` runs only after a search
    that ended, last, so that its lines close the log)."""
    run = RunOutputs(stamp=run_stamp(adapters, run_id_of(output_dir)), traps=traps)
    failed: list[tuple[str, Exception, str]] = []  # step, error, its command

    def guarded(step: str, redo: Callable[[], str], write: Callable[[], None]):
        try:
            write()
        except Exception as err:  # noqa: BLE001 - reported, then raised at the end
            LOG.exception("paft: %s failed: %s: %s", step, type(err).__name__, err)
            failed.append((step, err, redo()))

    if args.paft_merge_methods:
        _write_configs(run, output_dir, base_model, adapters, args)
    if args.paft_report:
        guarded(
            "paft_report",
            lambda: report_command(output_dir, adapters, args),
            lambda: _write_report(run, output_dir, adapters, args),
        )
    if run.emitted and args.paft_merge_run:
        merged = merged_dir(output_dir, args.paft_merge_run)
        method_config = run.emitted.written[args.paft_merge_run]

        def merge_run():
            LOG.info("paft: merging with %s into %s", args.paft_merge_run, merged)
            run_merge_config(method_config, merged, run.emitted.cache_dir)
            folders = [adapters[r].resolve() for r in ROLES if r in adapters]
            run.written.append(stamp_merged(merged, method_config, folders))

        guarded(
            "paft_merge_run",
            lambda: mergekit_command(method_config, merged, run.emitted.cache_dir),
            merge_run,
        )
    if args.paft_merge_search and "preference" in adapters:
        rows: list = []

        def merge_search():
            rows.append(held_out())
            rows.append(write_held_out(output_dir, args, *rows[0]))
            run.search = run_merge_search(
                output_dir, base_model, adapters, args, rows[0], run.stamp
            )
            run.written += [
                output_dir / MERGEKIT_DIR / "best.yml", *run.search.paths[1:3],
                run.search.merged,
            ]  # fmt: skip

        guarded(
            "paft_merge_search",
            lambda: rerun_search_command(
                output_dir, base_model, adapters, args, *rows[1:2]
            ),
            merge_search,
        )
    LOG.info(
        results_and_next_steps(
            output_dir, base_model, adapters, run.written, run.merge, run.traps
        )
    )
    if failed:
        steps = {step for step, _, _ in failed}
        kept = ["adapters"] + ["mergekit configs"] * bool(run.emitted)
        kept += ["report"] * (args.paft_report and "paft_report" not in steps)
        raise (MergeSearchFailed if "paft_merge_search" in steps else RunOutputsFailed)(
            "; ".join(f"{s} failed ({type(e).__name__}: {e})" for s, e, _ in failed)
            + f"; training finished and its outputs are in {output_dir} "
            + f"({', '.join(kept)}). "
            + " ".join(f"Rerun only the {REDO[s]}: {c}" for s, _, c in failed)
        ) from failed[0][1]
    # paft_merge_export: one adapter per merge; its log lines name it and its use
    if args.paft_merge_export != "model":
        release_memory()  # the export loads models of its own
    run.written += export_run_adapters(
        output_dir, base_model, adapters, args, run.emitted, run.search,
        run=run.stamp,
    )  # fmt: skip
    return run


def release_memory() -> None:
    """Return what the steps before the export freed: objects in reference
    cycles (collected now, not at the collector's next pass) and the CUDA
    caching allocator's blocks (for the export's `mergekit-extract-lora`,
    another process). The search's models are not held past it: its
    `SearchResult` keeps the scorer's rows and the base's log-probabilities
    only (tests/test_outputs.py)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


REDO = {
    "paft_report": "report",
    "paft_merge_run": "merge",
    "paft_merge_search": "search",
}


def report_command(output_dir: Path, adapters: dict[str, Path], args) -> str:
    """The command that writes the run's report alone (`report.main`)."""
    roles = " ".join(f"{role}={Path(f).resolve()}" for role, f in adapters.items())
    return (
        f"python -m axolotl_paft.merging.report {Path(output_dir).resolve()} "
        f"{roles} --threshold {args.paft_sparsity_threshold}"
    )


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
            merged_dir(output_dir.resolve(), first),
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
    if run.traps:
        report["traps"] = list(run.traps)
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


HELD_OUT_DIR = "held_out"  # under search/: the run's own split, as JSONL


def write_held_out(output_dir: Path, args: PAFTArgs, skill, pairs) -> dict[str, Path]:
    """The run's own held-out splits (tokenized rows) as JSONL files under
    search/held_out/, as the search scores them, so that the rerun command
    names them (`scoring.read_rows` reads them back); rows from files are
    named as they are. Returns side -> file."""
    folder = output_dir / SEARCH_DIR / HELD_OUT_DIR
    files = {}
    for side, key, rows in (
        ("sft", args.paft_merge_search_sft_data, skill),
        ("preference", args.paft_merge_search_preference_data, pairs),
    ):
        if key:
            files[side] = Path(key).resolve()
            continue
        folder.mkdir(parents=True, exist_ok=True)
        files[side] = (folder / f"{side}.jsonl").resolve()
        files[side].write_text(
            "".join(json.dumps(row) + "\n" for row in rows.token_rows())
        )
    return files


def rerun_search_command(
    output_dir: Path,
    base_model: str,
    adapters: dict[str, Path],
    args: PAFTArgs,
    held_out: dict[str, Path] | None = None,
) -> str:
    """The `axolotl-paft-sweep --search` line that runs this run's search alone,
    into the run's own `search/` folder (whose candidates.jsonl it takes back):
    the same held-out rows (`held_out`: side -> JSONL file, the run's own
    splits as written by `write_held_out`), measures, objective and lm-eval
    tasks, methods, budget, answer stage, and the run's tokenizer (its chat
    template, as training rendered its rows). Where the run's own split could
    not be written (the failure came first), it names the files to write."""
    held_out = held_out or {}
    sft_data = held_out.get("sft") or args.paft_merge_search_sft_data
    preference_data = (
        held_out.get("preference") or args.paft_merge_search_preference_data
    )
    words = [
        "axolotl-paft-sweep", "--search", "--base", str(base_model),
        "--sft", str(adapters["sft"].resolve()),
        "--preference", str(adapters["preference"].resolve()),
        "--sft-data", str(Path(sft_data).resolve()) if sft_data else "SFT.jsonl",
        "--preference-data",
        str(Path(preference_data).resolve()) if preference_data else "PREFERENCE.jsonl",
        "--limit", str(args.paft_merge_search_rows),
        "--budget", str(args.paft_merge_search_budget),
        "--methods", ",".join(args.paft_merge_search_methods),
        "--profiles", ",".join(args.paft_merge_search_profiles),
        "--skill-measure", args.paft_merge_search_skill_measure,
    ]  # fmt: skip
    if args.paft_merge_search_preference_measure:
        words += ["--preference-measure", args.paft_merge_search_preference_measure]
    if run_tokenizer(output_dir) is not None:
        words += ["--tokenizer", str(Path(output_dir).resolve())]
    lm_eval = args.lm_eval_objective()
    if lm_eval is not None:
        tasks = [t.model_dump(exclude_none=True) for t in lm_eval.tasks]
        words += ["--lm-eval-tasks", json.dumps(tasks)]
        words += ["--lm-eval-batch-size", str(lm_eval.batch_size)]
        for flag, value in (
            ("--lm-eval-include-path", lm_eval.include_path),
            ("--lm-eval-limit", lm_eval.limit),
            ("--lm-eval-num-fewshot", lm_eval.num_fewshot),
        ):
            if value is not None:
                words += [flag, str(value)]
        if not lm_eval.apply_chat_template:
            words.append("--lm-eval-no-chat-template")
    if args.paft_merge_search_answer_checks is not None:
        words += [
            "--answer-checks", json.dumps(args.paft_merge_search_answer_checks),
            "--finalists", str(args.paft_merge_search_finalists),
            "--answer-tokens", str(args.paft_merge_search_answer_tokens),
        ]  # fmt: skip
    words += ["--out", str((output_dir / SEARCH_DIR).resolve())]
    command = shlex.join(words)
    if not (sft_data and preference_data):
        command += (
            " (this run's own held-out splits could not be written before the "
            "failure: write held-out rows as JSONL first, SFT rows with `messages`, "
            "preference rows with question (or messages), chosen, rejected)"
        )
    return command


def results_and_next_steps(
    output_dir: Path,
    base_model: str,
    adapters: dict[str, Path],
    written: list[Path],
    merge: dict | None,
    traps: tuple[str, ...] = (),
) -> str:
    """Where each result of the run is, the commands a user runs next, and the
    run's settings that make its numbers mean little (`traps`)."""
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
    if traps:
        lines.append("paft: check this run's setup (also in paft_report.md)")
        lines += [f"  {trap}" for trap in traps]
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
    run: dict | None = None,
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
        profiles=tuple(args.paft_merge_search_profiles),
        objective="balanced" if lm_eval is None else "lm_eval",
        lm_eval=lm_eval,
        skill_measure=args.paft_merge_search_skill_measure,
        preference_measure=args.paft_merge_search_preference_measure,
        chat_template=None if tokenizer is None else tokenizer.chat_template,
        answers=args.answer_stage(),
        tokenizer=tokenizer,
        run=run,
    )
    best = output_dir / MERGEKIT_DIR / "best.yml"
    best.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(result.config, best)
    LOG.info("paft: merge search best %s, config %s", result.best, best)
    return result
