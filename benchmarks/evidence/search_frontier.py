"""Which merges can reach the goal? The attainable set of the merge search.

    python benchmarks/evidence/search_frontier.py OUT --world DIR [--seeds 0,1,2]
        [--methods task_arithmetic,ties,dare_ties] [--densities 0.3,0.5,0.7,0.85]
        [--sft-weights 0.5,...] [--preference-weights 0.25,...]
    python benchmarks/evidence/search_frontier.py OUT --world DIR --search NAME
        [--search-budget 24] [--search-rows 48] [--search-sft l0] [--test-rows 48]
    python benchmarks/evidence/search_frontier.py OUT --report [--publish [NAME]]

The goal: on the miniature world (`axolotl_paft.lab.world`), in every seed, the
searched merge should keep >= 95% of the SFT-only skill gain and >= 95% of the
preference-only accuracy (and beat sequential SFT->DPO on the score). Per seed,
with `evidence.py`'s own recipe (lambda 0 SFT adapter, preference adapter at SFT
rate : preference rate 10 or `--ratio`, 300 / 200 steps):

- trains the two adapters (`bench.sft_run`, `world.preference_config`);
- scores the references (base, SFT only, preference only) and a dense grid of
  merges (method x SFT weight x preference weight x density, every one built by
  mergekit's engine through `search.build_candidate`, as the search builds them)
  with the search's scorer (`evaluate.quick_metrics`) on the validation rows the
  search picks on (seeds 200/201) and on the test rows (`world.heldout_rows`,
  seeds 100/101), 48 each;
- `--search NAME` runs `axolotl_paft.merging.search.search` (the code as it is) on the
  validation rows and scores its pick on the test rows too; `--search-sft TAG`
  searches with one of evidence.py's L1 SFT adapters instead (does L1 help once
  the merge is tuned?).

skill kept = (skill - base) / (SFT-only - base), preference kept = the same for
preference accuracy against the preference-only adapter, both on the same split.
TIES, DELLA and linear normalise by the weights (mergekit's defaults) and SLERP
reads only t = w_pref / (w_sft + w_pref): for them only the weight ratio matters,
so one merge per ratio is built and its metrics shared by the other weight pairs
of that ratio (`same_as`). DARE's random drop is seeded like every merge
(`merge.MERGE_SEED`). `--search-rows` lets the search pick on more validation
rows than the test rows its pick is scored on.

Results go to OUT/seed<N>.json (resumable: a candidate already scored is kept);
`--report` writes frontier.{md,json,png} into OUT, `--publish [NAME]` into
NAME.* beside this script (default results_search_frontier).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
from axolotl_paft.merging.search import DEFAULT_BUDGET

os.environ.update(OFFLINE_ENV)
os.environ.setdefault("OMP_NUM_THREADS", "1")

HERE = Path(__file__).resolve().parent
SCRIPT = "benchmarks/evidence/search_frontier.py"

SFT_WEIGHTS = (0.5, 0.75, 1.0, 1.25, 1.5)
PREFERENCE_WEIGHTS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
DENSITIES = (0.3, 0.5, 0.7, 0.85)
RATIO_ONLY = ("ties", "della", "linear", "slerp")  # scale-invariant in the weights


def adapters(world, out: Path, seed: int, opts) -> dict[str, Path]:
    """The lambda-0 SFT adapter, the `--search-sft` one and the `--ratio`
    preference adapter of `seed`, trained exactly as `evidence.py` trains them
    (same folders' names, so its adapters are reused)."""
    from axolotl_paft.lab.world import preference_config, train

    runs = out / "runs"
    settings = {sft_tag(mode, lam): (mode, lam) for mode, lam in sft_settings()}
    sft = {
        tag: train(
            sft_run(world, runs, seed, opts, *settings[tag]), sft_dir(runs, seed, tag)
        )
        for tag in dict.fromkeys(("l0", opts.search_sft))
    }
    path = runs / f"s{seed}-pref-r{opts.ratio:g}"
    config = preference_config(
        world, path, seed=seed, steps=opts.preference_steps,
        learning_rate=SFT_RATE / opts.ratio,
    )  # fmt: skip
    return {
        "sft": sft["l0"],
        "search_sft": sft[opts.search_sft],
        "preference": train(config, path),
    }


def grid(methods, densities, sft_weights, preference_weights) -> list:
    """Every candidate of the grid, in the order given by `methods`."""
    from axolotl_paft.merging.candidates import Candidate

    out = []
    for method in methods:
        for s in sft_weights:
            for p in preference_weights:
                if Candidate(method).varies("density"):
                    out += [Candidate(method, s, p, d) for d in densities]
                else:
                    out.append(Candidate(method, s, p))
    return out


def merge_key(candidate) -> tuple:
    """Candidates with equal keys build the same merge (module docstring)."""
    if candidate.method in RATIO_ONLY:
        ratio = round(candidate.preference_weight / candidate.sft_weight, 9)
        density = candidate.density if candidate.varies("density") else None
        return (candidate.method, ratio, density)
    return (candidate.name,)


class Splits:
    """The search's scorer on the validation and the test rows; one model load
    scores both."""

    def __init__(self, base: Path, rows: int, test_rows: int):
        from axolotl_paft.lab.world import (
            Scorer,
            heldout_rows,
            preference_rows,
            skill_rows,
        )

        self.scorers = {
            "validation": Scorer(
                base, skill_rows(rows, 200), preference_rows(rows, 201)
            ),
            "test": Scorer(base, *heldout_rows(test_rows)),
        }
        self.base = base

    def __call__(self, path: Path | None) -> dict[str, dict]:
        from axolotl_paft.merging.scoring import (
            load_candidate,
            load_model,
            quick_metrics,
        )

        model = (
            load_model(self.base) if path is None else load_candidate(self.base, path)
        )
        return {
            split: quick_metrics(model, s.base_logps, *s.rows)
            for split, s in self.scorers.items()
        }


def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def run_seed(world, splits, out: Path, seed: int, opts, argv) -> None:
    from axolotl_paft.merging.scoring import kept_shares

    path = out / f"seed{seed}.json"
    result = load(path) | {"seed": seed}
    result.setdefault("candidates", {})
    result.setdefault("runs", [])
    test_rows = opts.test_rows or opts.eval_rows
    setup = {
        "rows": {"validation": opts.eval_rows, "test": test_rows},
        "ratio": opts.ratio,
    }
    for key, value in setup.items():  # the references were scored with them
        if result.setdefault(key, value) != value:
            raise SystemExit(f"{path} has {key} {result[key]}, not {value}")

    def save(phase: str) -> None:
        result["runs"] = [
            *result["runs"],
            world_provenance(argv, SCRIPT) | {"phase": phase},
        ]
        path.write_text(json.dumps(result, indent=1))

    found = adapters(world, out, seed, opts)
    if "references" not in result:
        result["references"] = {
            "base": splits(None),
            "sft": splits(found["sft"]),
            "preference": splits(found["preference"]),
        }
        save("references")
    refs = {
        split: {k: v[split] for k, v in result["references"].items()}
        for split in ("validation", "test")
    }
    if opts.search:
        run_search(world, splits, found, out, seed, opts, result, refs)
        save(f"search {opts.search}")
        return
    built = {merge_key_of(e): e for e in result["candidates"].values()}
    cache = out / "lora-cache" / f"seed{seed}"
    start, count = time.time(), 0
    for candidate in grid(
        opts.methods, opts.densities, opts.sft_weights, opts.preference_weights
    ):
        if candidate.name in result["candidates"]:
            continue
        key = merge_key(candidate)
        entry = {"name": candidate.name, **candidate.__dict__, "key": list(key)}
        if tuple(key) in built:
            entry["same_as"] = built[tuple(key)]["name"]
            entry["metrics"] = built[tuple(key)]["metrics"]
        else:
            entry["metrics"] = merge_and_score(
                splits, world, found["sft"], found["preference"], candidate,
                out / "merged" / f"s{seed}" / candidate.name, cache,
            )  # fmt: skip
            built[tuple(key)] = entry
            count += 1
        entry["kept"] = {s: kept_shares(entry["metrics"][s], refs[s]) for s in refs}
        result["candidates"][candidate.name] = entry
        k = entry["kept"]
        print(
            f"seed {seed} {candidate.name}: val {k['validation']['skill_kept']:.2f}/"
            f"{k['validation']['preference_kept']:.2f} test "
            f"{k['test']['skill_kept']:.2f}/{k['test']['preference_kept']:.2f}",
            flush=True,
        )
        if count and count % 10 == 0:
            save(f"grid {len(result['candidates'])}")
    save(f"grid {len(result['candidates'])}")
    if count:
        print(f"seed {seed}: {count} merges, {(time.time() - start) / count:.1f}s each")


def merge_key_of(entry: dict) -> tuple:
    return tuple(entry["key"])


def run_search(world, splits, found, out, seed, opts, result, refs) -> None:
    """`axolotl_paft.merging.search.search` as the code stands, on the validation rows;
    its pick scored on both splits."""
    from axolotl_paft.lab.world import preference_rows, skill_rows
    from axolotl_paft.merging.scoring import kept_shares
    from axolotl_paft.merging.search import search

    folder = out / "search" / f"{opts.search}-s{seed}"
    shutil.rmtree(folder, ignore_errors=True)
    start = time.time()
    n = opts.search_rows or opts.eval_rows
    rows = (skill_rows(n, 200), preference_rows(n, 201))
    picked = search(
        world.model_dir, found["search_sft"], found["preference"], *rows, folder,
        budget=opts.search_budget, cache=out / "lora-cache" / f"seed{seed}",
        preference_measure="accuracy",  # the recorded results' measure
    )  # fmt: skip
    metrics = splits(folder / "merged" / "best")
    result.setdefault("searches", {})[opts.search] = {
        "best": picked.best,
        "evaluated": len(picked.leaderboard),
        "budget": opts.search_budget,
        "search_rows": n,
        "sft": opts.search_sft,
        "minutes": (time.time() - start) / 60,
        "metrics": metrics,
        "kept": {s: kept_shares(metrics[s], refs[s]) for s in refs},
        "leaderboard": [e["name"] for e in picked.leaderboard],
    }
    shutil.rmtree(folder / "candidates", ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--world", type=Path, help="world root (default OUT/world)")
    parser.add_argument("--size", default="full", choices=("full", "small"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=300, help="SFT steps")
    parser.add_argument("--preference-steps", type=int, default=200)
    parser.add_argument(
        "--ratio", type=float, default=10, help="SFT rate : preference rate"
    )
    parser.add_argument("--eval-rows", type=int, default=48)
    parser.add_argument("--methods", default="task_arithmetic,ties,dare_ties")
    parser.add_argument("--densities", default=",".join(f"{d:g}" for d in DENSITIES))
    parser.add_argument("--sft-weights", default=",".join(map(str, SFT_WEIGHTS)))
    parser.add_argument(
        "--preference-weights", default=",".join(map(str, PREFERENCE_WEIGHTS))
    )
    parser.add_argument("--search", help="run the search; record it under NAME")
    parser.add_argument("--search-budget", type=int, default=DEFAULT_BUDGET)
    parser.add_argument(
        "--search-sft",
        default="l0",
        choices=[sft_tag(mode, lam) for mode, lam in sft_settings()],
        help="the SFT adapter the search merges (evidence.py's settings); kept "
        "shares stay relative to the lambda-0 SFT only",
    )
    parser.add_argument(
        "--search-rows",
        type=int,
        help="validation rows the search picks on "
        "(default --eval-rows; its pick is scored on --eval-rows test rows)",
    )
    parser.add_argument(
        "--test-rows",
        type=int,
        help="test rows every merge is scored on (default --eval-rows; a new OUT: "
        "the references are scored on them too)",
    )
    parser.add_argument("--report", action="store_true")
    parser.add_argument(
        "--publish", nargs="?", const="results_search_frontier", metavar="NAME"
    )
    opts = parser.parse_args(argv)
    out = opts.out.resolve()
    if opts.report:
        from search_frontier_report import report

        report(out, HERE / opts.publish if opts.publish else out / "frontier")
        return
    opts.methods = opts.methods.split(",")
    opts.densities = [float(d) for d in opts.densities.split(",")]
    opts.sft_weights = [float(w) for w in opts.sft_weights.split(",")]
    opts.preference_weights = [float(w) for w in opts.preference_weights.split(",")]
    from axolotl_paft.lab.world import build_world

    world = build_world(opts.world or out / "world", opts.size)
    splits = Splits(world.model_dir, opts.eval_rows, opts.test_rows or opts.eval_rows)
    out.mkdir(parents=True, exist_ok=True)
    for seed in (int(s) for s in opts.seeds.split(",")):
        run_seed(world, splits, out, seed, opts, argv)


if __name__ == "__main__":
    main()
