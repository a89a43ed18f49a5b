"""Merge search: the best mergekit merge of the two deltas on held-out data.

Searches merge method, the SFT and preference weights and the density within a
budget of candidates, every candidate built by mergekit's engine from a config
that `axolotl_paft.merge` builds and checks, and scored on held-out rows by
`axolotl_paft.evaluate.quick_metrics` (score = (skill exact match + preference
accuracy) / 2). The strategy is deterministic: every method at the default
parameters first (weights 1/1, density 0.5), then a coordinate search from the
best candidate over the preference weight, the SFT weight and the density, one
neighbouring grid value at a time, while the budget lasts. Writes into `out`:

- `mergekit/best.yml`: the winner's config (run it with `mergekit-yaml`);
- `merged/best`: the winner, merged;
- `leaderboard.json` / `leaderboard.md`: every candidate, best first;
- `search.png`: skill against preference accuracy per candidate, by method.

Runs the same on CPU and GPU: mergekit picks the device, scoring runs where
`torch` puts the model (CPU here).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import yaml

from axolotl_paft.merge import (
    DEFAULT_SEARCH_METHODS,
    METHOD_LAYOUTS,
    MergeDeltas,
    MergeSettings,
    build_config,
    run_merge_config,
    validate_config,
)

GRID = {
    "preference_weight": (0.1, 0.25, 0.5, 0.75, 1.0, 1.5),
    "sft_weight": (0.5, 0.75, 1.0, 1.25, 1.5),
    "density": (0.3, 0.5, 0.7, 0.85),  # DELLA: density + epsilon < 1
}


@dataclass(frozen=True)
class Candidate:
    """One point of the search space."""

    method: str
    sft_weight: float = 1.0
    preference_weight: float = 1.0
    density: float = 0.5

    @property
    def name(self) -> str:
        name = f"{self.method}-s{self.sft_weight:g}-p{self.preference_weight:g}"
        if "density" in METHOD_LAYOUTS[self.method].per_model:
            name += f"-d{self.density:g}"
        return name

    def varies(self, field: str) -> bool:
        """Whether `field` changes this method's merge at all."""
        if field == "density":
            return "density" in METHOD_LAYOUTS[self.method].per_model
        return True  # SLERP reads the weights as its position t


def candidate_config(
    base: str, sft: Path, preference: Path, candidate: Candidate
) -> dict:
    """The checked mergekit config of `candidate`. SLERP's `t` is the preference
    share of the two weights."""
    share = candidate.preference_weight / (
        candidate.sft_weight + candidate.preference_weight
    )
    settings = MergeSettings(
        methods=(candidate.method,),
        sft_weight=candidate.sft_weight,
        preference_weight=candidate.preference_weight,
        density=candidate.density,
        slerp_t=share,
        dtype="float32",
    )
    deltas = MergeDeltas(base, sft, preference)
    config = build_config(candidate.method, deltas, settings)
    if isinstance(config, str):
        raise ValueError(config)
    validate_config(config)
    return config


def build_candidate(
    base: Path, sft: Path, preference: Path, candidate: Candidate, out: Path, cache
) -> Path:
    """Write `candidate`'s config next to `out` and run it through mergekit."""
    config = candidate_config(
        str(Path(base).resolve()), Path(sft).resolve(), Path(preference).resolve(),
        candidate,
    )  # fmt: skip
    path = Path(out).parent / f"{Path(out).name}.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return run_merge_config(path, Path(out), Path(cache))


def _neighbours(candidate: Candidate, field: str) -> list[Candidate]:
    values = GRID[field]
    current = getattr(candidate, field)
    i = min(range(len(values)), key=lambda j: abs(values[j] - current))
    return [
        replace(candidate, **{field: values[j]})
        for j in (i - 1, i + 1)
        if 0 <= j < len(values)
    ]


def _rank(entry: dict) -> tuple:
    metrics = entry["metrics"]
    both = min(metrics["sft_exact_match"], metrics["preference_accuracy"])
    return (metrics["score"], both, metrics["preference_margin"])


