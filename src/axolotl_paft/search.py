"""Merge search: the best mergekit merge of the two deltas on held-out data.

Searches merge method, the SFT and preference weights and the density within a
budget of candidates, every candidate the merge mergekit builds from a config
that `axolotl_paft.merge` builds and checks (built in memory on the one resident
base by mergekit's merge methods, `axolotl_paft.inmemory`: no model written per
candidate; for adapters that module does not take, by `mergekit-yaml` on disk,
deleted after scoring), and scored on held-out rows by
`axolotl_paft.evaluate.quick_metrics` (score = (skill exact match + preference
accuracy) / 2). Candidates are ranked by the balanced objective (`objective=
"balanced"`, the default): the smaller of the skill kept (share of the SFT-only
model's skill gain over the base) and the preference kept (share of the
preference-only model's accuracy gain), capped at 1, then by the score; the
search scores the SFT-only and preference-only adapters on the same rows for
that (two evaluations beyond the budget). `objective="score"` ranks by the score
alone, which can prefer a merge that gives up one side; `objective="lm_eval"`
by the weighted sum of lm-eval tasks (`axolotl_paft.lm_eval_objective`, as
mergekit-evolve scores), then the score. The strategy is
deterministic: every method at the default parameters first (weights 1/1,
density 0.5); with the balanced objective, a balance phase for the two methods
whose default merge keeps the most in total (bisection of the preference weight
towards the crossing of skill kept and preference kept, `_balance`; a method
whose lagging side does not move gives its turn to the next one); then a
coordinate search from the best candidate over the preference weight, the SFT
weight and the density, one neighbouring grid value at a time, and a balance
phase from the best again, while the budget lasts. Writes into `out`:

- `mergekit/best.yml`: the winner's config (run it with `mergekit-yaml`);
- `merged/best`: the winner, written by mergekit from `best.yml` at the end;
- `leaderboard.json` / `leaderboard.md`: every candidate, best first;
- `search.png`: skill against preference accuracy per candidate, by method.

Candidates are built and scored where the base model sits (`load_model`: CPU,
fp32 here); only the winner's `mergekit-yaml` run goes through mergekit's own
device choice.
"""

from __future__ import annotations

import json
import math
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
    base_model_reference,
    build_config,
    mergekit_command,
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


def write_candidate_config(
    base: Path, sft: Path, preference: Path, candidate: Candidate, out: Path
) -> tuple[dict, Path]:
    """Write `candidate`'s config next to `out` (`out`.yml); return it and its
    path."""
    config = candidate_config(
        base_model_reference(base), Path(sft).resolve(), Path(preference).resolve(),
        candidate,
    )  # fmt: skip
    path = Path(out).parent / f"{Path(out).name}.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return config, path


def build_candidate(
    base: Path, sft: Path, preference: Path, candidate: Candidate, out: Path, cache
) -> Path:
    """Write `candidate`'s config next to `out` and run it through mergekit."""
    _, path = write_candidate_config(base, sft, preference, candidate, out)
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


OBJECTIVES = ("balanced", "score", "lm_eval")
DEFAULT_BUDGET = 24  # candidates: every method once, then about two balance phases
BALANCE_STEPS = 6  # bisection steps on the preference weight per balance phase
BALANCED_METHODS = 2  # methods bisected after the first round
STALL_STEPS = 2  # a balance line whose lagging side has not moved is dropped then
MAX_PREFERENCE_WEIGHT = 4.0


def gain_kept(value: float, base: float, reference: float) -> float:
    """Share of the gain `reference - base` that `value - base` keeps (nan when
    the reference gains nothing)."""
    return (value - base) / (reference - base) if reference > base else math.nan


def kept_shares(metrics: dict, references: dict) -> dict[str, float]:
    """`skill_kept` and `preference_kept`: the shares of the SFT-only and the
    preference-only models' gains over the base (`references`) that `metrics`
    keep."""
    skill, accuracy = "sft_exact_match", "preference_accuracy"
    return {
        "skill_kept": gain_kept(
            metrics[skill], references["base"][skill], references["sft"][skill]
        ),
        "preference_kept": gain_kept(
            metrics[accuracy],
            references["base"][accuracy],
            references["preference"][accuracy],
        ),
    }


