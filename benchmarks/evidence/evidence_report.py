"""Tables and figure of `evidence.py` from its per-seed JSON files.

Every number is a mean over seeds with a 95% Student-t interval (half-width shown
as +-). skill kept = share of the SFT-only skill gain (exact match over the base)
that a candidate keeps; preference accuracy = implicit reward against the base > 0;
score = (skill exact match + preference accuracy) / 2.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from axolotl_paft.lab.bench import ci_cell, mean_ci, sft_tag_order
from axolotl_paft.lab.world import MIN_ALIGNMENT_TAX, MIN_INTERFERENCE, meets_goal
from axolotl_paft.merging.scoring import gain_kept, kept_shares

METRICS = ("skill_kept", "preference_accuracy", "score")


def derived(scores: dict, key: str) -> dict[str, float]:
    """skill kept, preference accuracy and score of one candidate in one seed."""
    skill = "sft_exact_match"
    m = scores[key]
    return {
        "skill_kept": gain_kept(
            m[skill], scores["base"][skill], scores["sft/l0"][skill]
        ),
        "preference_accuracy": m["preference_accuracy"],
        "score": m["score"],
    }


def aggregate(seeds: list[dict], key: str) -> dict[str, tuple[float, float]]:
    rows = [derived(s["scores"], key) for s in seeds if key in s["scores"]]
    return {k: mean_ci([r[k] for r in rows]) for k in METRICS}


def paired_delta(seeds: list[dict], key: str, reference: str) -> tuple[float, float]:
    """Score of `key` minus score of `reference`, per seed, then the interval."""
    return mean_ci(
        [
            s["scores"][key]["score"] - s["scores"][reference]["score"]
            for s in seeds
            if key in s["scores"]
        ]
    )


def report(out: Path, dest: Path) -> None:
    seeds = [json.loads(p.read_text()) for p in sorted(out.glob("seed*.json"))]
    if not seeds:
        raise SystemExit(f"no seed*.json in {out}")
    opts = seeds[0]["options"]
    g = f"r{opts['grid_ratio']:g}"
    tags = sorted({t for s in seeds for t in s["sparsity"]}, key=sft_tag_order)
    methods = sorted({k.split("/")[3] for k in seeds[0]["scores"] if k.count("/") == 3})
    ratios = [f"r{r:g}" for r in opts["ratios"]]
    lines = [
        "# Evidence on the miniature world",
        "",
        f"{len(seeds)} seed(s) ({', '.join(str(s['options']['seed']) for s in seeds)})"
        f"; {opts['steps']} steps per run; grid ratio SFT rate : preference rate "
        f"= {opts['grid_ratio']:g}; mean +- 95% interval half-width over seeds.",
        "",
        f"## Preconditions at lambda 0 (thresholds: tax >= {MIN_ALIGNMENT_TAX:.0%}, "
        f"interference >= {MIN_INTERFERENCE:.0%})",
        "",
        "| SFT : preference rate | alignment tax (sequential) | task arithmetic 1:1: "
        "skill gain lost | task arithmetic 1:1: preference gain lost |",
        "|---|---|---|---|",
    ]
    for ratio in ratios:
        pre = [s["preconditions"][ratio] for s in seeds if ratio in s["preconditions"]]
        if not pre:
            continue
        cells = [
            ci_cell(mean_ci([p[k] for p in pre]), percent=True)
            for k in ("alignment_tax", "ta_skill_lost", "ta_preference_lost")
        ]
        lines.append(f"| {ratio[1:]} | " + " | ".join(cells) + " |")
    baselines = {
        "base": "base",
        "SFT only": "sft/l0",
        **{f"preference only (rate ratio {r[1:]})": f"pref/{r}" for r in ratios},
        **{f"sequential SFT->DPO (ratio {r[1:]})": f"seq/{r}" for r in ratios},
        f"mixed-loss adapter (ratio {g[1:]})": f"mixed/{g}",
        f"PAFT task arithmetic 1:1, lambda 0 (ratio {g[1:]})": f"merge/{g}/l0/"
        "task_arithmetic",
        f"PAFT TIES defaults, lambda 0 (ratio {g[1:]})": f"merge/{g}/l0/ties",
        f"PAFT searched merge, lambda 0 (ratio {g[1:]})": f"search/{g}/l0",
        f"PAFT searched merge, {opts['search_l1']} (ratio {g[1:]})": f"search/{g}/"
        f"{opts['search_l1']}",
    }
    lines += [
        "",
        "## Baselines and the searched merge (held-out test rows)",
        "",
        "| candidate | skill kept | preference accuracy | score |",
        "|---|---|---|---|",
    ]
    for name, key in baselines.items():
        agg = aggregate(seeds, key)
        lines.append(
            f"| {name} | {ci_cell(agg['skill_kept'], True)} | "
            f"{ci_cell(agg['preference_accuracy'])} | {ci_cell(agg['score'])} |"
        )
    lines += [
        "",
        f"## Does L1 help? Score of each merge (default parameters: weights 1/1, "
        f"density 0.5, SLERP t 0.5; preference ratio {g[1:]})",
        "",
        "Cell: score at lambda 0, then for each L1 setting the paired change of the "
        "score against lambda 0 (same seed), mean +- 95% interval. A change whose "
        "interval excludes 0 is marked *.",
        "",
        "| method | lambda 0 | " + " | ".join(tags[1:]) + " |",
        "|---" * (len(tags) + 1) + "|",
    ]
    deltas = {}
    for method in methods:
        ref = f"merge/{g}/l0/{method}"
        cells = [ci_cell(aggregate(seeds, ref)["score"])]
        for tag in tags[1:]:
            mean, half = paired_delta(seeds, f"merge/{g}/{tag}/{method}", ref)
            deltas[(method, tag)] = (mean, half)
            star = "*" if not math.isnan(half) and abs(mean) > half else ""
            cells.append(f"{mean:+.3f} +- {half:.3f}{star}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "The same merges as skill kept / preference accuracy (means over seeds): the "
        "score alone hides a merge that collapses to one side (0% / 1.00 scores 0.5).",
        "",
        "| method | " + " | ".join(tags) + " |",
        "|---" * (len(tags) + 1) + "|",
    ]
    for method in methods:
        cells = []
        for tag in tags:
            agg = aggregate(seeds, f"merge/{g}/{tag}/{method}")
            kept, acc = agg["skill_kept"][0], agg["preference_accuracy"][0]
            cells.append(f"{100 * kept:.0f}% / {acc:.2f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## SFT delta sparsity (share of delta entries <= 1% of the module's max)",
        "",
        "| setting | " + " | ".join(tags) + " |",
        "|---" * (len(tags) + 1) + "|",
        "| sparsity | "
        + " | ".join(
            ci_cell(mean_ci([s["sparsity"][t] for s in seeds]), percent=True)
            for t in tags
        )
        + " |",
        "| SFT-only skill kept | "
        + " | ".join(
            ci_cell(aggregate(seeds, f"sft/{t}")["skill_kept"], True) for t in tags
        )
        + " |",
        "",
        "## Merge search per seed (lambda 0) against sequential SFT->DPO",
        "",
        "Goal: >= 95% of the SFT-only skill gain and >= 95% of the "
        "preference-only accuracy gain kept, and a better score than sequential.",
        "",
        "| seed | searched best | skill kept | preference kept "
        "| score | sequential score | goal met |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in seeds:
        sc = s["scores"]
        references = {
            "base": sc["base"],
            "sft": sc["sft/l0"],
            "preference": sc[f"pref/{g}"],
        }
        kept = kept_shares(sc[f"search/{g}/l0"], references)
        score, sequential = sc[f"search/{g}/l0"]["score"], sc[f"seq/{g}"]["score"]
        met = meets_goal(kept) and score > sequential
        lines.append(
            f"| {s['options']['seed']} | {s['searches']['l0']['best']} | "
            f"{100 * kept['skill_kept']:.1f}% | {100 * kept['preference_kept']:.1f}% | "
            f"{score:.3f} | {sequential:.3f} | {'yes' if met else 'no'} |"
        )
    prov = seeds[0]["provenance"]
    lines += [
        "",
        "## Provenance",
        "",
        f"- commit {prov['commit']}; {prov['machine']}; python {prov['python']}",
        "- packages: " + ", ".join(f"{k} {v}" for k, v in prov["packages"].items()),
        "- per seed: "
        + "; ".join(
            f"seed {s['options']['seed']}: {s['phase']} at {s['provenance']['date']}, "
            f"{s['minutes']:.1f} min (`{s['provenance']['command']}`)"
            for s in seeds
        ),
        "",
        "![score against lambda](results_evidence.png)",
    ]
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "results_evidence.md").write_text("\n".join(lines) + "\n")
    summary = {
        "provenance": [s["provenance"] for s in seeds],
        "baselines": {n: aggregate(seeds, k) for n, k in baselines.items()},
        "l1_score_change": {f"{m}/{t}": v for (m, t), v in deltas.items()},
        "seeds": seeds,
    }
    (dest / "results_evidence.json").write_text(json.dumps(summary, indent=1))
    plot(seeds, methods, tags, g, dest / "results_evidence.png")
    print("\n".join(lines))


def plot(seeds, methods, tags, g, path: Path) -> None:
    """Score against lambda per merge method, one panel per L1 mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = ("loss", "proximal")
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2), sharey=True)
    for ax, mode in zip(axes, modes, strict=True):
        settings = ["l0"] + [t for t in tags if t.startswith(mode)]
        xs = range(len(settings))
        for method in methods:
            pairs = [
                aggregate(seeds, f"merge/{g}/{t}/{method}")["score"] for t in settings
            ]
            ax.errorbar(
                xs, [p[0] for p in pairs], yerr=[p[1] for p in pairs],
                marker="o", capsize=3, label=method,
            )  # fmt: skip
        for key, style, label in (
            (f"seq/{g}", "k--", "sequential SFT->DPO"),
            ("sft/l0", "k:", "SFT only"),
            (f"search/{g}/l0", "r-.", "searched merge (lambda 0)"),
        ):
            ax.axhline(aggregate(seeds, key)["score"][0], color=style[0],
                       linestyle=style[1:], label=label)  # fmt: skip
        labels = ["0"] + [t.removeprefix(mode) for t in settings[1:]]
        ax.set_xticks(xs, labels)
        ax.set_xlabel(f"lambda ({mode} mode)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("score = (skill + preference accuracy) / 2")
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.suptitle(f"PAFT merges against L1 strength ({len(seeds)} seeds, 95% intervals)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
