"""The merge search's second stage on the real model: do its checks move, what
does it pick, and what does it cost per candidate?

    python benchmarks/evidence/answer_stage.py OUT [--seeds 0] [--budget 6]
        [--finalists 6] [--answer-tokens 128] [--report]

Reuses the demo's parallel-mode adapters of `benchmarks/evidence/window.py OUT`
(trained there when absent). Per seed: the search on the demo's search rows
(`heldout(24, "search", seed)`) with the answer stage declared as a user would
(skill answers start with "FIELD CARD", preference answers with "Happy to
help"), then the screen's winner and the stage's winner scored on test rows
no search saw (`lab.freeform.says`, 32 prompts a side). Records the references'
pass rates with the gain's 95% interval (does the measure move, base against
each reference?), each finalist's pass rates and seconds (build + generation),
and both winners. Writes OUT/answer_stage.json; with `--report`,
results_answer_stage.{json,md} beside this script.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from axolotl_paft.lab.bench import (
    measured_line,
    offline_real_model,
    provenance,
    write_results,
)

HERE = Path(__file__).resolve().parent
CHECKS = {
    "skill": [{"starts_with": "FIELD CARD"}],
    "preference": [{"starts_with": "Happy to help"}],
}


def seed_stage(opts, seed: int) -> dict:
    from transformers import AutoTokenizer

    from axolotl_paft.lab.demo import paft_run, prepare
    from axolotl_paft.lab.freeform import heldout, says
    from axolotl_paft.lab.smollm2 import HUB_ID
    from axolotl_paft.merging.answers import AnswerStage, parse_checks
    from axolotl_paft.merging.candidates import build_candidate
    from axolotl_paft.merging.configs import base_model_reference
    from axolotl_paft.merging.scoring import load_model
    from axolotl_paft.merging.search import _candidate, _rank, search

    out = opts.out / f"seed{seed}"
    setup, _ = prepare(out, seed, 8)
    run = out / "paft"
    if not (run / "dpo" / "adapter_config.json").is_file():
        paft_run(setup, run, seed, 16)
    base = base_model_reference(HUB_ID)
    stage = AnswerStage(parse_checks(CHECKS), opts.finalists, opts.answer_tokens)
    started = time.time()
    result = search(
        base, run / "sft", run / "dpo", *heldout(24, "search", seed),
        out / f"answers-b{opts.budget}", budget=opts.budget, answers=stage,
    )  # fmt: skip
    seconds = time.time() - started
    said = json.loads(result.paths[1].read_text())["answers"]
    tokenizer = AutoTokenizer.from_pretrained(base)
    test = heldout(32, "test", seed)
    screen = max(result.leaderboard, key=_rank)  # the screen's own winner
    winners = {}
    for label, entry in (("answers", result.leaderboard[0]), ("screen", screen)):
        merged = result.merged
        if entry is not result.leaderboard[0]:
            merged = build_candidate(
                base, run / "sft", run / "dpo", _candidate(entry),
                out / "screen-best", result.cache,
            )  # fmt: skip
        opened = says(load_model(merged), tokenizer, *test)
        winners[label] = {"name": entry["name"], "test_says": opened}
    finalists = [
        {
            "name": e["name"],
            **{k: e["answers"][k] for k in e["answers"] if k != "samples"},
            "samples": e["answers"]["samples"],
        }
        for e in result.leaderboard
        if "answers" in e
    ]
    return {
        "references": said["references"],
        "reference_gains": said["reference_gains"],
        "finalists": finalists,
        "winners": winners,
        "search_seconds": seconds,
    }


def report(record: dict) -> str:
    lines = [
        "# The search's answer stage on the real model",
        "",
        measured_line(record["provenance"], command=True),
        "",
        f"Checks: {json.dumps(CHECKS)}; answers of at most "
        f"{record['answer_tokens']} tokens, stopped at `<|im_end|>`; "
        f"{record['finalists']} finalists of a screen of {record['budget']} "
        "candidates, 24 search rows a side.",
        "",
    ]
    for seed, r in record["seeds"].items():
        lines += [f"## Seed {seed}", "", "| model | skill pass | preference pass |"]
        lines.append("|---|---|---|")
        for name, m in r["references"].items():
            lines.append(
                f"| {name} | {m['skill_pass_rate']:.2f} | "
                f"{m['preference_pass_rate']:.2f} |"
            )
        for side, g in r["reference_gains"].items():
            lines.append(
                f"\n{side} reference's gain over the base: {g['gain']:.2f} "
                f"[{g['low']:.2f}, {g['high']:.2f}] (clear of 0: {g['clear']})"
            )
        lines += [
            "",
            "| finalist | skill pass | preference pass | balanced | seconds |",
            "|---|---|---|---|---|",
        ]
        for f in r["finalists"]:
            lines.append(
                f"| {f['name']} | {f['skill_pass_rate']:.2f} | "
                f"{f['preference_pass_rate']:.2f} | "
                f"{f.get('balanced', float('nan')):.2f} "
                f"| {f['seconds']:.1f} |"
            )
        lines.append("")
        for label, w in r["winners"].items():
            s = w["test_says"]
            lines.append(
                f"- {label} winner {w['name']}: on 32 test prompts a side, opens as "
                f"a card {s['skill']:.2f}, warmly {s['preference']:.2f}"
            )
        lines += ["", f"Search wall time {r['search_seconds']:.0f} s.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--budget", type=int, default=6)
    parser.add_argument("--finalists", type=int, default=6)
    parser.add_argument("--answer-tokens", type=int, default=128)
    parser.add_argument("--report", action="store_true")
    opts = parser.parse_args()
    opts.out = opts.out.resolve()
    offline_real_model(opts.out, opts.seeds)
    state = opts.out / "answer_stage.json"
    record = json.loads(state.read_text()) if state.exists() else {"seeds": {}}
    record |= {
        "provenance": provenance(" ".join(["python", *sys.argv])),
        "budget": opts.budget,
        "finalists": opts.finalists,
        "answer_tokens": opts.answer_tokens,
    }
    for seed in opts.seeds:
        if str(seed) not in record["seeds"]:
            record["seeds"][str(seed)] = seed_stage(opts, seed)
            state.write_text(json.dumps(record, indent=1))
    if opts.report:
        write_results(HERE, "results_answer_stage", record, report(record))


if __name__ == "__main__":
    main()
