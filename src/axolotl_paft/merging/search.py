"""Merge search: the best mergekit merge of the two deltas on held-out data.

Searches merge method, the SFT and preference weights and the density within a
budget of candidates, every candidate the merge mergekit builds from a config
that `configs` builds and checks (`candidates`; built in memory on the one
resident base by mergekit's merge methods, `inmemory`: no model written per
candidate; for adapters that module does not take, by `mergekit-yaml` on disk,
deleted after scoring), and scored on held-out rows by a
`scoring.Scorer`: a skill measure and a preference measure of `scoring.MEASURES` (by
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
by the weighted sum of lm-eval tasks (`axolotl_paft.merging.lm_eval_objective`, as
mergekit-evolve scores), then the score. The strategy is
deterministic: every method at the default parameters first (weights 1/1,
density 0.5); with the balanced objective, a balance phase for the two methods
whose default merge keeps the most in total (bisection of the preference weight
towards the crossing of skill kept and preference kept, `_balance`; a method
whose lagging side does not move gives its turn to the next one); then a
coordinate search from the best candidate over the preference weight, the SFT
weight, the density and the layer profile (`candidates.PROFILES`: per-layer
weights), one neighbouring value at a time, and a balance phase from the best
again, while the budget lasts. With an answer stage, the best finalists are
then re-ranked by what they say (`answers`). Writes into `out`:

- `mergekit/best.yml`: the winner's config (run it with `mergekit-yaml`);
- `merged/best`: the winner, written by mergekit from `best.yml` at the end;
- `leaderboard.json` / `leaderboard.md`: every candidate, best first;
- `search.png`: skill kept against preference kept per candidate, by method.

Candidates are built and scored where the base model sits (`scoring.load_model`:
the GPU when there is one, else the CPU); only the winner's `mergekit-yaml` run
goes through mergekit's own device choice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from axolotl_paft.const import DEFAULT_BUDGET
from axolotl_paft.merging.answers import AnswerStage, answer_rank, first_lines
from axolotl_paft.merging.candidates import (
    PROFILES,
    Candidate,
    write_candidate_config,
)
from axolotl_paft.merging.configs import (
    DEFAULT_SEARCH_METHODS,
    MERGE_SEED,
    base_model_reference,
    lora_cache_dir,
    model_reference,
    run_merge_config,
)
from axolotl_paft.merging.inmemory import InMemoryMerges, InMemoryUnsupported
from axolotl_paft.merging.leaderboard import progress_text, write_search
from axolotl_paft.merging.runs import adapter_digest, run_stamp
from axolotl_paft.merging.scoring import Scorer, device_of, load_model, read_rows

GRID = {
    "preference_weight": (0.1, 0.25, 0.5, 0.75, 1.0, 1.5),
    "sft_weight": (0.5, 0.75, 1.0, 1.25, 1.5),
    "density": (0.3, 0.5, 0.7, 0.85),  # DELLA: density + epsilon < 1
}


def _neighbours(
    candidate: Candidate, field: str, profiles: tuple[str, ...] = ()
) -> list[Candidate]:
    """The grid values next to `candidate`'s on `field`; for `profile`, every
    other of `profiles` (they have no order)."""
    if field == "profile":
        return [
            replace(candidate, profile=p) for p in profiles if p != candidate.profile
        ]
    values = GRID[field]
    current = getattr(candidate, field)
    i = min(range(len(values)), key=lambda j: abs(values[j] - current))
    return [
        replace(candidate, **{field: values[j]})
        for j in (i - 1, i + 1)
        if 0 <= j < len(values)
    ]


LOG = logging.getLogger(f"axolotl.{__name__}")  # shown by axolotl's log config
OBJECTIVES = ("balanced", "score", "lm_eval")
BALANCE_STEPS = 6  # bisection steps on the preference weight per balance phase
BALANCED_METHODS = 2  # methods bisected after the first round
STALL_STEPS = 2  # a balance line whose lagging side has not moved is dropped then
MAX_PREFERENCE_WEIGHT = 4.0
FEW_ROWS = 32  # fewer held-out rows per side than this are warned about


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


def _ranked(value: float) -> float:
    """A value as a rank key: nan (a broken candidate, a side that does not
    rank) below every number, so that it never wins and sorts consistently
    (nan compares neither above nor below anything)."""
    return -math.inf if math.isnan(value) else value


def _rank(entry: dict, objective: str = "balanced") -> tuple:
    """Balanced, then both kept shares summed (the two break the balanced
    objective's ties by what a merge keeps in total), then the score; nan
    ranks lowest (`_ranked`). Where no side ranks, every candidate's balanced
    is nan and kept shares are absent: the score decides."""
    metrics = entry["metrics"]
    both = min(
        _ranked(metrics["sft_exact_match"]), _ranked(metrics["preference_accuracy"])
    )
    rank = (_ranked(metrics["score"]), both, _ranked(metrics["preference_margin"]))
    if objective == "lm_eval":  # paft lm-eval objective: its weighted sum first
        return (_ranked(metrics["lm_eval"]), *rank)
    if objective == "score":
        return rank
    balanced = _ranked(metrics.get("balanced", math.nan))
    return (balanced, _total_kept(entry), *rank)


@dataclass(frozen=True)
class SearchResult:
    """What a search hands to the export and the caller: nothing of it needs
    re-reading from the files it wrote."""

    best: str  # the winner's name
    leaderboard: list[dict]  # every candidate, best first
    references: dict  # metrics of base / sft / preference ("balanced" only)
    config: Path  # out/mergekit/best.yml
    merged: Path  # out/merged/best, written by mergekit
    cache: Path  # the LoRA merge cache best.yml names
    scorer: Scorer  # the held-out rows and measures, the references scored
    paths: list[Path]  # best.yml, leaderboard.json / .md, search.png
    fingerprint: str = ""  # what the candidates were scored on (`fingerprint`)
    run: dict | None = None  # the run that searched (`runs.run_stamp`)


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
    profiles: tuple[str, ...] = tuple(PROFILES),
    objective: str = "balanced",
    skill_measure: str = "auto",
    preference_measure: str | None = None,
    lm_eval=None,
    chat_template: str | None = None,
    answers: AnswerStage | None = None,
    tokenizer=None,
    rescore: bool | None = None,
    run: dict | None = None,
) -> SearchResult:
    """Search within `budget` candidates; write the outputs (module docstring) and
    return them as a `SearchResult`.

    `skill` and `pairs`: the held-out rows (`scoring.TextSkill`/`TextPairs`,
    `TokenizedSkill`/`TokenizedPairs`); lists of JSONL rows are read as text,
    with the base's tokenizer. `skill_measure` / `preference_measure`: names of
    `scoring.MEASURES` (`auto`: `scoring.choose_skill_measure`; None: its
    `DEFAULT_PREFERENCE_MEASURE`). `lm_eval` (`lm_eval_objective.LmEvalObjective`):
    every candidate's metrics get its score, and `objective="lm_eval"` ranks by
    it. `chat_template`: the run's, written into every candidate's config and so
    into the winner mergekit writes (else the base's template comes back).
    `answers`: the second stage (`answers.AnswerStage`): the screen's best
    finalists re-ranked by checks on their greedy answers. `tokenizer`: the
    run's, which renders text rows and decodes answers (default: the base's).

    Every candidate's config and metrics are appended to `out/candidates.jsonl`
    as it is scored, with the `fingerprint` of what it was scored on; a search
    into the same `out` on the same inputs (after a failure or a kill) takes the
    candidates scored there instead of scoring them again. `rescore`: score the
    winner as mergekit wrote it (`merged/best`) and record it beside the
    searched numbers (`rescored`); None: where that build can differ from the
    candidate's (`_rebuild_differs`). `run`: the `runs.run_stamp` of the run
    that searches (its id, the adapters' digests), written into
    leaderboard.json (default: the adapters' alone)."""
    score_lm_eval = _lm_eval_scorer(objective, lm_eval, base)
    out = Path(out)
    cache = cache or lora_cache_dir(out)
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(base)
    skill, pairs = _as_rows(tokenizer, skill, pairs)
    base_model = load_model(base)
    scorer = Scorer.on_rows(skill, pairs, base_model, skill_measure, preference_measure)
    _log_rows(scorer, skill, pairs)
    merges = _in_memory(base_model, sft, preference, cache)
    if objective == "balanced":
        _score_references(scorer, base, sft, preference, None if merges else cache)
    references = scorer.references if objective == "balanced" else {}
    stamp = fingerprint(
        base, sft, preference, skill, pairs, scorer.measures, objective, lm_eval,
        chat_template, device_of(base_model).type,
    )  # fmt: skip
    scored = ScoredCandidates(out / CANDIDATES, stamp)

    def score(model) -> dict:
        return scorer(model) | score_lm_eval(model)

    configs: dict[str, dict] = {}
    build = _builder(merges, base, sft, preference, out, cache, chat_template)
    measure = _resumable(scored, configs, build, score)
    leaderboard = explore(measure, methods, budget, objective, profiles)
    summary = scorer.summary() if references else None
    if answers is not None:
        answers.on_rows(tokenizer, skill, pairs)
        leaderboard, said = _rerank_by_answers(
            answers, leaderboard, build, base_model, base, sft, preference,
            None if merges else lambda adapter: load_model(
                merged_reference(base, adapter, cache)
            ),
        )  # fmt: skip
        summary = (summary or {}) | {"answers": said}
    held_out = {"sft_rows": len(skill.spans), "preference_pairs": len(pairs.rows)}
    best = leaderboard[0]["name"]
    summary = (summary or {"measures": scorer.measures}) | {
        "fingerprint": stamp,
        "run": run or run_stamp({"sft": sft, "preference": preference}),
    }

    def write() -> list[Path]:
        return write_search(
            out, leaderboard, configs[best], base, sft, preference, held_out, cache,
            objective, references, summary,
        )  # fmt: skip

    paths = write()
    merged = _write_winner(paths[0], out, cache, best)
    differs = _rebuild_differs(merges, configs[best], device_of(base_model))
    if rescore or (rescore is None and differs):
        _rescore(leaderboard[0], score, merged, differs or "asked for")
        paths = write()
    return SearchResult(
        best, leaderboard, references, paths[0], merged, cache, scorer, paths, stamp,
        summary["run"],
    )  # fmt: skip


def _lm_eval_scorer(objective: str, lm_eval, base):
    """`score(model)`: the lm-eval objective's metrics of a model (none without
    it), checked and prepared before any model loads."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective {objective!r} not in {OBJECTIVES}")
    if lm_eval is None:
        if objective == "lm_eval":
            raise ValueError('objective "lm_eval" needs lm_eval (its tasks)')
        return lambda model: {}
    tokenizer = lm_eval.prepare(base)
    return lambda model: lm_eval.score(model, tokenizer)


def _resumable(scored: ScoredCandidates, configs: dict, build, score):
    """`measure(candidate)` for `explore`: a candidate scored by an earlier try on
    the same inputs is taken back; another is built, scored and recorded as it
    comes (`configs`: name -> its mergekit config)."""

    def measure(candidate: Candidate) -> dict:
        kept = scored.get(candidate.name)
        if kept is not None:  # scored by an earlier try on the same inputs
            configs[candidate.name] = kept["config"]
            return kept["metrics"]
        configs[candidate.name], metrics = build(candidate, score)
        scored.add(candidate, configs[candidate.name], metrics)
        return metrics

    return measure


def _write_winner(config: Path, out: Path, cache: Path, best: str) -> Path:
    """The winner written by mergekit from best.yml into out/merged/best."""
    LOG.info("paft: merge search writes the winner %s (mergekit)", best)
    merged = out / "merged" / "best"
    shutil.rmtree(merged, ignore_errors=True)
    run_merge_config(config, merged, cache)
    return merged


def _rescore(entry: dict, score, merged: Path, why: str) -> None:
    """The winner as written, scored beside the searched numbers (`rescored`)."""
    entry["rescored"] = score(load_model(merged)) | {"why": why}
    LOG.info(
        "paft: merge search winner %s as written (%s): %s; searched: %s",
        entry["name"], merged, progress_text(entry["rescored"]),
        progress_text(entry["metrics"]),
    )  # fmt: skip


def _as_rows(tokenizer, skill, pairs) -> tuple:
    """Held-out rows given as lists of JSONL rows, read with `tokenizer`
    (`scoring.read_rows`: text, or a run's own split as written); rows given as
    `scoring`'s row classes, as they are."""
    read_skill, read_pairs = read_rows(
        tokenizer,
        skill if isinstance(skill, list) else [],
        pairs if isinstance(pairs, list) else [],
    )
    skill = read_skill if isinstance(skill, list) else skill
    pairs = read_pairs if isinstance(pairs, list) else pairs
    return skill, pairs


def _rerank_by_answers(
    stage: AnswerStage, leaderboard: list[dict], build, base_model, base, sft, pref,
    load_reference=None,
) -> tuple[list[dict], dict]:  # fmt: skip
    """The second stage: the screen's best `stage.finalists` re-ranked by checks
    on their greedy answers (`answers.answer_rank`), the rest after them in the
    screen's order. Each finalist's entry gets `answers` (pass rates, kept
    shares with intervals, the first lines of a few answers); returns the
    leaderboard and what the references said."""
    scorer, said = stage.scorer(base_model, base, sft, pref, load_reference)
    references = {
        name: {
            **scorer.references[name],
            "samples": {side: first_lines(a) for side, a in answers.items()},
        }
        for name, answers in said.items()
    }
    LOG.info("paft: merge search answers of the references: %s", references)
    finalists = leaderboard[: stage.finalists]
    for entry in finalists:
        started = time.time()
        _, (terms, answers) = build(_candidate(entry), stage.read)
        entry["answers"] = scorer.metrics(terms) | {
            "samples": {side: first_lines(a) for side, a in answers.items()},
            "seconds": time.time() - started,
        }
        print(
            f"answers {entry['name']}: " + progress_text(entry["answers"]), flush=True
        )
    order = {id(e): i for i, e in enumerate(finalists)}
    ranked = sorted(finalists, key=lambda e: answer_rank(e, order[id(e)]), reverse=True)
    return ranked + leaderboard[stage.finalists :], {
        "measures": scorer.measures,
        "finalists": len(finalists),
        "max_new_tokens": stage.max_new_tokens,
        "references": references,
        "reference_gains": scorer.gains,
        "ranked_by": list(scorer.ranked_sides),
    }


def _log_rows(scorer: Scorer, skill, pairs) -> None:
    """The measures and the rows in the log; a warning where the rows are few."""
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


def _score_references(scorer: Scorer, base, sft, preference, cache=None) -> None:
    """The SFT-only and preference-only adapters scored as the references of the
    balanced objective (the base is scored already): as the candidates are
    built, each adapter applied by PEFT on the resident base (in memory), or,
    where the candidates are merged on disk (`cache`: the search's LoRA merge
    cache), merged into the base as mergekit merges `base+adapter`. (Unmerged
    and merged differ where the adapter does not act as W + delta, e.g. a LoRA
    on a tied lm_head: merging it moves the embeddings too; seen: NLL 6.75
    unmerged, 7.45 merged, for the same SFT adapter.)"""
    for name, adapter in (("sft", sft), ("preference", preference)):
        model = (
            load_model(base, adapter)
            if cache is None
            else load_model(merged_reference(base, adapter, cache))
        )
        terms = scorer.score_terms(model)
        metrics = scorer.add_reference(name, terms)
        LOG.info("paft: merge search reference %s: %s", name, metrics)
    LOG.info("paft: merge search reference base: %s", scorer.references["base"])
    if not scorer.ranked_sides:
        LOG.warning(
            "paft: merge search: neither reference gains over the base beyond "
            "noise: the balanced objective cannot rank, candidates are ranked "
            "by the score alone (see the warnings above)"
        )


def merged_reference(base, adapter, cache) -> Path:
    """The folder of `base` with `adapter` merged, as mergekit reads the
    `base+adapter` reference of a config (PEFT's merge, in the LoRA cache)."""
    from mergekit.common import ModelReference

    reference = model_reference(base_model_reference(base), Path(adapter).resolve())
    merged = ModelReference.model_validate(reference).merged(cache_dir=str(cache))
    return Path(merged.model.path)


def _in_memory(base_model, sft, preference, cache) -> InMemoryMerges | None:
    """The in-memory builder of candidates, or None (merged on disk by mergekit)
    for adapters it does not take, logged."""
    try:
        return InMemoryMerges(base_model, sft, preference, cache)
    except InMemoryUnsupported as err:
        LOG.info("paft: merge search candidates merged on disk by mergekit: %s", err)
        return None


RANDOM_METHODS = ("dare_ties", "dare_linear", "della", "della_linear")


def _rebuild_differs(merges, config: dict, device) -> str:
    """Why the winner mergekit writes from best.yml can differ from the candidate
    the search scored ("" where it cannot): a DARE or DELLA candidate built in
    memory on an accelerator draws its masks from the accelerator's generator,
    mergekit-yaml from the CPU's (`inmemory`)."""
    if merges is None or config["merge_method"] not in RANDOM_METHODS:
        return ""
    if getattr(device, "type", str(device)) == "cpu":
        return ""
    return (
        f"{config['merge_method']} masks drawn on {device} in the search, by "
        "mergekit-yaml's generator for the winner"
    )


def _builder(merges, base, sft, preference, out: Path, cache, chat_template):
    """`build(candidate, score) -> (config, metrics)`: the candidate's config
    written to out/candidates, its merge built (in memory by `merges`, or, when
    None, on disk by mergekit and deleted) and scored by `score(model)`."""

    def build(candidate: Candidate, score) -> tuple[dict, dict]:
        target = out / "candidates" / candidate.name
        config, path = write_candidate_config(
            base, sft, preference, candidate, target, chat_template
        )
        if merges is not None:
            with merges.candidate(config) as model:
                return config, score(model)
        merged = run_merge_config(path, target, Path(cache))
        metrics = score(load_model(merged))
        shutil.rmtree(merged)
        return config, metrics

    return build


CANDIDATES = "candidates.jsonl"
LM_EVAL_SETTINGS = ("limit", "include_path", "num_fewshot", "apply_chat_template")


def _digest(*parts) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(json.dumps(part, sort_keys=True, default=str).encode())
        hasher.update(b"\0")
    return hasher.hexdigest()


def base_digest(folder: Path) -> str:
    """A digest of a base model folder: its top-level files, the small ones'
    contents, the large ones' names and sizes (hashing 15 GB of weights per
    search costs minutes)."""
    hasher = hashlib.sha256()
    for path in sorted(p for p in Path(folder).iterdir() if p.is_file()):
        hasher.update(path.name.encode())
        size = path.stat().st_size
        if size <= 1 << 20:
            hasher.update(path.read_bytes())
        else:
            hasher.update(str(size).encode())
    return hasher.hexdigest()


def rows_digest(skill, pairs) -> str:
    """A digest of the held-out rows as scored: the skill's token spans, the
    pairs' spans (text rows) or token columns (the run's own split)."""
    pair_rows = pairs.spans if hasattr(pairs, "spans") else pairs.token_rows()
    return _digest(skill.spans, pair_rows)


def fingerprint(
    base, sft, preference, skill, pairs, measures: dict, objective: str, lm_eval,
    chat_template, device: str,
) -> str:  # fmt: skip
    """What a candidate's numbers depend on beyond its config: the base, both
    adapters, the held-out rows, the measures and objective, the lm-eval tasks,
    the run's chat template, the merge seed and the device (DARE's masks)."""
    base_path = Path(base_model_reference(base))
    tasks = None
    if lm_eval is not None:
        tasks = [getattr(lm_eval, k, None) for k in LM_EVAL_SETTINGS]
        tasks.append([t.model_dump() for t in lm_eval.tasks])
    return _digest(
        base_digest(base_path) if base_path.is_dir() else str(base),
        adapter_digest(Path(sft)),
        adapter_digest(Path(preference)),
        rows_digest(skill, pairs),
        measures, objective, tasks, chat_template, MERGE_SEED, device,
    )  # fmt: skip


class ScoredCandidates:
    """`candidates.jsonl`: one line per candidate as it is scored (its name and
    fields, its mergekit config, its metrics, the fingerprint of what it was
    scored on). Lines of an earlier try with the same fingerprint are taken
    back; a file from other inputs is moved aside (`candidates-<its
    fingerprint>.jsonl`), never appended to; a line cut by a kill is skipped."""

    def __init__(self, path: Path, stamp: str):
        self.path, self.stamp = Path(path), stamp
        self.entries: dict[str, dict] = {}
        other, cut = None, False
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    cut = True  # the last line of a killed search
                    continue
                if entry.get("fingerprint") == stamp:
                    self.entries[entry["name"]] = entry
                else:
                    other = entry.get("fingerprint", "unknown")
        if other is not None:
            aside = self.path.with_name(f"candidates-{other[:12]}.jsonl")
            LOG.warning(
                "paft: merge search: %s holds candidates scored on other inputs "
                "(adapters, held-out rows, measures or base); moved to %s, not "
                "reused", self.path, aside,
            )  # fmt: skip
            self.path.replace(aside)
        if other is not None or cut:  # the lines taken back, whole, and no other
            self.path.write_text(
                "".join(json.dumps(e) + "\n" for e in self.entries.values())
            )
        if self.entries:
            LOG.info(
                "paft: merge search takes %d candidates scored by an earlier try "
                "on the same inputs from %s", len(self.entries), self.path,
            )  # fmt: skip

    def get(self, name: str) -> dict | None:
        return self.entries.get(name)

    def add(self, candidate: Candidate, config: dict, metrics: dict) -> None:
        entry = {
            "name": candidate.name, **asdict(candidate), "config": config,
            "metrics": metrics, "fingerprint": self.stamp,
        }  # fmt: skip
        self.entries[candidate.name] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(json.dumps(entry) + "\n")
            handle.flush()


def explore(
    measure,
    methods,
    budget: int,
    objective: str = "balanced",
    profiles: tuple[str, ...] = ("flat",),
) -> list[dict]:
    """The search strategy (module docstring) over `measure(candidate)`, which
    returns a candidate's metrics (with `balanced_metrics` for the balanced
    objective); at most `budget` candidates, each measured once; the coordinate
    search also tries each of `profiles` (`candidates.PROFILES`: per-layer
    weights). Returns every entry ({"name", the candidate's fields,
    "metrics"}), best first."""
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

    fields = [*GRID, *(["profile"] if len(profiles) > 1 else [])]

    def coordinate(start: dict) -> None:
        improved = True
        while improved and len(entries) < budget:
            improved = False
            current = _candidate(start)
            for field in fields:
                if not current.varies(field):
                    continue
                for neighbour in _neighbours(current, field, profiles):
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
