"""Is there a merge weight at which the real model keeps both behaviours? The window.

    python benchmarks/evidence/window.py OUT [--seeds 0 1 2] [--weights ...]
        [--profiles flat lines ...] [--report]

On the demo's testbed (SmolLM2-135M-Instruct by its hub id offline,
`lab.freeform`: field-card answers to description prompts, a warm frame on tip
prompts), per seed: the demo's parallel-mode run (no search), then along task
arithmetic at SFT weight 1, for every preference weight of `--weights` and every
per-layer profile of `--profiles` (`merging.candidates.PROFILES`), the merge
built in memory (equal to `mergekit-yaml`'s) and the share of greedy answers to
32 test prompts a side that open as a card (skill prompts) and with the warm
frame (tip prompts) (`lab.freeform.says`). A model that keeps both opens skill
answers as cards and tip answers warmly at one weight; a switch shows as both
shares moving together. Writes OUT/window.json a seed at a time (a rerun skips
what is done) and, with `--report`, results_window.{json,md} beside this script.
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
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 0.875, 1.0, 1.125, 1.25, 1.5)


def seed_window(opts, seed: int, done: dict) -> dict:
    """Every (profile, weight) of one seed not in `done`, added to it."""
    from transformers import AutoTokenizer

    from axolotl_paft.lab.demo import paft_run, prepare
    from axolotl_paft.lab.freeform import heldout, says
    from axolotl_paft.lab.smollm2 import HUB_ID
    from axolotl_paft.merging.candidates import Candidate, candidate_config
    from axolotl_paft.merging.configs import base_model_reference
    from axolotl_paft.merging.inmemory import InMemoryMerges
    from axolotl_paft.merging.scoring import load_model

    out = opts.out / f"seed{seed}"
    setup, _ = prepare(out, seed, 8)
    run = out / "paft"
    if not (run / "dpo" / "adapter_config.json").is_file():
        paft_run(setup, run, seed, opts.steps)
    base = base_model_reference(HUB_ID)
    tokenizer = AutoTokenizer.from_pretrained(base)
    skill_rows, pairs_rows = heldout(opts.test_rows, "test", seed)
    model = load_model(base)
    merges = InMemoryMerges(model, run / "sft", run / "dpo", out / "cache")
    if "base" not in done:
        done["base"] = says(model, tokenizer, skill_rows, pairs_rows)
    for profile in opts.profiles:
        for weight in opts.weights:
            key = f"{profile} {weight:g}"
            if key in done:
                continue
            candidate = Candidate("task_arithmetic", 1.0, weight, profile=profile)
            config = candidate_config(base, run / "sft", run / "dpo", candidate)
            with merges.candidate(config) as merged:
                done[key] = says(merged, tokenizer, skill_rows, pairs_rows)
            print(f"seed {seed} {key}: {done[key]}", flush=True)
    return done


def both(shares: dict) -> float:
    """The smaller of the two shares: what a model keeping both would raise."""
    return min(shares["skill"], shares["preference"])


def report(record: dict) -> str:
    """The window per profile: each weight's two shares per seed, and the best
    weight's smaller share per seed."""
    seeds = list(record["seeds"])
    lines = [
        "# The window: where the real model's two behaviours switch",
        "",
        f"{measured_line(record['provenance'], command=True)}",
        "",
        "Share of greedy answers (32 test prompts a side, 6 tokens) that open as "
        "a card on skill prompts / with the warm frame on tip prompts, along task "
        "arithmetic at SFT weight 1, per preference weight, per seed "
        f"({', '.join(seeds)}); base: "
        + ", ".join(
            f"{record['seeds'][s]['base']['skill']:.2f} / "
            f"{record['seeds'][s]['base']['preference']:.2f}"
            for s in seeds
        )
        + ".",
        "",
    ]
    for profile in record["profiles"]:
        lines += [
            f"## Profile `{profile}`",
            "",
            "| preference weight | " + " | ".join(f"seed {s}" for s in seeds) + " |",
            "|---|" + "---|" * len(seeds),
        ]
        for weight in record["weights"]:
            key = f"{profile} {weight:g}"
            cells = [
                f"{record['seeds'][s][key]['skill']:.2f} / "
                f"{record['seeds'][s][key]['preference']:.2f}"
                for s in seeds
            ]
            lines.append(f"| {weight:g} | " + " | ".join(cells) + " |")
        best = [
            max(both(record["seeds"][s][f"{profile} {w:g}"]) for w in record["weights"])
            for s in seeds
        ]
        lines += [
            "",
            "Best weight's smaller share per seed: "
            + ", ".join(f"{b:.2f}" for b in best),
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--weights", type=float, nargs="+", default=list(WEIGHTS))
    parser.add_argument("--profiles", nargs="+", default=None)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--test-rows", type=int, default=32)
    parser.add_argument("--report", action="store_true")
    opts = parser.parse_args()
    opts.out = opts.out.resolve()
    opts.out.mkdir(parents=True, exist_ok=True)
    offline_real_model(opts.out, opts.seeds)
    from axolotl_paft.merging.candidates import PROFILES

    opts.profiles = opts.profiles or list(PROFILES)
    state = opts.out / "window.json"
    record = json.loads(state.read_text()) if state.exists() else {"seeds": {}}
    record |= {
        "provenance": provenance(" ".join(["python", *sys.argv])),
        "weights": opts.weights,
        "profiles": opts.profiles,
    }
    for seed in opts.seeds:
        started = time.time()
        done = record["seeds"].setdefault(str(seed), {})
        seed_window(opts, seed, done)
        record.setdefault("seconds", {})[str(seed)] = time.time() - started
        state.write_text(json.dumps(record, indent=1))
    if opts.report:
        write_results(HERE, "results_window", record, report(record))


if __name__ == "__main__":
    main()
