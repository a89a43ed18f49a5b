"""Merge search: the best mergekit merge of the two deltas on held-out data.

Searches merge method, the SFT and preference weights and the density within a
budget of candidates, every candidate the merge mergekit builds from a config
that `axolotl_paft.merge` builds and checks (built in memory on the one resident
base by mergekit's merge methods, `axolotl_paft.inmemory`: no model written per
candidate; for adapters that module does not take, by `mergekit-yaml` on disk,
deleted after scoring), and scored on held-out rows by a
`Scorer`: a skill measure and a preference measure of `evaluate.MEASURES` (by
default the skill's is chosen from the answers' lengths: exact match for short
answers, per-token NLL for free-form ones; the preference's is the mean
implicit-reward margin against the base). Candidates are ranked by the balanced
objective (`objective="balanced"`, the default): the smaller of the skill kept
(share of the SFT-only model's gain over the base) and the preference kept
(share of the preference-only model's gain), capped at 1, each with a 95%
paired-bootstrap interval; the search scores the SFT-only and preference-only
adapters on the same rows for that (two evaluations beyond the budget). A side
whose reference gains nothing beyond noise is warned about and does not rank.
`objective="score"` ranks by `(skill exact match + preference accuracy) / 2`
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
- `search.png`: skill kept against preference kept per candidate, by method.

Candidates are built and scored where the base model sits (`evaluate.load_model`:
the GPU when there is one, else the CPU); only the winner's `mergekit-yaml` run
goes through mergekit's own device choice.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
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
    base: str,
    sft: Path,
    preference: Path,
    candidate: Candidate,
    chat_template: str | None = None,
) -> dict:
    """The checked mergekit config of `candidate`. SLERP's `t` is the preference
    share of the two weights; `chat_template`: the run's (`merge.MergeDeltas`),
    which mergekit then writes into the merged model's tokenizer."""
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
    deltas = MergeDeltas(base, sft, preference, chat_template=chat_template)
    config = build_config(candidate.method, deltas, settings)
    if isinstance(config, str):
        raise ValueError(config)
    validate_config(config)
    return config


def write_candidate_config(
    base: Path,
    sft: Path,
    preference: Path,
    candidate: Candidate,
    out: Path,
    chat_template: str | None = None,
) -> tuple[dict, Path]:
    """Write `candidate`'s config next to `out` (`out`.yml); return it and its
    path."""
    config = candidate_config(
        base_model_reference(base), Path(sft).resolve(), Path(preference).resolve(),
        candidate, chat_template,
    )  # fmt: skip
    path = Path(out).parent / f"{Path(out).name}.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return config, path


def build_candidate(
    base: Path,
    sft: Path,
    preference: Path,
    candidate: Candidate,
    out: Path,
    cache,
    chat_template: str | None = None,
) -> Path:
    """Write `candidate`'s config next to `out` and run it through mergekit."""
    _, path = write_candidate_config(
        base, sft, preference, candidate, out, chat_template
    )
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


LOG = logging.getLogger(f"axolotl.{__name__}")  # shown by axolotl's log config
QUANTILES = torch.tensor([0.025, 0.975], dtype=torch.float64)  # a 95% interval
OBJECTIVES = ("balanced", "score", "lm_eval")
DEFAULT_BUDGET = 24  # candidates: every method once, then about two balance phases
BALANCE_STEPS = 6  # bisection steps on the preference weight per balance phase
BALANCED_METHODS = 2  # methods bisected after the first round
STALL_STEPS = 2  # a balance line whose lagging side has not moved is dropped then
MAX_PREFERENCE_WEIGHT = 4.0


BOOTSTRAP_SAMPLES = 2000  # resamples of the held-out rows per interval
FEW_ROWS = 32  # fewer held-out rows per side than this are warned about
SIDES = ("skill", "preference")
# the measures `kept_shares` reads by default: the miniature world's, whose
# answers are short (`evaluate.choose_skill_measure`)
LEGACY_MEASURES = {"skill": "exact_match", "preference": "accuracy"}


def gain_kept(
    value: float, base: float, reference: float, higher_is_better: bool = True
) -> float:
    """Share of the gain `reference - base` that `value - base` keeps (nan when
    the reference gains nothing; for a lower-is-better measure a gain is a
    drop, and the share is the same ratio)."""
    gain = reference - base if higher_is_better else base - reference
    return (value - base) / (reference - base) if gain > 0 else math.nan