def balanced_metrics(metrics: dict, references: dict) -> dict[str, float]:
    """`kept_shares` and `balanced`: their minimum, capped at 1 (nan when a
    reference gains nothing over the base)."""
    kept = kept_shares(metrics, references)
    return kept | {"balanced": min(1.0, *kept.values())}


def _candidate(entry: dict) -> Candidate:
    return Candidate(**{k: entry[k] for k in asdict(Candidate("ties"))})


def _balance(start: dict, evaluate, steps: int, entries: dict) -> bool:
    """Bisect `start`'s preference weight towards the point where skill kept and
    preference kept cross (the balanced objective's best along that line): up
    while the skill side keeps more, down while the preference side does,
    doubling or halving until both sides are bracketed (by the candidates of
    `entries` on the same line too); `steps` evaluations at most (`evaluate`
    returns None once the budget is spent). Returns whether the side that lags
    at `start` moved. A line where it has not after `STALL_STEPS` evaluations is
    given up: there the weight does not reach that side (seen: breadcrumbs-TIES
    and DELLA on an L1-sparse SFT delta keep none of the skill at any preference
    weight down to 0.015, while DARE-TIES keeps 94% at 0.4). The other side
    moving is no sign: a first step past the crossing moves it a lot. While the
    lagging side has not moved, the second step goes four times as far, not
    twice (seen at rate ratio 1: the crossing sat at 0.19, below the 0.5 and
    0.25 that two halvings try, on every method). A line stops at a merge that
    keeps both sides whole (balanced capped at 1): none ranks higher, and
    bisecting on only walks to the edge where one side starts to drop (seen in
    the demo: 100% / 100% at preference weight 1.25 and 1.375, 73% at 1.406),
    the pick least likely to hold on other rows."""
    if not start["metrics"]["balanced"] < 1:  # nan (no reference gain) or whole
        return False
    line = _candidate(start)
    low, high = 0.0, None  # weights where the skill / preference side is ahead
    kept = start["metrics"]
    lagging = min(("skill_kept", "preference_kept"), key=lambda side: kept[side])
    moved = False
    for step in range(steps):
        for e in entries.values():
            if replace(_candidate(e), preference_weight=1.0) != replace(
                line, preference_weight=1.0
            ):
                continue
            weight, metrics = e["preference_weight"], e["metrics"]
            if metrics["skill_kept"] >= metrics["preference_kept"]:
                low = max(low, weight)
            elif high is None or weight < high:
                high = weight
        if high is not None and high <= low:
            return moved  # not monotone here: nothing to bisect
        # after a step that left the lagging side where it was, go twice as far
        factor = 2 if moved or step == 0 else 4
        if high is None:
            weight = min(
                factor * max(low, line.preference_weight), MAX_PREFERENCE_WEIGHT
            )
        elif low == 0:
            weight = round(high / factor, 3)
        else:
            weight = round((low + high) / 2, 3)
        if weight <= 0 or weight in (low, high):
            return moved
        entry = evaluate(replace(line, preference_weight=weight))
        if entry is None:
            return moved
        moved |= entry["metrics"][lagging] != kept[lagging]
        if entry["metrics"]["balanced"] >= 1:
            return True
        if not moved and step + 1 >= STALL_STEPS:
            return False
    return moved


def _total_kept(entry: dict) -> float:
    metrics = entry["metrics"]
    return metrics["skill_kept"] + metrics["preference_kept"]


def _rank(entry: dict, objective: str = "balanced") -> tuple:
    metrics = entry["metrics"]
    both = min(metrics["sft_exact_match"], metrics["preference_accuracy"])
    rank = (metrics["score"], both, metrics["preference_margin"])
    balanced = metrics.get("balanced", math.nan)
    if objective == "lm_eval":  # paft lm-eval objective: its weighted sum first
        return (metrics["lm_eval"], *rank)
    if objective == "score" or math.isnan(balanced):
        return rank
    return (balanced, *rank)


