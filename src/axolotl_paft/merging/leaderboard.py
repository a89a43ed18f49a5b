"""The search's leaderboard: `leaderboard.json` / `.md`, `search.png` and
`mergekit/best.yml`, and the log line of each candidate."""

from __future__ import annotations

import json
import math
from pathlib import Path

from axolotl_paft.merging.configs import mergekit_command, write_config
from axolotl_paft.merging.scoring import LEGACY_MEASURES, MEASURES, SIDES

RANKED_KEYS = ("lm_eval", "balanced", "skill_kept", "preference_kept")


def write_search(
    out: Path,
    leaderboard: list[dict],
    best_config: dict,
    base,
    sft,
    preference,
    held_out: dict,
    cache: Path,
    objective: str = "balanced",
    references: dict | None = None,
    scoring: dict | None = None,
) -> list[Path]:
    """best.yml, leaderboard.json/.md and search.png (`leaderboard`: every
    candidate, best first; `best_config`: the winner's mergekit config;
    `scoring`: `Scorer.summary`). best.yml's command
    names the search's LoRA cache: with it, filled, a DARE or DELLA winner
    rebuilds bit for bit (`configs.mergekit_command`)."""
    best = leaderboard[0]
    scoring = scoring or {"measures": dict(LEGACY_MEASURES)}
    config_dir = out / "mergekit"
    paths = [config_dir / "best.yml", out / "leaderboard.json", out / "leaderboard.md"]
    command = mergekit_command(paths[0].resolve(), "MERGED_DIR", Path(cache).resolve())
    shown = "balanced" if "balanced" in best["metrics"] else "score"
    header = (
        f"# Best of {len(leaderboard)} merge candidates searched by axolotl-paft "
        f"({shown} {best['metrics'][shown]:.3f}). Run:\n#   {command}\n"
    )
    write_config(paths[0], best_config, header)
    summary = {
        "best": best["name"],
        "base": str(base),
        "sft": str(sft),
        "preference": str(preference),
        "score": "(sft_exact_match + preference_accuracy) / 2",
        "held_out": held_out,
        "objective": objective,
        **scoring,
        "references": references or {},
        "leaderboard": leaderboard,
    }
    paths[1].write_text(json.dumps(summary, indent=2))
    paths[2].write_text(leaderboard_markdown(leaderboard, held_out, objective, scoring))
    paths.append(plot_search(leaderboard, out / "search.png"))
    return paths


def interval_text(metrics: dict, key: str, digits: int = 3) -> str:
    """`metrics[key]` with its 95% interval where it has one: "0.85 [0.79, 0.91]";
    "n/a" where it has none (a side that does not rank: nan)."""
    if key not in metrics or math.isnan(metrics[key]):
        return "n/a"
    low, value, high = (metrics.get(f"{key}{end}") for end in ("_low", "", "_high"))
    text = f"{value:.{digits}f}"
    return text if low is None else text + f" [{low:.{digits}f}, {high:.{digits}f}]"


def progress_text(metrics: dict) -> str:
    """A candidate's log line: what ranks it, with intervals (every measure is
    in leaderboard.json): the balanced objective and both kept shares, the
    lm-eval sum, else the score."""
    keys = [k for k in RANKED_KEYS if k in metrics and not math.isnan(metrics[k])]
    return ", ".join(f"{k} {interval_text(metrics, k)}" for k in keys or ["score"])