def kept_shares(
    metrics: dict, references: dict, measures: dict | None = None
) -> dict[str, float]:
    """`skill_kept` and `preference_kept`: the shares of the SFT-only and the
    preference-only models' gains over the base (`references`) that `metrics`
    keep, on `measures` (side -> `evaluate.MEASURES` name)."""
    from axolotl_paft.evaluate import MEASURES

    measures = measures or LEGACY_MEASURES
    kept = {}
    for side, reference in zip(SIDES, ("sft", "preference"), strict=True):
        measure = MEASURES[measures[side]]
        kept[f"{side}_kept"] = gain_kept(
            metrics[measure.metric],
            references["base"][measure.metric],
            references[reference][measure.metric],
            measure.higher_is_better,
        )
    return kept


def balanced_of(kept: dict, sides=SIDES) -> float:
    """The balanced objective: the smallest kept share of `sides` (those whose
    reference gains over the base), capped at 1; nan without a side."""
    shares = [kept[f"{side}_kept"] for side in sides]
    return min(1.0, *shares) if shares else math.nan


def balanced_metrics(
    metrics: dict, references: dict, measures: dict | None = None
) -> dict[str, float]:
    """`kept_shares` and `balanced` (`balanced_of` the sides whose reference
    gains over the base; `Scorer` also requires the gain to exceed its noise
    and says which sides rank)."""
    kept = kept_shares(metrics, references, measures)
    sides = [s for s in SIDES if not math.isnan(kept[f"{s}_kept"])]
    return kept | {"balanced": balanced_of(kept, sides)}


def _bootstrap_values(terms: tuple, index) -> torch.Tensor:
    """A measure's value (sum of numerators / sum of denominators) on each
    resample of rows (`index`: `[samples, rows]`)."""
    numerator, denominator = terms
    return numerator[index].sum(1) / denominator[index].sum(1)