def search(
    base: Path,
    sft: Path,
    preference: Path,
    skill,
    pairs,
    out: Path,
    budget: int = DEFAULT_BUDGET,
    methods: tuple[str, ...] = DEFAULT_SEARCH_METHODS,
    cache: Path | None = None,
    objective: str = "balanced",
    lm_eval=None,
) -> dict:
    """Search within `budget` candidates; write the outputs (module docstring) and
    return {"best": name, "leaderboard": [entries, best first], "references":
    metrics of base / sft / preference ("balanced" objective only)}.

    `skill` and `pairs`: the held-out rows (`evaluate.TextSkill`/`TextPairs`,
    `TokenizedSkill`/`TokenizedPairs`); lists of JSONL rows are read as text.
    `lm_eval` (`lm_eval_objective.LmEvalObjective`): every candidate's metrics
    get its score, and `objective="lm_eval"` ranks by it."""
    from transformers import AutoTokenizer

    from axolotl_paft.evaluate import TextPairs, TextSkill, load_model, quick_metrics
    from axolotl_paft.inmemory import InMemoryMerges, InMemoryUnsupported

    if objective not in OBJECTIVES:
        raise ValueError(f"objective {objective!r} not in {OBJECTIVES}")
    if lm_eval is not None:  # paft lm-eval objective: checked before loading
        lm_eval_tokenizer = lm_eval.prepare(base)
    elif objective == "lm_eval":
        raise ValueError('objective "lm_eval" needs lm_eval (its tasks)')
    out = Path(out)
    cache = cache or out / "lora-cache" / time.strftime("run-%Y%m%d-%H%M%S")
    if isinstance(skill, list) or isinstance(pairs, list):
        tokenizer = AutoTokenizer.from_pretrained(base)
        skill = TextSkill(tokenizer, skill) if isinstance(skill, list) else skill
        pairs = TextPairs(tokenizer, pairs) if isinstance(pairs, list) else pairs
    base_model = load_model(base)
    base_logps = pairs.logps(base_model)
    references: dict[str, dict] = {}
    if objective == "balanced":
        for name, adapter in (("base", None), ("sft", sft), ("preference", preference)):
            model = base_model if adapter is None else load_model(base, adapter)
            references[name] = quick_metrics(model, base_logps, skill, pairs)
            print(f"search reference {name}: {references[name]}", flush=True)
    try:
        merges = InMemoryMerges(base_model, sft, preference, cache)
    except InMemoryUnsupported as err:
        merges = None
        print(f"search: candidates merged on disk by mergekit-yaml: {err}", flush=True)

    def measure(candidate: Candidate) -> dict:
        """Build `candidate` (in memory, or on disk and deleted) and score it."""
        target = out / "candidates" / candidate.name

        def score(model) -> dict:
            metrics = quick_metrics(model, base_logps, skill, pairs)
            if lm_eval is not None:  # the lm-eval objective, on the same model
                metrics |= lm_eval.score(model, lm_eval_tokenizer)
            return metrics

        if merges is None:
            merged = build_candidate(base, sft, preference, candidate, target, cache)
            metrics = score(load_model(merged))
            shutil.rmtree(merged)
        else:
            config, _ = write_candidate_config(base, sft, preference, candidate, target)
            with merges.candidate(config) as model:
                metrics = score(model)
        if references:
            metrics |= balanced_metrics(metrics, references)
        return metrics

    leaderboard = explore(measure, methods, budget, objective)
    held_out = {"sft_rows": len(skill.rows), "preference_pairs": len(pairs.rows)}
    paths = write_search(
        out, leaderboard, base, sft, preference, held_out, cache, objective, references
    )
    print(f"search: writing the winner {leaderboard[0]['name']} (mergekit)", flush=True)
    shutil.rmtree(out / "merged" / "best", ignore_errors=True)
    run_merge_config(paths[0], out / "merged" / "best", cache)
    return {
        "best": leaderboard[0]["name"],
        "leaderboard": leaderboard,
        "references": references,
    }