def leaderboard_markdown(
    leaderboard: list[dict], held_out: dict, objective: str, scoring: dict
) -> str:
    """The leaderboard: how it is ranked, on which measures and rows, what the
    references gain (a side that gains nothing named), every candidate with
    the 95% intervals of its kept shares, and whether the winner's interval
    overlaps the runner-up's."""
    lines = _header_lines(held_out, objective, scoring)
    lines += _reference_lines(leaderboard, objective, scoring)
    if "answers" in scoring:
        lines += _answer_lines(leaderboard, scoring["answers"])
    lines += _table_lines(leaderboard, scoring["measures"])
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _answer_lines(leaderboard: list[dict], said: dict) -> list[str]:
    """The second stage: each finalist's and reference's pass rates, the kept
    shares of the finalists, and the first line of its first answers per side,
    so a person sees what each merge says."""
    lines = [
        "",
        f"## What the finalists say (best {said['finalists']} of the screen, "
        f"re-ranked by checks on greedy answers of at most {said['max_new_tokens']} "
        "tokens)",
        "",
    ]
    for side, gain in said["reference_gains"].items():
        reference = "SFT-only" if side == "skill" else "preference-only"
        lines.append(
            f"- {reference} pass-rate gain over the base on {side}: "
            f"{gain['gain']:.3g} [{gain['low']:.3g}, {gain['high']:.3g}]"
            + ("" if gain["clear"] else f". **Not clear of 0: {side} does not rank.**")
        )
    lines += [
        "",
        "| model | skill pass | preference pass | skill kept | preference kept "
        "| balanced | a skill answer | a preference answer |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = [(name, m) for name, m in said["references"].items()]
    rows += [(e["name"], e["answers"]) for e in leaderboard if "answers" in e]
    for name, m in rows:
        samples = [_cell(next(iter(m["samples"][s]), "")) for s in SIDES]
        lines.append(
            f"| {name} | {m['skill_pass_rate']:.2f} | {m['preference_pass_rate']:.2f} "
            f"| {interval_text(m, 'skill_kept', 2)} "
            f"| {interval_text(m, 'preference_kept', 2)} "
            f"| {interval_text(m, 'balanced', 2)} | {samples[0]} | {samples[1]} |"
        )
    return [*lines, "", "## The screen (every candidate)"]


def _header_lines(held_out: dict, objective: str, scoring: dict) -> list[str]:
    """How the leaderboard is ranked, on which measures and rows."""
    skill, preference = scoring["measures"]["skill"], scoring["measures"]["preference"]
    return [
        f"Ranked by {objective}"
        + (
            ": min(kept share of each side that ranks), capped at 1, then both "
            "kept shares summed, then score" * (objective == "balanced")
        )
        + ".",
        "",
        f"Skill measure `{skill}` ({MEASURES[skill].description}) on "
        f"{held_out['sft_rows']} held-out SFT rows; preference measure "
        f"`{preference}` ({MEASURES[preference].description}) on "
        f"{held_out['preference_pairs']} held-out pairs. Intervals: 95%, paired "
        "bootstrap over the rows.",
        "",
    ]


def _reference_lines(leaderboard: list[dict], objective: str, scoring: dict) -> list:
    """What each reference gains (a side that gains nothing named), and whether
    the winner's interval overlaps the runner-up's."""
    lines = []
    ranked_by = scoring.get("ranked_by", list(SIDES))
    for side, gain in scoring.get("reference_gains", {}).items():
        reference = "SFT-only" if side == "skill" else "preference-only"
        lines.append(
            f"- {reference} gain over the base on {side} ({gain['measure']}): "
            f"{gain['gain']:.4g} [{gain['low']:.4g}, {gain['high']:.4g}]"
            + (
                ""
                if gain["clear"]
                else f". **Not clear of 0: {side} kept does not rank the merges "
                "(n/a below).**"
            )
        )
    if objective == "balanced" and not ranked_by:
        lines.append("- **No side ranks: the candidates are ranked by the score.**")
    rescored = leaderboard[0].get("rescored")
    if rescored:
        lines.append(
            f"- The winner as mergekit wrote it (merged/best; {rescored['why']}): "
            f"{progress_text(rescored)}; as searched: "
            f"{progress_text(leaderboard[0]['metrics'])}."
        )
    if len(leaderboard) > 1 and "balanced_low" in leaderboard[0]["metrics"]:
        first, second = (e["metrics"] for e in leaderboard[:2])
        overlap = (
            first["balanced_low"] <= second["balanced_high"]
            and second["balanced_low"] <= first["balanced_high"]
        )
        lines.append(
            f"- Winner {leaderboard[0]['name']} against runner-up "
            f"{leaderboard[1]['name']}: balanced "
            f"{interval_text(first, 'balanced')} and "
            f"{interval_text(second, 'balanced')}: "
            + (
                "**the intervals overlap: these rows do not tell the two apart.**"
                if overlap
                else "the intervals are apart."
            )
        )
    return lines


def _table_lines(leaderboard: list[dict], measures: dict) -> list[str]:
    """Every candidate with its measures and the intervals of its kept shares."""
    skill, preference = measures["skill"], measures["preference"]
    skill_metric, preference_metric = (
        MEASURES[skill].metric,
        MEASURES[preference].metric,
    )
    lines = [
        "",
        f"| rank | candidate | skill ({skill}) | preference ({preference}) "
        "| skill kept | preference kept | balanced | score |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, entry in enumerate(leaderboard, 1):
        m = entry["metrics"]
        lines.append(
            f"| {i} | {entry['name']} | {m[skill_metric]:.4g} | "
            f"{m[preference_metric]:.4g} | {interval_text(m, 'skill_kept')} | "
            f"{interval_text(m, 'preference_kept')} | {interval_text(m, 'balanced')} | "
            f"{m['score']:.3f} |"
        )
    return lines


def plot_search(leaderboard: list[dict], path: Path) -> Path:
    """Skill kept against preference kept (with the balanced objective; exact
    match against preference accuracy otherwise), one marker per candidate, by
    method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kept = "skill_kept" in leaderboard[0]["metrics"]
    x, y = ("preference_kept", "skill_kept") if kept else (
        "preference_accuracy", "sft_exact_match",
    )  # fmt: skip
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for method in dict.fromkeys(e["method"] for e in leaderboard):
        points = [e["metrics"] for e in leaderboard if e["method"] == method]
        ax.scatter(
            [p[x] for p in points], [p[y] for p in points], label=method, alpha=0.7
        )
    best = leaderboard[0]["metrics"]
    ax.scatter(
        [best[x]], [best[y]], s=200,
        facecolors="none", edgecolors="black", label=f"best: {leaderboard[0]['name']}",
    )  # fmt: skip
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(y.replace("_", " "))
    if not kept:
        ax.set_xlim(-0.05, 1.05)
        ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title(f"merge search: {len(leaderboard)} candidates")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
