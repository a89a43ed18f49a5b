"""Tables and figure of `search_frontier.py` from its per-seed files.

skill kept / preference kept: share of the SFT-only skill gain / of the
preference-only accuracy gain (over the base) that a merge keeps, on the same
split. The goal: both >= 95% on the test rows, in every seed.
"balanced" = the smaller of the two; the best balanced merge maximises it.
"""

from __future__ import annotations

import json
from pathlib import Path

from axolotl_paft.lab.bench import ci_cell, mean_ci, sft_tag_order
from axolotl_paft.lab.world import SEARCH_GOAL as GOAL
from axolotl_paft.lab.world import meets_goal

SPLITS = ("validation", "test")
PROVENANCE_NOTES = (  # what the seed files of branch searchexp lost or cannot say
    "- Before these (the seed files kept only their last 20 runs then): "
    "`python benchmarks/search_frontier.py runs/frontier --world runs/world "
    "--seeds 0,1,2 --methods task_arithmetic` (adapters, references and the "
    "task arithmetic grid; 2026-11-23 16:00 to 16:10 UTC, commits 271df52, "
    "abd190b) and the same with `--sft-weights 0.75,1 --preference-weights "
    "0.8,0.85,...,1.95` (step 0.05; 16:11 to 16:18 UTC, commit abd190b). "
    "Breadcrumbs-TIES only on a part grid (`--methods breadcrumbs_ties "
    "--sft-weights 0.75,1 --preference-weights 1,1.25,1.5,1.75,2`, every "
    "density); linear, SLERP and DELLA only where the searches evaluated them.",
    "- commit = the worktree's HEAD when a seed file was saved. The grid code "
    "(`search.build_candidate`, `evaluate.quick_metrics`) is the same in every "
    "one of them; `before-b14` ran the `src/` of 271df52 (an export of it on "
    "PYTHONPATH), the `after*` searches the commits named above.",
    "- World: `axolotl_paft.lab.world.build_world(runs/world, 'full')`, built "
    "2026-11-23 15:54 to 15:58 UTC; adapters trained once per seed by the first "
    "command (evidence.py's recipe: SFT lambda 0, lr 1e-3, 300 steps; DPO lr "
    "1e-4, 200 steps; seed = the seed). The `before-b14` picks reproduce "
    "`results_evidence.md`'s searched merges exactly (same names and numbers).",
)
SEARCHES = {  # the `--search NAME`s recorded on branch searchexp
    "before-b14": "the search before this branch (commit 271df52, ranked by the "
    "score), budget 14 as in `results_evidence.md`",
    "after-b14": "balanced objective + balance phase on the best method only "
    "(commit d8b1999), budget 14",
    "after-b24": "the same, budget 24",
    "after2-b14": "balanced objective + balance phase on the two methods keeping "
    "the most in total, then coordinate and balance (commit 459a81c, the code "
    "now), budget 14",
    "after2-b24": "the same, budget 24 (the product's default)",
}


def balanced(entry: dict, split: str) -> tuple[float, float]:
    k = entry["kept"][split]
    return (
        min(k["skill_kept"], k["preference_kept"]),
        entry["metrics"][split]["score"],
    )


def pareto(entries: list[dict], split: str) -> list[dict]:
    """The merges no other merge beats on both kept shares (distinct points)."""
    points = {}
    for e in entries:
        k = e["kept"][split]
        points.setdefault((k["skill_kept"], k["preference_kept"]), e)
    front = [
        e
        for (s, p), e in points.items()
        if not any(s2 >= s and p2 >= p and (s2, p2) != (s, p) for s2, p2 in points)
    ]
    return sorted(front, key=lambda e: e["kept"][split]["preference_kept"])


def reaches(entry: dict, split: str) -> bool:
    return meets_goal(entry["kept"][split])


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def pair(entry_kept: dict) -> str:
    return f"{pct(entry_kept['skill_kept'])} / {pct(entry_kept['preference_kept'])}"


