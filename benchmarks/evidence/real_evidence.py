"""The merge search's evidence on the real model, over seeds.

    python benchmarks/evidence/real_evidence.py OUT [--seeds 0 1 2] [--l1 loss:1e-4 ...]
        [--steps --budget --rows --test-rows: the demo's sizes by default]

On SmolLM2-135M-Instruct (named by its hub id from an offline HF cache), on the
demo's testbed (`axolotl_paft.lab.freeform`: field-card answers of 85-100 tokens
the base lacks, a warm frame over the same tip said plainly on other prompts,
trained with `rpo`; results_real_evidence_warm_over_curt.md was measured on
the earlier warm-over-curt pairs with plain DPO), per seed, in OUT/seedN:

- one parallel-mode `axolotl train` with the merge search (the demo's run,
  `axolotl_paft.lab.demo.paft_run`): SFT only, preference only, the searched
  merge;
- the usual pipeline, SFT folded in and the preference loss on top with the
  same settings;
- the run's own equal-weight `task_arithmetic` and `ties` configs, built by
  mergekit as a user would (`mergekit-yaml` on `mergekit/<method>.yml`);
- per `--l1` setting (mode:lambda), one more parallel run with that L1 penalty
  on the SFT LoRA and its own search: its SFT only and its searched merge.

Everything is scored on test rows no run or search saw (`heldout(..., "test")`),
by the search's measures (per-token NLL of the answers, implicit-reward margin
against the base) with the lambda-0 SFT-only and preference-only adapters as
references (`search.Scorer`: kept shares with paired-bootstrap 95% intervals),
and by what the models say (`freeform.says`: the share of greedy answers that
open as a card / with the warm frame). Writes OUT/real_evidence.{json,md}
(provenance included), a seed at a time so an interrupted run keeps what is
done. CPU, at the demo's sizes on 2 nearly idle cores: 8 minutes a seed at
lambda 0 only (`--l1` with no setting; results_real_evidence.md, 2026-12-03), and
each L1 setting adds a parallel run with its search; the demo's OUT holds seed
0's lambda-0 runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from axolotl_paft.lab.bench import measured_line, offline_real_model, provenance

EMITTED = ("task_arithmetic", "ties")  # the run's configs at their default weights
ROWS = (
    "base",
    "SFT only",
    "preference only",
    "sequential SFT->DPO",
    "task_arithmetic 1:1",
    "ties 1:1",
    "PAFT searched",
)


def l1_setting(text: str) -> tuple[str, float]:
    mode, _, strength = text.partition(":")
    return mode, float(strength)


def seed_models(opts, seed: int) -> dict[str, Path | None]:
    """Train and merge everything of one seed (reusing what is on disk)."""
    from axolotl_paft.lab.demo import paft_run, prepare, sequential_run
    from axolotl_paft.merging.configs import run_merge_config

    out = opts.out / f"seed{seed}"
    setup, search_files = prepare(out, seed, opts.rows)
    search = {
        "paft_merge_search": True,
        "paft_merge_search_budget": opts.budget,
        **search_files,
    }
    run = out / "paft"
    if not (run / "search" / "merged" / "best" / "config.json").is_file():
        paft_run(setup, run, seed, opts.steps, **search)
    sequential = out / "sequential" / "model"
    if not (sequential / "config.json").is_file():
        sequential_run(setup, run / "sft", out / "sequential", seed, opts.steps)
    models = {
        "base": None,
        "SFT only": run / "sft",
        "preference only": run / "dpo",
        "sequential SFT->DPO": sequential,
    }
    for method in EMITTED:
        merged = out / "emitted" / method
        if not (merged / "config.json").is_file():
            run_merge_config(
                run / "mergekit" / f"{method}.yml", merged, out / "emitted" / "cache"
            )
        models[f"{method} 1:1"] = merged
    models["PAFT searched"] = run / "search" / "merged" / "best"
    for text in opts.l1:
        mode, strength = l1_setting(text)
        l1_run = out / f"l1-{mode}-{strength:g}"
        if not (l1_run / "search" / "merged" / "best" / "config.json").is_file():
            paft_run(
                setup, l1_run, seed, opts.steps,
                paft_l1_lambda=strength, paft_l1_mode=mode, **search,
            )  # fmt: skip
        models[f"SFT only, L1 {text}"] = l1_run / "sft"
        models[f"PAFT searched, L1 {text}"] = l1_run / "search" / "merged" / "best"
    return models


def seed_results(opts, seed: int) -> dict:
    from axolotl_paft.lab.demo import score_models
    from axolotl_paft.lab.freeform import PREFERENCE_QUESTION, SKILL_QUESTION, heldout
    from axolotl_paft.lab.smollm2 import HUB_ID

    models = seed_models(opts, seed)
    results = score_models(
        HUB_ID,
        models,
        *heldout(opts.test_rows, "test", seed),
        (SKILL_QUESTION, PREFERENCE_QUESTION),
        opts.answer_tokens,
    )
    board = json.loads(
        (opts.out / f"seed{seed}" / "paft" / "search" / "leaderboard.json").read_text()
    )
    return {"searched": board["best"], "models": results}


def markdown(record: dict) -> str:
    from axolotl_paft.merging.leaderboard import interval_text

    seeds = record["seeds"]
    names = list(next(iter(seeds.values()))["models"])
    lines = [
        "# The merge search on the real model (SmolLM2-135M-Instruct), per seed",
        "",
        f"Produced by `{record['provenance']['command']}` (docstring of "
        "`benchmarks/evidence/real_evidence.py`). Test rows per side: "
        f"{record['options']['test_rows']}. Kept shares: of the lambda-0 SFT-only "
        "adapter's NLL gain over the base (skill) and of the preference-only "
        "adapter's margin (preference), with paired-bootstrap 95% intervals; "
        "`balanced` = the smaller of the two, capped at 1.",
        "",
        "| model | " + " | ".join(f"seed {s}: skill kept / preference kept / "
                                  "balanced" for s in seeds) + " | mean balanced |",
        "|---|" + "---|" * (len(seeds) + 1),
    ]  # fmt: skip
    for name in names:
        cells, balanced = [], []
        for result in seeds.values():
            m = result["models"][name]["metrics"]
            cells.append(
                f"{interval_text(m, 'skill_kept', 2)} / "
                f"{interval_text(m, 'preference_kept', 2)} / "
                f"{m['balanced']:.2f}"
            )
            balanced.append(m["balanced"])
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {statistics.mean(balanced):.2f} |"
        )
    lines += [
        "",
        "What the models say: the share of the test prompts whose greedy answer "
        "opens in the taught format (`freeform.says`: a card, \"FIELD CARD\", to "
        "the skill questions / the warm frame, \"Happy to help\", to the tip "
        "questions), which teacher-forced NLL does not see",
        "",
        "| model | " + " | ".join(f"seed {s}: card / warm" for s in seeds)
        + " | mean card / warm |",
        "|---|" + "---|" * (len(seeds) + 1),
    ]  # fmt: skip
    for name in names:
        said = [result["models"][name]["says"] for result in seeds.values()]
        cells = [f"{x['skill']:.2f} / {x['preference']:.2f}" for x in said]
        mean = {k: statistics.mean(x[k] for x in said) for k in said[0]}
        lines.append(
            f"| {name} | " + " | ".join(cells)
            + f" | {mean['skill']:.2f} / {mean['preference']:.2f} |"
        )  # fmt: skip
    lines += ["", "Searched winners: " + ", ".join(
        f"seed {s}: `{r['searched']}`" for s, r in seeds.items()
    ), "", "Raw values (seed " + str(next(iter(seeds))) + "): answer NLL and margin",
        "", "| model | answer NLL | margin | answer to the skill question |",
        "|---|---|---|---|"]  # fmt: skip
    first = next(iter(seeds.values()))["models"]
    for name, result in first.items():
        m = result["metrics"]
        answer = result["answers"][0].replace("\n", " / ").replace("|", "\\|")
        lines.append(
            f"| {name} | {m['sft_loss']:.3f} | {m['preference_margin']:.2f} | "
            f"{answer[:160]} |"
        )
    lines += ["", measured_line(record["provenance"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    from axolotl_paft.lab.demo import add_sizes

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    add_sizes(parser)
    parser.add_argument("--l1", nargs="*", default=["loss:1e-4"])
    opts = parser.parse_args(argv)
    opts.out = opts.out.resolve()
    opts.out.mkdir(parents=True, exist_ok=True)
    offline_real_model(opts.out, opts.seeds)
    record = {
        "provenance": provenance(
            "python benchmarks/evidence/real_evidence.py "
            + " ".join(sys.argv[1:] if argv is None else argv)
        ),
        "options": {k: str(v) for k, v in vars(opts).items()}
        | {"test_rows": opts.test_rows},
        "seeds": {},
    }  # fmt: skip
    for seed in opts.seeds:
        record["seeds"][seed] = seed_results(opts, seed)
        (opts.out / "real_evidence.json").write_text(json.dumps(record, indent=1))
        (opts.out / "real_evidence.md").write_text(markdown(record))
        print(markdown(record), flush=True)


if __name__ == "__main__":
    main()