class Scorer:
    """Scores models on the search's held-out rows and ranks them against the
    references (the base, the SFT-only and the preference-only adapters).

    The skill and preference measures are `evaluate.MEASURES` entries (the skill
    one chosen from the answers' lengths by default). Every kept share comes
    with a 95% interval: a paired bootstrap over the held-out rows (the same
    resampled rows for the candidate, the base and the reference, so what the
    rows share cancels; `BOOTSTRAP_SAMPLES` resamples, percentiles 2.5 and
    97.5), and so does each reference's gain over the base. A side whose
    reference gains nothing beyond that noise (interval reaching 0) cannot be
    ranked: it is warned about, named in the leaderboard, and the balanced
    objective ranks by the other side alone; with neither, by the score."""

    def __init__(self, measures: dict[str, str], base_terms: dict, score_terms=None):
        """`measures`: side -> `evaluate.MEASURES` name; `base_terms`: the base's
        `evaluate.row_terms`; `score_terms(model)`: a model's (`on_rows`)."""
        from axolotl_paft.evaluate import MEASURES

        self.measures, self.score_terms = measures, score_terms
        self.higher = {s: MEASURES[m].higher_is_better for s, m in measures.items()}
        generator = torch.Generator().manual_seed(0)
        self.index = {}
        for side, measure in measures.items():
            n = len(base_terms[measure][0])
            self.index[side] = torch.randint(
                n, (BOOTSTRAP_SAMPLES, n), generator=generator
            )
        self.references: dict[str, dict] = {}
        self.reference_terms: dict[str, dict] = {}
        self.gains: dict[str, dict] = {}
        self.ranked_sides: tuple[str, ...] = ()
        self.add_reference("base", base_terms)

    @classmethod
    def on_rows(
        cls, skill, pairs, base_model, skill_measure="auto", preference_measure=None
    ) -> Scorer:
        """A scorer of models on held-out `skill` rows and `pairs` (`evaluate`'s
        `TextSkill`/`TokenizedSkill`, `TextPairs`/`TokenizedPairs`), the base
        scored; `skill_measure`: a skill measure or `auto`
        (`evaluate.choose_skill_measure`); `preference_measure`: None for
        `evaluate.DEFAULT_PREFERENCE_MEASURE`."""
        from axolotl_paft.evaluate import (
            DEFAULT_PREFERENCE_MEASURE,
            PREFERENCE_MEASURES,
            choose_skill_measure,
            row_terms,
        )

        preference_measure = preference_measure or DEFAULT_PREFERENCE_MEASURE
        if preference_measure not in PREFERENCE_MEASURES:
            raise ValueError(
                f"preference measure {preference_measure!r} not in "
                f"{PREFERENCE_MEASURES}"
            )
        measures = {
            "skill": choose_skill_measure(skill, skill_measure),
            "preference": preference_measure,
        }
        base_logps = pairs.logps(base_model)

        def score_terms(model) -> dict:
            return row_terms(model, base_logps, skill, pairs)

        base_terms = row_terms(base_model, base_logps, skill, pairs, base_logps)
        return cls(measures, base_terms, score_terms)

    def add_reference(self, name: str, terms: dict) -> dict:
        """A reference's `row_terms` (`sft`, `preference`; `base` first); once
        all three are in, check each side's gain (`reference_gain`). Returns its
        metrics."""
        from axolotl_paft.evaluate import summarize

        self.reference_terms[name] = terms
        self.references[name] = summarize(terms)
        if len(self.references) == 3:
            self.gains = {
                side: self.reference_gain(side, ref)
                for side, ref in zip(SIDES, ("sft", "preference"), strict=True)
            }
            self.ranked_sides = tuple(s for s in SIDES if self.gains[s]["clear"])
        return self.references[name]

    def reference_gain(self, side: str, reference: str) -> dict:
        """The reference's gain over the base on `side`'s measure (positive =
        better), its 95% interval, and whether it is clear of 0; warns when not."""
        measure = self.measures[side]
        base, ref = (self.reference_terms[n][measure] for n in ("base", reference))
        sign = 1 if self.higher[side] else -1
        from axolotl_paft.evaluate import value

        gain = sign * (value(measure, ref) - value(measure, base))
        index = self.index[side]
        samples = sign * (
            _bootstrap_values(ref, index) - _bootstrap_values(base, index)
        )
        low, high = (float(q) for q in torch.quantile(samples, QUANTILES))
        clear = low > 0
        if not clear:
            LOG.warning(
                "paft: merge search: the %s-only adapter gains nothing over the base "
                "on the %s side beyond noise (%s: base %.4g, %s-only %.4g, gain %.4g, "
                "95%% interval [%.4g, %.4g] on %d rows): %s kept cannot rank merges, "
                "so it does not; the search ranks by the other side only. Train "
                "that adapter longer, hold out more rows, or choose another measure "
                "(paft_merge_search_%s_measure)",
                reference, side, measure, value(measure, base), reference,
                value(measure, ref), gain, low, high, index.shape[1], side, side,
            )  # fmt: skip
        return {
            "measure": measure,
            "gain": gain,
            "low": low,
            "high": high,
            "clear": clear,
        }

    def __call__(self, model) -> dict[str, float]:
        """`metrics` of `model` on the held-out rows."""
        return self.metrics(self.score_terms(model))

    def metrics(self, terms: dict) -> dict[str, float]:
        """`evaluate.summarize` of a model's `row_terms`, with (once the
        references are in) `skill_kept`, `preference_kept`, `balanced` and the
        95% interval of each (`*_low`, `*_high`)."""
        from axolotl_paft.evaluate import summarize

        metrics = summarize(terms)
        if not self.gains:
            return metrics
        kept = kept_shares(metrics, self.references, self.measures)
        metrics |= kept | {"balanced": balanced_of(kept, self.ranked_sides)}
        draws = {}
        for side, reference in zip(SIDES, ("sft", "preference"), strict=True):
            measure, index = self.measures[side], self.index[side]
            base, ref = (
                _bootstrap_values(self.reference_terms[n][measure], index)
                for n in ("base", reference)
            )
            draws[side] = (_bootstrap_values(terms[measure], index) - base) / (
                ref - base
            )
            metrics |= self._interval(f"{side}_kept", draws[side])
        if self.ranked_sides:
            shares = torch.stack([draws[s] for s in self.ranked_sides]).amin(0)
            metrics |= self._interval("balanced", shares.clamp(max=1.0))
        return metrics

    @staticmethod
    def _interval(key: str, samples) -> dict[str, float]:
        low, high = torch.nanquantile(samples.double(), QUANTILES).tolist()
        return {f"{key}_low": low, f"{key}_high": high}

    def summary(self) -> dict:
        """What the leaderboard says about the measures and the references."""
        return {
            "measures": self.measures,
            "reference_gains": self.gains,
            "ranked_by": list(self.ranked_sides),
        }


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
    kept = start["metrics"]
    if not kept["balanced"] < 1:  # nan (no reference gain) or whole
        return False
    if any(math.isnan(kept[side]) for side in ("skill_kept", "preference_kept")):
        return False  # one side does not rank: there is no crossing to find
    line = _candidate(start)
    low, high = 0.0, None  # weights where the skill / preference side is ahead
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
        moved |= _moved(entry["metrics"][lagging], kept[lagging])
        if entry["metrics"]["balanced"] >= 1:
            return True
        if not moved and step + 1 >= STALL_STEPS:
            return False
    return moved