def grid_summary(entries: list[dict]) -> dict:
    """Best balanced merge, merges reaching the goal and Pareto front per split,
    and the best merge per method on the test rows."""
    out = {}
    for split in SPLITS:
        best = max(entries, key=lambda e: balanced(e, split))
        out[split] = {
            "best_balanced": best["name"],
            "best_balanced_kept": best["kept"],
            "reaching_goal": sorted(e["name"] for e in entries if reaches(e, split)),
            "pareto": [
                {"name": e["name"], **e["kept"][split]} for e in pareto(entries, split)
            ],
        }
    val_goal = [e for e in entries if reaches(e, "validation")]
    out["validation_goal_on_test"] = sorted(
        e["name"] for e in val_goal if reaches(e, "test")
    )
    methods = dict.fromkeys(e["method"] for e in entries)
    out["per_method_best_test"] = {
        m: max(
            (e for e in entries if e["method"] == m), key=lambda e: balanced(e, "test")
        )["name"]
        for m in methods
    }
    return out


def seed_summary(result: dict) -> dict:
    entries = list(result["candidates"].values())
    built = [e for e in entries if "same_as" not in e]
    out = {"seed": result["seed"], "candidates": len(entries), "merges": len(built)}
    refs = result["references"]
    out["references"] = {
        split: {
            "sft_only_skill": refs["sft"][split]["sft_exact_match"],
            "preference_only_accuracy": refs["preference"][split][
                "preference_accuracy"
            ],
            "base_skill": refs["base"][split]["sft_exact_match"],
            "base_accuracy": refs["base"][split]["preference_accuracy"],
        }
        for split in SPLITS
    }
    if entries:  # a folder may hold only `--search` runs
        out |= grid_summary(entries)
    out["searches"] = result.get("searches", {})
    out["provenance"] = result["runs"][-1] if result.get("runs") else {}
    out["runs"] = result.get("runs", [])
    out["rows"] = result.get("rows", {"validation": 48, "test": 48})
    out["ratio"] = result.get("ratio", 10)
    return out


def searches_by_sft(summaries: list[dict]) -> dict[str, dict[int, dict]]:
    """SFT adapter tag (`--search-sft`) -> seed -> its search, lambda 0 first
    then by mode and strength; {} unless several adapters, lambda 0 among them,
    were searched."""
    tags = {r.get("sft") for s in summaries for r in s["searches"].values()} - {None}
    if len(tags) < 2 or "l0" not in tags:
        return {}
    return {
        tag: {s["seed"]: r for s in summaries for r in s["searches"].values()
              if r.get("sft") == tag}
        for tag in sorted(tags, key=sft_tag_order)
    }  # fmt: skip


def by_sft_adapter(summaries: list[dict]) -> list[str]:
    """The search on each SFT adapter (`--search-sft`), test rows, over seeds:
    does L1 help once the merge method, weights and density are tuned?"""
    runs = searches_by_sft(summaries)
    if not runs:
        return []
    lines = [
        "",
        "## The search per SFT adapter (test rows)",
        "",
        "The same search (budget, rows, preference adapter) on each SFT adapter of "
        "`results_evidence.md` (`--search-sft`); kept shares relative to the "
        "lambda-0 SFT only. Mean +- 95% interval over seeds; change = score minus "
        "the lambda-0 search's score in the same seed (* where the interval "
        "excludes 0).",
        "",
        "| SFT adapter | seeds | skill kept | preference kept | score | change "
        "| goal met on test | picks |",
        "|---|---|---|---|---|---|---|---|",
    ]
    base = runs["l0"]
    for tag, per_seed in runs.items():
        test = [r["kept"]["test"] for r in per_seed.values()]
        score = {seed: r["metrics"]["test"]["score"] for seed, r in per_seed.items()}
        change = mean_ci([v - base[s]["metrics"]["test"]["score"]
                           for s, v in score.items() if s in base])  # fmt: skip
        star = " *" if abs(change[0]) > change[1] else ""
        goal = sum(meets_goal(k) for k in test)
        lines.append(
            f"| {tag} | {len(per_seed)} "
            f"| {ci_cell(mean_ci([k['skill_kept'] for k in test]), percent=True)} "
            f"| {ci_cell(mean_ci([k['preference_kept'] for k in test]), percent=True)} "
            f"| {ci_cell(mean_ci(list(score.values())))} "
            f"| {'-' if tag == 'l0' else ci_cell(change) + star} "
            f"| {goal} of {len(test)} "
            f"| {', '.join(r['best'] for r in per_seed.values())} |"
        )
    return lines