def search(
    base: Path,
    sft: Path,
    preference: Path,
    skill,
    pairs,
    out: Path,
    budget: int = 24,
    methods: tuple[str, ...] = DEFAULT_SEARCH_METHODS,
    cache: Path | None = None,
) -> dict:
    """Search within `budget` candidates; write the outputs (module docstring) and
    return {"best": name, "leaderboard": [entries, best first]}.

    `skill` and `pairs`: the held-out rows (`evaluate.TextSkill`/`TextPairs`,
    `TokenizedSkill`/`TokenizedPairs`); lists of JSONL rows are read as text."""
    from transformers import AutoTokenizer

    from axolotl_paft.evaluate import TextPairs, TextSkill, load_model, quick_metrics

    out = Path(out)
    cache = cache or out / "lora-cache" / time.strftime("run-%Y%m%d-%H%M%S")
    if isinstance(skill, list) or isinstance(pairs, list):
        tokenizer = AutoTokenizer.from_pretrained(base)
        skill = TextSkill(tokenizer, skill) if isinstance(skill, list) else skill
        pairs = TextPairs(tokenizer, pairs) if isinstance(pairs, list) else pairs
    base_logps = pairs.logps(load_model(base))
    entries: dict[str, dict] = {}
    best: dict | None = None

    def evaluate(candidate: Candidate) -> dict | None:
        nonlocal best
        if candidate.name in entries or len(entries) >= budget:
            return entries.get(candidate.name)
        merged = build_candidate(
            base, sft, preference, candidate, out / "candidates" / candidate.name,
            cache,
        )  # fmt: skip
        model = load_model(merged)
        metrics = quick_metrics(model, base_logps, skill, pairs)
        entry = {"name": candidate.name, **asdict(candidate), "metrics": metrics}
        entries[candidate.name] = entry
        if best is None or _rank(entry) > _rank(best):
            best = entry
            shutil.rmtree(out / "merged" / "best", ignore_errors=True)
            shutil.move(merged, out / "merged" / "best")
        else:
            shutil.rmtree(merged)
        print(f"search {len(entries)}/{budget}: {candidate.name} {metrics}", flush=True)
        return entry

    for method in methods:
        evaluate(Candidate(method))
    start = best
    improved = True
    while improved and len(entries) < budget:
        improved = False
        current = Candidate(**{k: start[k] for k in asdict(Candidate("ties"))})
        for field in GRID:
            if not current.varies(field):
                continue
            for neighbour in _neighbours(current, field):
                entry = evaluate(neighbour)
                if entry is not None and _rank(entry) > _rank(start):
                    start, improved = entry, True
    held_out = {"sft_rows": len(skill.rows), "preference_pairs": len(pairs.rows)}
    write_search(out, entries, best, base, sft, preference, held_out)
    leaderboard = sorted(entries.values(), key=_rank, reverse=True)
    return {"best": best["name"], "leaderboard": leaderboard}


def write_search(
    out: Path, entries: dict, best: dict, base, sft, preference, held_out: dict
) -> list[Path]:
    """best.yml, leaderboard.json/.md and search.png."""
    leaderboard = sorted(entries.values(), key=_rank, reverse=True)
    config_dir = out / "mergekit"
    config_dir.mkdir(parents=True, exist_ok=True)
    best_config = (out / "candidates" / f"{best['name']}.yml").read_text()
    header = (
        f"# Best of {len(entries)} merge candidates searched by axolotl-paft "
        f"(score {best['metrics']['score']:.3f}). Run:\n"
        "#   mergekit-yaml best.yml MERGED_DIR --lora-merge-cache NEW_EMPTY_DIR\n"
    )
    paths = [config_dir / "best.yml", out / "leaderboard.json", out / "leaderboard.md"]
    paths[0].write_text(header + best_config)
    summary = {
        "best": best["name"],
        "base": str(base),
        "sft": str(sft),
        "preference": str(preference),
        "score": "(sft_exact_match + preference_accuracy) / 2",
        "held_out": held_out,
        "leaderboard": leaderboard,
    }
    paths[1].write_text(json.dumps(summary, indent=2))
    lines = [
        "| rank | candidate | skill (exact match) | preference accuracy | score |",
        "|---|---|---|---|---|",
    ]
    for i, entry in enumerate(leaderboard, 1):
        m = entry["metrics"]
        lines.append(
            f"| {i} | {entry['name']} | {m['sft_exact_match']:.3f} | "
            f"{m['preference_accuracy']:.3f} | {m['score']:.3f} |"
        )
    paths[2].write_text("\n".join(lines) + "\n")
    paths.append(plot_search(leaderboard, out / "search.png"))
    return paths


def plot_search(leaderboard: list[dict], path: Path) -> Path:
    """Skill against preference accuracy, one marker per candidate, by method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for method in dict.fromkeys(e["method"] for e in leaderboard):
        points = [e["metrics"] for e in leaderboard if e["method"] == method]
        ax.scatter(
            [p["preference_accuracy"] for p in points],
            [p["sft_exact_match"] for p in points],
            label=method,
            alpha=0.7,
        )
    best = leaderboard[0]["metrics"]
    ax.scatter(
        [best["preference_accuracy"]], [best["sft_exact_match"]], s=200,
        facecolors="none", edgecolors="black", label=f"best: {leaderboard[0]['name']}",
    )  # fmt: skip
    ax.set_xlabel("preference accuracy")
    ax.set_ylabel("skill (exact match)")
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title(f"merge search: {len(leaderboard)} candidates")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