def _moved(value: float, before: float) -> bool:
    """Whether a kept share changed (nan to nan is no movement)."""
    return value != before and not (math.isnan(value) and math.isnan(before))


def _total_kept(entry: dict) -> float:
    """Both kept shares summed, a side that does not rank (nan) as 0."""
    metrics = entry["metrics"]
    shares = (metrics["skill_kept"], metrics["preference_kept"])
    return sum(0.0 if math.isnan(share) else share for share in shares)


RANKED_KEYS = ("lm_eval", "balanced", "skill_kept", "preference_kept")


def _rank(entry: dict, objective: str = "balanced") -> tuple:
    """Balanced, then both kept shares summed (the two break the balanced
    objective's ties by what a merge keeps in total), then the score."""
    metrics = entry["metrics"]
    both = min(metrics["sft_exact_match"], metrics["preference_accuracy"])
    rank = (metrics["score"], both, metrics["preference_margin"])
    balanced = metrics.get("balanced", math.nan)
    if objective == "lm_eval":  # paft lm-eval objective: its weighted sum first
        return (metrics["lm_eval"], *rank)
    if objective == "score" or math.isnan(balanced):
        return rank
    return (balanced, _total_kept(entry), *rank)


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
    skill_measure: str = "auto",
    preference_measure: str | None = None,
    lm_eval=None,
    chat_template: str | None = None,
) -> dict:
    """Search within `budget` candidates; write the outputs (module docstring) and
    return {"best": name, "leaderboard": [entries, best first], "references":
    metrics of base / sft / preference ("balanced" objective only)}.

    `skill` and `pairs`: the held-out rows (`evaluate.TextSkill`/`TextPairs`,
    `TokenizedSkill`/`TokenizedPairs`); lists of JSONL rows are read as text,
    with the base's tokenizer. `skill_measure` / `preference_measure`: names of
    `evaluate.MEASURES` (`auto`: `evaluate.choose_skill_measure`; None: its
    `DEFAULT_PREFERENCE_MEASURE`). `lm_eval` (`lm_eval_objective.LmEvalObjective`):
    every candidate's metrics get its score, and `objective="lm_eval"` ranks by
    it. `chat_template`: the run's, written into every candidate's config and so
    into the winner mergekit writes (else the base's template comes back)."""
    from transformers import AutoTokenizer

    from axolotl_paft.evaluate import TextPairs, TextSkill, load_model
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
    scorer = Scorer.on_rows(skill, pairs, base_model, skill_measure, preference_measure)
    LOG.info(
        "paft: merge search measures: skill %s, preference %s, on %d SFT rows and "
        "%d preference pairs",
        scorer.measures["skill"], scorer.measures["preference"],
        len(skill.spans), len(pairs.rows),
    )  # fmt: skip
    for side, rows in (("SFT rows", len(skill.spans)), ("pairs", len(pairs.rows))):
        if rows < FEW_ROWS:
            LOG.warning(
                "paft: merge search: only %d held-out %s: the kept shares' 95%% "
                "intervals are wide and close candidates cannot be told apart "
                "(the leaderboard says where); hold out more rows (a larger split "
                "or file, paft_merge_search_rows)", rows, side,
            )  # fmt: skip
    if objective == "balanced":
        for name, adapter in (("sft", sft), ("preference", preference)):
            terms = scorer.score_terms(load_model(base, adapter))
            metrics = scorer.add_reference(name, terms)
            LOG.info("paft: merge search reference %s: %s", name, metrics)
        LOG.info("paft: merge search reference base: %s", scorer.references["base"])
        if not scorer.ranked_sides:
            LOG.warning(
                "paft: merge search: neither reference gains over the base beyond "
                "noise: the balanced objective cannot rank, candidates are ranked "
                "by the score alone (see the warnings above)"
            )
    references = scorer.references if objective == "balanced" else {}
    try:
        merges = InMemoryMerges(base_model, sft, preference, cache)
    except InMemoryUnsupported as err:
        merges = None
        LOG.info("paft: merge search candidates merged on disk by mergekit: %s", err)

    def measure(candidate: Candidate) -> dict:
        """Build `candidate` (in memory, or on disk and deleted) and score it."""
        target = out / "candidates" / candidate.name

        def score(model) -> dict:
            metrics = scorer(model)
            if lm_eval is not None:  # the lm-eval objective, on the same model
                metrics |= lm_eval.score(model, lm_eval_tokenizer)
            return metrics

        if merges is None:
            merged = build_candidate(
                base, sft, preference, candidate, target, cache, chat_template
            )
            metrics = score(load_model(merged))
            shutil.rmtree(merged)
        else:
            config, _ = write_candidate_config(
                base, sft, preference, candidate, target, chat_template
            )
            with merges.candidate(config) as model:
                metrics = score(model)
        return metrics

    leaderboard = explore(measure, methods, budget, objective)
    held_out = {"sft_rows": len(skill.spans), "preference_pairs": len(pairs.rows)}
    paths = write_search(
        out, leaderboard, base, sft, preference, held_out, cache, objective,
        references, scorer.summary() if references else None,
    )  # fmt: skip
    LOG.info(
        "paft: merge search writes the winner %s (mergekit)", leaderboard[0]["name"]
    )
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
        print(
            f"search {len(entries)}/{budget}: {candidate.name}: "
            + progress_text(metrics),
            flush=True,
        )
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
    scoring: dict | None = None,
) -> list[Path]:
    """best.yml, leaderboard.json/.md and search.png (`leaderboard`: every
    candidate, best first; `scoring`: `Scorer.summary`). best.yml's command
    names the search's LoRA cache: with it, filled, a DARE or DELLA winner
    rebuilds bit for bit (`merge.mergekit_command`)."""
    best = leaderboard[0]
    scoring = scoring or {"measures": dict(LEGACY_MEASURES)}
    config_dir = out / "mergekit"
    config_dir.mkdir(parents=True, exist_ok=True)
    best_config = (out / "candidates" / f"{best['name']}.yml").read_text()
    paths = [config_dir / "best.yml", out / "leaderboard.json", out / "leaderboard.md"]
    command = mergekit_command(paths[0].resolve(), "MERGED_DIR", Path(cache).resolve())
    shown = "balanced" if "balanced" in best["metrics"] else "score"
    header = (
        f"# Best of {len(leaderboard)} merge candidates searched by axolotl-paft "
        f"({shown} {best['metrics'][shown]:.3f}). Run:\n#   {command}\n"
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
        **scoring,
        "references": references or {},
        "leaderboard": leaderboard,
    }
    paths[1].write_text(json.dumps(summary, indent=2))
    paths[2].write_text(leaderboard_markdown(leaderboard, held_out, objective, scoring))
    paths.append(plot_search(leaderboard, out / "search.png"))
    return paths


def interval_text(metrics: dict, key: str, digits: int = 3) -> str:
    """`metrics[key]` with its 95% interval where it has one: "0.85 [0.79, 0.91]"."""
    if key not in metrics:
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
    from axolotl_paft.evaluate import MEASURES

    measures = scoring["measures"]
    skill, preference = measures["skill"], measures["preference"]
    ranked_by = scoring.get("ranked_by", list(SIDES))
    lines = [
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
    for side, gain in scoring.get("reference_gains", {}).items():
        reference = "SFT-only" if side == "skill" else "preference-only"
        lines.append(
            f"- {reference} gain over the base on {side} ({gain['measure']}): "
            f"{gain['gain']:.4g} [{gain['low']:.4g}, {gain['high']:.4g}]"
            + (
                ""
                if gain["clear"]
                else f". **Not clear of 0: {side} kept does not rank the merges.**"
            )
        )
    if objective == "balanced" and not ranked_by:
        lines.append("- **No side ranks: the candidates are ranked by the score.**")
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
    skill_metric, preference_metric = (
        MEASURES[skill].metric,
        MEASURES[preference].metric,
    )
    lines += [
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
    return "\n".join(lines) + "\n"


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