def markdown(summaries: list[dict], entries: dict) -> str:
    rows = summaries[0]["rows"]
    grid = [s for s in summaries if s["candidates"]]
    lines = [
        f"# {'The attainable set of the merge search' if grid else 'The merge search'}"
        f" (miniature world, ratio {summaries[0]['ratio']:g})",
        "",
        "The goal: keep >= 95% of the SFT-only skill gain *and* >= 95% of the "
        "preference-only accuracy, in every seed, on the test rows. Every grid merge "
        "is built by mergekit (`search.build_candidate`) and scored by the search's "
        f"scorer (`evaluate.quick_metrics`) on the {rows['validation']} validation "
        f"rows the search picks on and on the {rows['test']} test rows. Cells: skill "
        "kept / preference kept. "
        "balanced = the smaller of the two.",
        "",
        "## References per seed",
        "",
        "| seed | split | base skill | SFT-only skill | preference-only accuracy |",
        "|---|---|---|---|---|",
    ]
    for s in summaries:
        for split in SPLITS:
            r = s["references"][split]
            lines.append(
                f"| {s['seed']} | {split} | {r['base_skill']:.3f} | "
                f"{r['sft_only_skill']:.3f} | {r['preference_only_accuracy']:.3f} |"
            )
    if grid:
        lines += [
            "",
            "## Is 95% / 95% attainable?",
            "",
            "| seed | grid (merges built) | best balanced on validation: validation; "
            "test | best balanced on test | merges >= 95/95 on validation | on test | "
            "on both |",
            "|---|---|---|---|---|---|---|",
        ]
        for s in grid:
            seed = s["seed"]
            v, t = s["validation"], s["test"]
            vbest = entries[seed][v["best_balanced"]]
            lines.append(
                f"| {seed} | {s['candidates']} ({s['merges']}) | {v['best_balanced']}: "
                f"{pair(vbest['kept']['validation'])}; "
                f"test {pair(vbest['kept']['test'])} | "
                f"{t['best_balanced']}: {pair(t['best_balanced_kept']['test'])} | "
                f"{len(v['reaching_goal'])} | {len(t['reaching_goal'])} | "
                f"{len(s['validation_goal_on_test'])} |"
            )
        for split in ("test", "validation"):
            lines += ["", f"## Pareto front per seed ({split} rows)", ""]
            for s in grid:
                front = ", ".join(
                    f"{p['name']} {pct(p['skill_kept'])} / {pct(p['preference_kept'])}"
                    for p in s[split]["pareto"]
                )
                lines.append(f"- seed {s['seed']}: {front}")
        methods = list(
            dict.fromkeys(m for s in grid for m in s["per_method_best_test"])
        )
        lines += [
            "",
            "## Best balanced merge per method (test rows)",
            "",
            "| seed | " + " | ".join(methods) + " |",
            "|---|" + "---|" * len(methods),
        ]
        for s in grid:
            best = s["per_method_best_test"]
            cells = [
                f"{best[m]}: {pair(entries[s['seed']][best[m]]['kept']['test'])}"
                if m in best
                else "-"
                for m in methods
            ]
            lines.append(f"| {s['seed']} | " + " | ".join(cells) + " |")
    names = list(dict.fromkeys(n for s in summaries for n in s["searches"]))
    if names:
        lines += [
            "",
            "## The search (`axolotl_paft.search.search`, picked on validation)",
            "",
            *(f"- `{n}`: {SEARCHES[n]}" for n in names if n in SEARCHES),
            "",
            "| seed | search | budget (evaluated) | pick | validation kept | test kept "
            "| test score | goal met on test |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for s in summaries:
            for name in names:
                r = s["searches"].get(name)
                if r is None:
                    continue
                goal = meets_goal(r["kept"]["test"])
                lines.append(
                    f"| {s['seed']} | {name} | {r['budget']} ({r['evaluated']}) | "
                    f"{r['best']} | {pair(r['kept']['validation'])} | "
                    f"{pair(r['kept']['test'])} | {r['metrics']['test']['score']:.3f} "
                    f"| {'yes' if goal else 'no'} |"
                )
    lines += by_sft_adapter(summaries)
    lines += ["", "## Provenance", ""]
    commands: dict[str, dict] = {}
    for s in summaries:
        for run in s["runs"]:
            c = commands.setdefault(
                run["command"], {"seeds": set(), "dates": [], "commits": set()}
            )
            c["seeds"].add(s["seed"])
            c["dates"].append(run["date"])
            c["commits"].add(run["commit"][:10])
    for command, c in commands.items():
        lines.append(
            f"- `{command}`: seeds {sorted(c['seeds'])}, {min(c['dates'])} to "
            f"{max(c['dates'])}, commit(s) {', '.join(sorted(c['commits']))}"
        )
    if any(n in SEARCHES for n in names):
        lines += ["", *PROVENANCE_NOTES]
    p = summaries[0]["provenance"]
    if p:
        packages = ", ".join(f"{k} {v}" for k, v in p["packages"].items())
        lines += [
            "",
            f"Machine: {p['machine']}; python {p['python']}; packages: {packages}.",
        ]
    lines += ["", "![kept shares per candidate](results_search_frontier.png)", ""]
    return "\n".join(lines)


def plot(summaries: list[dict], entries: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(summaries)
    fig, axes = plt.subplots(2, n, figsize=(4.2 * n, 8), squeeze=False)
    for col, s in enumerate(summaries):
        seed_entries = list(entries[s["seed"]].values())
        for row, split in enumerate(SPLITS):
            ax = axes[row][col]
            ax.axvspan(GOAL, 1.1, ymin=0, ymax=1, alpha=0.0)
            ax.fill_between([GOAL, 1.1], GOAL, 1.1, color="green", alpha=0.12)
            for method in dict.fromkeys(e["method"] for e in seed_entries):
                pts = [e["kept"][split] for e in seed_entries if e["method"] == method]
                ax.scatter(
                    [p["preference_kept"] for p in pts],
                    [p["skill_kept"] for p in pts],
                    s=12,
                    alpha=0.6,
                    label=method,
                )
            front = s.get(split, {}).get("pareto", [])
            ax.plot(
                [p["preference_kept"] for p in front],
                [p["skill_kept"] for p in front],
                "k-",
                lw=1,
                label="Pareto front",
            )
            for name, marker in zip(s["searches"], "vXs*PDo^<>", strict=False):
                k = s["searches"][name]["kept"][split]
                ax.scatter(
                    [k["preference_kept"]], [k["skill_kept"]], marker=marker, s=120,
                    facecolors="none", edgecolors="red", label=f"search {name}",
                )  # fmt: skip
            ax.set_xlim(-0.05, 1.1)
            ax.set_ylim(-0.05, 1.1)
            ax.set_title(f"seed {s['seed']}, {split} rows")
            ax.set_xlabel("preference kept")
            ax.set_ylabel("skill kept")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_by_sft(summaries: list[dict], path: Path) -> Path:
    """Without a grid: the searched merge's kept shares on the test rows per SFT
    adapter, one marker per seed and side, against the goal."""
    runs = searches_by_sft(summaries)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.1 * len(runs) + 2, 4.5))
    for x, per_seed in enumerate(runs.values()):
        for i, (_, r) in enumerate(sorted(per_seed.items())):
            k = r["kept"]["test"]
            dx = 0.12 * (i - (len(per_seed) - 1) / 2)
            for side, marker, color in (
                ("skill_kept", "o", "tab:blue"),
                ("preference_kept", "^", "tab:orange"),
            ):
                label = side.replace("_", " ") if x == i == 0 else None
                ax.scatter(x + dx, k[side], marker=marker, color=color, label=label)
    ax.axhline(GOAL, color="green", ls="--", lw=1, label=f"goal {pct(GOAL)}")
    ax.set_xticks(range(len(runs)), list(runs), rotation=30)
    ax.set_xlabel("SFT adapter the search merged (markers: seeds side by side)")
    ax.set_ylabel("kept on the test rows")
    ax.set_title("The searched merge per L1 setting")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def report(out: Path, stem: Path) -> None:
    """Tables, JSON and figure of the seed files in `out`, as `stem`.{md,json,png}."""
    results = [json.loads(p.read_text()) for p in sorted(out.glob("seed*.json"))]
    results = [r for r in results if r.get("candidates") or r.get("searches")]
    if not results:
        raise SystemExit(f"{out}: no seed*.json with grid merges or searches")
    summaries = [seed_summary(r) for r in results]
    entries = {r["seed"]: r["candidates"] for r in results}
    text = markdown(summaries, entries).replace(
        "results_search_frontier.png", f"{stem.name}.png"
    )
    stem.with_suffix(".md").write_text(text)
    stem.with_suffix(".json").write_text(
        json.dumps({"summaries": summaries, "candidates": entries}, indent=1)
    )
    if searches_by_sft(summaries) and not any(s["candidates"] for s in summaries):
        plot_by_sft(summaries, stem.with_suffix(".png"))
    else:
        plot(summaries, entries, stem.with_suffix(".png"))
    print(text)
