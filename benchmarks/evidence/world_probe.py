"""Does the miniature world's design admit a 95 / 95 merge, and do its two
preconditions still hold? One seed, one world, a small grid of merges.

    python benchmarks/evidence/world_probe.py OUT [--size small] [--seed 0]
        [--steps 150] [--preference-steps 150] [--rate 1e-3] [--ratios 10,1]
        [--marker "Please answer politely: "]
        [--sft-weights 0.5,0.75,1,1.25,1.5] [--preference-weights 0.5,1,1.5,2]

Builds (or reuses) the world under OUT/world (`world.build_world`), trains the
SFT adapter (lambda 0, `--rate`) and, per ratio, the preference adapter (rate
`--rate / ratio`) and sequential SFT->DPO (`world.sequential`, same preference
recipe), and scores with `world.Scorer` on `world.heldout_rows(96)`: base,
SFT only, preference only, sequential, equal-weight task arithmetic; the
preconditions (`world.preconditions`); and skill kept / preference kept of task
arithmetic on a weight grid and of TIES / DARE-TIES (weights 1 / 1) at two
densities. `--marker` overrides `world.MARKER` (a variation of the design; give
it its own OUT). `--sft-weights` / `--preference-weights` replace the task
arithmetic grid; a rerun with another grid adds its merges to the same file.
Results go to OUT/probe-s<seed>-r<ratio>.json (resumable).

    python benchmarks/evidence/world_probe.py --report NAME=OUT@COMMIT [...]

collects the probes of each design (NAME, the OUT it was probed in, the commit
of its code) into benchmarks/evidence/results_world_probe.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from axolotl_paft.const import OFFLINE_ENV
from axolotl_paft.lab.bench import merge_and_score, world_provenance

os.environ.update(OFFLINE_ENV)
os.environ.setdefault("OMP_NUM_THREADS", "1")

SCRIPT = "benchmarks/evidence/world_probe.py"

SFT_WEIGHTS = (0.5, 0.75, 1.0, 1.25, 1.5)
PREFERENCE_WEIGHTS = (0.5, 1.0, 1.5, 2.0)
DENSITIES = (0.5, 0.7)


def candidates(sft_weights=SFT_WEIGHTS, preference_weights=PREFERENCE_WEIGHTS):
    from axolotl_paft.merging.candidates import Candidate

    grid = [
        Candidate("task_arithmetic", s, p)
        for s in sft_weights
        for p in preference_weights
    ]
    for method in ("ties", "dare_ties"):
        grid += [Candidate(method, 1.0, 1.0, d) for d in DENSITIES]
    return grid


def probe_ratio(world, scorer, sft, out: Path, opts, ratio: float) -> dict:
    from axolotl_paft.lab.world import SEARCH_GOAL as GOAL
    from axolotl_paft.lab.world import (
        meets_goal,
        preconditions,
        preference_config,
        sequential,
        train,
    )
    from axolotl_paft.merging.candidates import Candidate
    from axolotl_paft.merging.scoring import kept_shares

    path = out / f"probe-s{opts.seed}-r{ratio:g}.json"
    result = json.loads(path.read_text()) if path.is_file() else {}
    result.setdefault("merges", {})
    start = time.time()
    common = {"seed": opts.seed, "steps": opts.preference_steps}
    kw = {"learning_rate": opts.rate / ratio, **common}
    runs = out / "runs"
    pref_dir = runs / f"s{opts.seed}-pref-r{ratio:g}"
    pref = train(preference_config(world, pref_dir, **kw), pref_dir)
    seq = sequential(world, sft, runs / f"s{opts.seed}-seq-r{ratio:g}", **kw)
    cache = out / "lora-cache" / f"s{opts.seed}-r{ratio:g}"
    if "references" not in result:
        refs = {"base": scorer(None), "sft": scorer(sft), "preference": scorer(pref)}
        refs |= {
            "sequential": scorer(seq),
            "task_arithmetic": merge_and_score(
                scorer, world, sft, pref, Candidate("task_arithmetic"),
                out / "merged" / "ta", cache,
            ),
        }  # fmt: skip
        result["references"] = refs
        result["preconditions"] = preconditions(
            *(refs[k] for k in ("base", "sft", "preference", "sequential")),
            refs["task_arithmetic"],
        )
        path.write_text(json.dumps(result, indent=1))
    refs = result["references"]
    for name, metrics in refs.items():
        print(f"r{ratio:g} {name}: {fmt(metrics)}", flush=True)
    print(f"r{ratio:g} preconditions: {result['preconditions']}", flush=True)
    for candidate in candidates(opts.sft_weights, opts.preference_weights):
        if candidate.name in result["merges"]:
            continue
        metrics = merge_and_score(
            scorer, world, sft, pref, candidate, out / "merged" / candidate.name,
            cache,
        )  # fmt: skip
        kept = kept_shares(metrics, refs)
        result["merges"][candidate.name] = {"metrics": metrics, "kept": kept}
        print(
            f"r{ratio:g} {candidate.name}: skill kept {kept['skill_kept']:.2f}, "
            f"preference kept {kept['preference_kept']:.2f}",
            flush=True,
        )
        path.write_text(json.dumps(result, indent=1))
    goal = [n for n, e in result["merges"].items() if meets_goal(e["kept"])]
    best = max(
        result["merges"], key=lambda n: min(result["merges"][n]["kept"].values())
    )
    result["summary"] = {"reaching_goal": goal, "most_balanced": best}
    result["provenance"] = world_provenance(sys.argv[1:], SCRIPT)
    result.setdefault("seconds", 0)
    result["seconds"] += time.time() - start
    path.write_text(json.dumps(result, indent=1))
    print(
        f"r{ratio:g} reaching {GOAL}/{GOAL}: {goal}; most balanced {best} "
        f"{result['merges'][best]['kept']}",
        flush=True,
    )
    return result


def fmt(metrics: dict) -> str:
    return (
        f"skill {metrics['sft_exact_match']:.3f} "
        f"pref acc {metrics['preference_accuracy']:.3f} "
        f"margin {metrics['preference_margin']:.2f}"
    )


def weights(text: str) -> tuple[float, ...]:
    return tuple(float(w) for w in text.split(","))


def report(designs: list[str]) -> None:
    """One row per probe file of each `NAME=OUT@COMMIT`, into HERE."""
    from axolotl_paft.lab.world import (
        MIN_ALIGNMENT_TAX,
        MIN_INTERFERENCE,
        meets_goal,
        preconditions_hold,
    )
    from axolotl_paft.lab.world import SEARCH_GOAL as GOAL

    here = Path(__file__).resolve().parent
    rows, collected = [], {}
    for design in designs:
        name, rest = design.split("=", 1)
        folder, commit = rest.rsplit("@", 1)
        paths = Path(folder).glob("probe-s*-r*.json")
        for path in sorted(
            paths, key=lambda p: [float(x[1:]) for x in p.stem[6:].split("-")]
        ):
            probe = json.loads(path.read_text())
            seed, ratio = path.stem.split("-")[1:]
            collected[f"{name}/{seed}-{ratio}"] = probe | {"commit": commit}
            refs, pre = probe["references"], probe["preconditions"]
            merges = probe["merges"]
            best = max(merges, key=lambda n: min(merges[n]["kept"].values()))
            kept = merges[best]["kept"]
            reaching = sum(meets_goal(m["kept"]) for m in merges.values())
            holds = preconditions_hold(pre)
            rows.append(
                f"| {name} | {seed[1:]} | {ratio[1:]} | "
                + " | ".join(
                    f"{refs[k]['sft_exact_match']:.2f} / "
                    f"{refs[k]['preference_accuracy']:.2f}"
                    for k in ("sft", "preference", "sequential", "task_arithmetic")
                )
                + f" | {pre['alignment_tax']:.2f} | {pre['ta_skill_lost']:.2f} / "
                f"{pre['ta_preference_lost']:.2f} | {'yes' if holds else 'no'} | "
                f"{reaching} of {len(merges)} | {best}: {kept['skill_kept']:.3f} / "
                f"{kept['preference_kept']:.3f} |"
            )
    lines = [
        "# World designs probed: preconditions and the 95 / 95 merge",
        "",
        "One seed per row, held-out rows `world.heldout_rows(96)`; small world:"
        " 150 SFT / 150 preference steps, full world: 300 / 200; SFT rate 1e-3,"
        " preference rate 1e-3 / ratio. Merges: task arithmetic on a weight grid"
        " (finer grids added for v3), TIES and DARE-TIES at 1 / 1. Cells:"
        " skill exact match / preference accuracy. Preconditions: alignment tax"
        f" >= {MIN_ALIGNMENT_TAX:g} and equal-weight task arithmetic (TA) losing"
        f" >= {MIN_INTERFERENCE:g} of one side's gain. Goal: a merge keeping"
        f" >= {GOAL:.0%} of both gains.",
        "",
        "| design | seed | ratio | SFT only | preference only | sequential "
        "| TA 1:1 | tax | TA lost (skill / pref) | both hold | merges at the goal "
        "| most balanced (skill kept / pref kept) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "## Provenance",
        "",
        *(
            f"- {d.split('=')[0]}: the code of commit {d.rsplit('@', 1)[1]}"
            for d in designs
        ),
        *(
            f"- {k}: {v}"
            for k, v in world_provenance(["--report", *designs], SCRIPT).items()
        ),
    ]
    (here / "results_world_probe.md").write_text("\n".join(lines) + "\n")
    (here / "results_world_probe.json").write_text(json.dumps(collected, indent=1))


def main() -> None:
    if sys.argv[1:2] == ["--report"]:
        report(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", default="small", choices=("full", "small"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=150, help="SFT steps")
    parser.add_argument("--preference-steps", type=int, default=150)
    parser.add_argument("--rate", type=float, default=1e-3, help="SFT rate")
    parser.add_argument("--ratios", default="10", help="SFT rate : preference rate")
    parser.add_argument("--marker", help="override world.MARKER")
    parser.add_argument("--sft-weights", type=weights, default=SFT_WEIGHTS)
    parser.add_argument(
        "--preference-weights", type=weights, default=PREFERENCE_WEIGHTS
    )
    opts = parser.parse_args()

    from axolotl_paft.lab import world as w

    if opts.marker is not None:
        w.MARKER = opts.marker
    out = opts.out.resolve()
    start = time.time()
    world = w.build_world(out / "world", opts.size)
    print(f"world ready in {time.time() - start:.0f}s", flush=True)
    scorer = w.Scorer(world.model_dir, *w.heldout_rows(96))
    sft_dir = out / "runs" / f"s{opts.seed}-sft"
    sft = w.train(
        w.sft_config(
            world, sft_dir, seed=opts.seed, steps=opts.steps, learning_rate=opts.rate
        ),
        sft_dir,
    )
    for ratio in (float(r) for r in opts.ratios.split(",")):
        probe_ratio(world, scorer, sft, out, opts, ratio)
    print(f"total {time.time() - start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