def explore(measure, methods, budget: int, objective: str = "balanced") -> list[dict]:
    """The search strategy (module docstring) over `measure(candidate)`, which
    returns a candidate's metrics (with `balanced_metrics` for the balanced
    objective); at most `budget` candidates, each measured once. Returns every
    entry ({"name", the candidate's fields, "metrics"}), best first."""
    entries: dict[str, dict] = {}
    best: dict | None = None

    def rank(entry: dict) -> tuple:
        return _rank(entry, objective)

    def evaluate(candidate: Candidate) -> dict | None:
        nonlocal best
        if candidate.name in entries or len(entries) >= budget:
            return entries.get(candidate.name)
        metrics = measure(candidate)
        entry = {"name": candidate.name, **asdict(candidate), "metrics": metrics}
        entries[candidate.name] = entry
        if best is None or rank(entry) > rank(best):
            best = entry
        print(f"search {len(entries)}/{budget}: {candidate.name} {metrics}", flush=True)
        return entry

    def coordinate(start: dict) -> None:
        improved = True
        while improved and len(entries) < budget:
            improved = False
            current = _candidate(start)
            for field in GRID:
                if not current.varies(field):
                    continue
                for neighbour in _neighbours(current, field):
                    entry = evaluate(neighbour)
                    if entry is not None and rank(entry) > rank(start):
                        start, improved = entry, True

    balanced = objective == "balanced"
    for method in methods:
        evaluate(Candidate(method))
    if balanced and not math.isnan(best["metrics"]["balanced"]):
        # the methods whose default merge keeps the most in total first: moving
        # the weights trades one side for the other, it does not add to both;
        # a line where the lagging side does not move gives its turn to the next
        defaults = sorted(entries.values(), key=_total_kept, reverse=True)
        balanced_lines = 0
        for start in defaults:
            if balanced_lines == BALANCED_METHODS or len(entries) >= budget:
                break
            balanced_lines += _balance(start, evaluate, BALANCE_STEPS, entries)
    while len(entries) < budget:
        evaluated = len(entries)
        coordinate(best)
        if balanced:
            _balance(best, evaluate, BALANCE_STEPS, entries)
        if len(entries) == evaluated:
            break
    return sorted(entries.values(), key=rank, reverse=True)


def write_search(
    out: Path,
    leaderboard: list[dict],
    base,
    sft,
    preference,
    held_out: dict,
    cache: Path,
    objective: str = "balanced",
    references: dict | None = None,
) -> list[Path]:
    """best.yml, leaderboard.json/.md and search.png (`leaderboard`: every
    candidate, best first). best.yml's command names the search's LoRA cache:
    with it, filled, a DARE or DELLA winner rebuilds bit for bit
    (`merge.mergekit_command`)."""
    best = leaderboard[0]
    config_dir = out / "mergekit"
    config_dir.mkdir(parents=True, exist_ok=True)
    best_config = (out / "candidates" / f"{best['name']}.yml").read_text()
    paths = [config_dir / "best.yml", out / "leaderboard.json", out / "leaderboard.md"]
    command = mergekit_command(paths[0].resolve(), "MERGED_DIR", Path(cache).resolve())
    header = (
        f"# Best of {len(leaderboard)} merge candidates searched by axolotl-paft "
        f"(score {best['metrics']['score']:.3f}). Run:\n#   {command}\n"
    )
    paths[0].write_text(header + best_config)
    summary = {
        "best": best["name"],
        "base": str(base),
        "sft": str(sft),
        "preference": str(preference),
        "score": "(sft_exact_match + preference_accuracy) / 2",
        "held_out": held_out,
        "objective": objective,
        "references": references or {},
        "leaderboard": leaderboard,
    }
    paths[1].write_text(json.dumps(summary, indent=2))
    lines = [
        f"Ranked by {objective}"
        + (
            ": min(skill kept, preference kept), capped at 1, then score"
            * (objective == "balanced")
        )
        + ".",
        "",
        "| rank | candidate | skill (exact match) | preference accuracy | score "
        "| skill kept | preference kept |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, entry in enumerate(leaderboard, 1):
        m = entry["metrics"]
        lines.append(
            f"| {i} | {entry['name']} | {m['sft_exact_match']:.3f} | "
            f"{m['preference_accuracy']:.3f} | {m['score']:.3f} | "
            f"{m.get('skill_kept', math.nan):.3f} | "
            f"{m.get('preference_kept', math.nan):.3f} |"
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
