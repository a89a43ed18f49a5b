"""Does L1 sparsity make the PAFT merge better? The grid on the miniature world.

    python benchmarks/evidence/evidence.py OUT [--world DIR] [--size full|small]
        [--seeds 0,1,2] [--steps 300] [--preference-steps 200] [--ratios 1,10,40]
        [--grid-ratio 10] [--search-budget 24]
    python benchmarks/evidence/evidence.py OUT --report [--publish]

World: `axolotl_paft.lab.world` (3 SFT skills; a preference for a polite style on the
same kinds of questions, marked as asking for it, whose rejected answer is the
terse SFT format). Per seed:

- every SFT setting (lambda x mode, lambda 0 shared) and every preference setting
  (SFT rate : preference rate in `--ratios`) is trained once, standalone, through
  `axolotl train` (in-process). Parallel mode's SFT adapter is bit-identical to a
  standalone SFT run and the two adapters are independent (tests/test_trainer.py),
  so every (SFT, preference) pair is what one parallel run would have produced;
- baselines: SFT only, preference only, sequential SFT->DPO (the lambda-0 SFT
  merged into the base, DPO on top, reference = the SFT model), one mixed-loss
  adapter (DPO + TRL's SFT term on the chosen answers);
- merges: every SFT setting x every method at the product's default parameters
  (weights 1/1, density 0.5, SLERP t 0.5) with the `--grid-ratio` preference
  adapter, and task arithmetic + TIES at lambda 0 for the other ratios, each built
  by mergekit's engine;
- the merge search (`merging.search`) at lambda 0 and at `--search-l1`, on a
  validation split, reported on the test split like everything else.

Metrics on held-out rows (`axolotl_paft.lab.world.heldout_rows`): skill = greedy exact
match of the SFT sentence (`evaluate.MEASURES["exact_match"]`), preference accuracy =
implicit reward against the base > 0, score = their mean. Preconditions (lambda 0):
alignment tax = share of the SFT-only skill gain that sequential loses (>= 20%);
interference = share of one side's gain that task arithmetic 1:1 loses (>= 10%).
One process runs the given seeds one after the other and writes OUT/seed<N>.json
after every phase (the grid ratio at lambda 0 first, then the L1 grid setting by
setting, then the other ratios, then the search on an L1 adapter); run one
process per seed to use several cores. `--report` aggregates the seed files
(`evidence_report.py`) into OUT, `--publish` into results_evidence.* beside this
script.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from axolotl_paft.const import OFFLINE_ENV
from axolotl_paft.lab.bench import (
    SFT_RATE,
    merge_and_score,
    sft_dir,
    sft_run,
    sft_settings,
    sft_tag,
    world_provenance,
)
from axolotl_paft.merging.configs import DEFAULT_SEARCH_METHODS
from axolotl_paft.merging.search import DEFAULT_BUDGET

os.environ.update(OFFLINE_ENV)
os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core per process: run seeds
# side by side (two threads per process thrash when the cores are shared)

METHODS = DEFAULT_SEARCH_METHODS  # every method the search covers
OTHER_RATIO_METHODS = ("task_arithmetic", "ties")
HERE = Path(__file__).resolve().parent
SCRIPT = "benchmarks/evidence/evidence.py"


def baseline_runs(world, out: Path, seed: int, opts, ratio: float) -> dict:
    """At one SFT : preference rate ratio: preference only and sequential (plus
    the lambda-0 SFT, and the mixed adapter at the grid ratio); returns name ->
    adapter or model folder."""
    from axolotl_paft.lab.world import preference_config, sequential, train

    sft = train(sft_run(world, out, seed, opts, "loss", 0.0), sft_dir(out, seed, "l0"))
    runs = {"sft/l0": sft}
    kw = {"seed": seed, "steps": opts.preference_steps}
    kw["learning_rate"] = SFT_RATE / ratio
    path = out / f"s{seed}-pref-r{ratio:g}"
    runs[f"pref/r{ratio:g}"] = train(preference_config(world, path, **kw), path)
    path = out / f"s{seed}-seq-r{ratio:g}"
    runs[f"seq/r{ratio:g}"] = sequential(world, sft, path, **kw)
    if ratio == opts.grid_ratio:
        path = out / f"s{seed}-mixed-r{ratio:g}"
        config = preference_config(world, path, mixed=True, **kw)
        runs[f"mixed/r{ratio:g}"] = train(config, path)
    return runs


def seed_preconditions(scores: dict, ratio: str) -> dict:
    from axolotl_paft.lab.world import preconditions

    return preconditions(
        scores["base"], scores["sft/l0"], scores[f"pref/{ratio}"],
        scores[f"seq/{ratio}"], scores[f"merge/{ratio}/l0/task_arithmetic"],
    )  # fmt: skip


def run_seed(world, scorer, search_rows, out: Path, seed: int, opts, save) -> None:
    """Train, merge, search and score everything of one seed, in order of
    importance; `save(result)` after every phase (partial results are marked)."""
    from axolotl_paft.lab.world import train
    from axolotl_paft.merging.search import search
    from axolotl_paft.training.sparsity import measure, saved_lora_factors, summarize

    g = f"r{opts.grid_ratio:g}"
    cache = out / "lora-cache" / f"seed{seed}"
    runs = baseline_runs(world, out / "runs", seed, opts, opts.grid_ratio)
    scores = {"base": scorer(None)}
    scores.update({name: scorer(path) for name, path in runs.items()})
    result = {"scores": scores, "sparsity": {}, "searches": {}, "phase": "baselines"}

    def merge_all(ratio: str, tag: str, methods=METHODS) -> None:
        from axolotl_paft.merging.candidates import Candidate

        for method in methods:
            scores[f"merge/{ratio}/{tag}/{method}"] = merge_and_score(
                scorer, world, runs[f"sft/{tag}"], runs[f"pref/{ratio}"],
                Candidate(method),
                out / "merged" / f"s{seed}-{ratio}-{tag}-{method}", cache,
            )  # fmt: skip
        sparsity = summarize(measure(saved_lora_factors(runs[f"sft/{tag}"]), 0.01))
        result["sparsity"][tag] = sparsity["sparsity"]
        print(f"seed {seed}: merged {ratio} {tag}", flush=True)

    def run_search(tag: str) -> None:
        folder = out / "search" / f"s{seed}-{tag}"
        found = search(
            world.model_dir, runs[f"sft/{tag}"], runs[f"pref/{g}"], *search_rows,
            folder, budget=opts.search_budget, cache=cache,
            preference_measure="accuracy",  # the recorded results' measure
        )  # fmt: skip
        scores[f"search/{g}/{tag}"] = scorer(folder / "merged" / "best")
        result["searches"][tag] = {
            "best": found.best,
            "evaluated": len(found.leaderboard),
        }

    merge_all(g, "l0")
    result["preconditions"] = {g: seed_preconditions(scores, g)}
    run_search("l0")
    save(result | {"phase": "lambda 0 done"})
    for mode, lam in sft_settings()[1:]:
        tag = sft_tag(mode, lam)
        runs[f"sft/{tag}"] = train(
            sft_run(world, out / "runs", seed, opts, mode, lam),
            sft_dir(out / "runs", seed, tag),
        )
        scores[f"sft/{tag}"] = scorer(runs[f"sft/{tag}"])
        merge_all(g, tag)
        save(result | {"phase": f"L1 grid up to {tag}"})
    for ratio in opts.ratios:
        if ratio == opts.grid_ratio:
            continue
        more = baseline_runs(world, out / "runs", seed, opts, ratio)
        runs.update(more)
        scores.update({n: scorer(p) for n, p in more.items() if n not in scores})
        merge_all(f"r{ratio:g}", "l0", OTHER_RATIO_METHODS)
        result["preconditions"][f"r{ratio:g}"] = seed_preconditions(
            scores, f"r{ratio:g}"
        )
        save(result | {"phase": f"ratio {ratio:g} done"})
    run_search(opts.search_l1)
    save(result | {"phase": "complete"})


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", default="full", choices=("full", "small"))
    parser.add_argument("--world", type=Path, help="world root (default OUT/world)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=300, help="SFT steps")
    parser.add_argument("--preference-steps", type=int, default=200)
    parser.add_argument("--ratios", default="1,10,40")
    parser.add_argument("--grid-ratio", type=float, default=10)
    parser.add_argument("--search-budget", type=int, default=DEFAULT_BUDGET)
    parser.add_argument("--search-l1", default="proximal0.3")
    parser.add_argument("--eval-rows", type=int, default=48)
    parser.add_argument(
        "--report", action="store_true", help="aggregate OUT/seed*.json only"
    )
    parser.add_argument("--publish", action="store_true", help="--report into HERE")
    opts = parser.parse_args(argv)
    out = opts.out.resolve()
    if opts.report:
        from evidence_report import report

        report(out, HERE if opts.publish else out)
        return
    opts.ratios = [float(r) for r in opts.ratios.split(",")]
    from axolotl_paft.lab.world import (
        Scorer,
        build_world,
        heldout_rows,
        preference_rows,
        skill_rows,
    )

    start = time.time()
    started = world_provenance(argv, SCRIPT)  # the commit the grid's code came from
    world = build_world(opts.world or out / "world", opts.size)
    scorer = Scorer(world.model_dir, *heldout_rows(opts.eval_rows))
    search_rows = (
        skill_rows(opts.eval_rows, 200),
        preference_rows(opts.eval_rows, 201),
    )
    for seed in (int(s) for s in opts.seeds.split(",")):

        def save(result: dict, seed: int = seed) -> None:
            result["provenance"] = {
                **started,
                "date": world_provenance(argv, SCRIPT)["date"],
            }
            result["options"] = {**vars(opts), "out": str(out), "seed": seed}
            result["minutes"] = (time.time() - start) / 60
            path = out / f"seed{seed}.json"
            path.write_text(json.dumps(result, indent=1, default=str))
            print(f"seed {seed}: {result['phase']} at {result['minutes']:.1f} min")

        run_seed(world, scorer, search_rows, out, seed, opts, save)


if __name__ == "__main__":
    main()
