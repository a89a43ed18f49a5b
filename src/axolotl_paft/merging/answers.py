"""What the models say: the merge search's second stage, checks on greedy answers.

The screen (`scoring`: answer NLL, implicit-reward margin) ranks every candidate
by teacher-forced numbers, which do not see what a model says: on the real
model, sequential SFT -> preference and the searched merge tie by NLL and margin
while their greedy answers differ completely (docs/evidence.md). So the
screen's best `finalists` and the three references (base, SFT-only,
preference-only) answer the held-out prompts greedily, in batches on the
model's device, each answer stopped at the chat template's end-of-turn
token(s); per side, the share of answers that pass every check the user
declared (`CHECK_KINDS`, or `module:function`) is that side's measure, and
`scoring.Scorer` turns it into kept shares with the screen's paired-bootstrap
95% intervals. The finalists are re-ranked by the smaller kept share.

A check is one `{kind: value}` entry; a side's checks all pass or the answer
fails. Checks are parsed (regexes compiled, functions imported) when the config
is read, so a typo fails before any model loads.
"""

from __future__ import annotations

import importlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from axolotl_paft.merging.scoring import (
    MEASURES,
    SIDES,
    Scorer,
    device_of,
    end_of_turn_ids,
    load_model,
)

# one check: (answer, prompt) -> whether the answer passes
Check = Callable[[str, str], bool]
# the measure of each side (`scoring.MEASURES`: computed from answers)
ANSWER_MEASURES = {"skill": "skill_checks", "preference": "preference_checks"}
DEFAULT_FINALISTS = 6
DEFAULT_ANSWER_TOKENS = 128
SAMPLES = 2  # answers per side shown for each finalist in the leaderboard
GENERATE_BATCH = 16  # prompts per generate call


@dataclass(frozen=True)
class CheckKind:
    """One kind of declared check: `parse(value)` returns the check or raises
    ValueError saying what is wrong with `value`."""

    parse: Callable[[object], Check]
    description: str


def _text(value: object, kind: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{kind} takes a non-empty string, not {value!r}")
    return value


def _starts_with(value: object) -> Check:
    prefix = _text(value, "starts_with")
    return lambda answer, prompt: answer.lstrip().startswith(prefix)


def _pattern(value: object, kind: str) -> re.Pattern:
    try:
        return re.compile(_text(value, kind))
    except re.error as err:
        raise ValueError(f"{kind} {value!r} is no regex: {err}") from err


def _regex(value: object) -> Check:
    pattern = _pattern(value, "regex")
    return lambda answer, prompt: pattern.search(answer) is not None


def _not_regex(value: object) -> Check:
    pattern = _pattern(value, "not_regex")
    return lambda answer, prompt: pattern.search(answer) is None


def _json_objects(answer: str):
    """Every JSON object that starts at a `{` of `answer`."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", answer):
        try:
            found, _ = decoder.raw_decode(answer, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(found, dict):
            yield found


def _json_keys(value: object) -> Check:
    keys = [value] if isinstance(value, str) else value
    if not (isinstance(keys, list) and keys and all(isinstance(k, str) for k in keys)):
        raise ValueError(f"json_keys takes a key or a list of keys, not {value!r}")
    return lambda answer, prompt: any(
        set(keys) <= found.keys() for found in _json_objects(answer)
    )


def _count(value: object, kind: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{kind} takes a whole number >= 0, not {value!r}")
    return value


def _max_chars(value: object) -> Check:
    most = _count(value, "max_chars")
    return lambda answer, prompt: len(answer) <= most


def _min_chars(value: object) -> Check:
    least = _count(value, "min_chars")
    return lambda answer, prompt: len(answer) >= least


def _function(value: object) -> Check:
    """`module:function`, imported as Axolotl imports a custom prompt strategy
    (the module on the Python path); called as `function(answer, prompt)`."""
    module, sep, name = _text(value, "function").partition(":")
    if not (sep and module and name):
        raise ValueError(f"function takes 'module:function', not {value!r}")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"function {value!r} cannot be imported: {err}") from err
    if not callable(found):
        raise ValueError(f"function {value!r} is not callable")
    return lambda answer, prompt: bool(found(answer, prompt))


CHECK_KINDS = {
    "starts_with": CheckKind(
        parse=_starts_with,
        description="the answer, leading white space stripped, starts with it",
    ),
    "regex": CheckKind(
        parse=_regex, description="a Python regex found in the answer (re.search)"
    ),
    "not_regex": CheckKind(
        parse=_not_regex, description="a Python regex not found in the answer"
    ),
    "json_keys": CheckKind(
        parse=_json_keys,
        description="the answer holds a JSON object with these keys (one or a list)",
    ),
    "max_chars": CheckKind(
        parse=_max_chars, description="the answer is at most this many characters"
    ),
    "min_chars": CheckKind(
        parse=_min_chars, description="the answer is at least this many characters"
    ),
    "function": CheckKind(
        parse=_function,
        description="`module:function(answer, prompt)` of your own returns true",
    ),
}


def parse_checks(declared: dict) -> dict[str, list[Check]]:
    """Side -> its checks, from `{skill: [{kind: value}, ...], preference: [...]}`;
    raises ValueError naming the side, the entry and what is wrong."""
    if not isinstance(declared, dict) or not declared:
        raise ValueError(f"declare checks per side ({', '.join(SIDES)}): {declared!r}")
    if set(declared) != set(SIDES):
        raise ValueError(
            f"declare checks for both sides, {list(SIDES)}, not {sorted(declared)}: "
            "the objective is the smaller of the two kept shares"
        )
    parsed = {}
    for side, entries in declared.items():
        if not isinstance(entries, list) or not entries:
            raise ValueError(f"{side}: a list of checks, not {entries!r}")
        parsed[side] = [_parse_entry(side, i, e) for i, e in enumerate(entries)]
    return parsed


def _parse_entry(side: str, number: int, entry: object) -> Check:
    if not (isinstance(entry, dict) and len(entry) == 1):
        raise ValueError(
            f"{side} check {number}: one {{kind: value}} entry, not {entry!r}"
        )
    ((kind, value),) = entry.items()
    if kind not in CHECK_KINDS:
        raise ValueError(
            f"{side} check {number}: unknown kind {kind!r}; kinds: {list(CHECK_KINDS)}"
        )
    try:
        return CHECK_KINDS[kind].parse(value)
    except ValueError as err:
        raise ValueError(f"{side} check {number}: {err}") from err


@torch.no_grad()
def greedy_answers(
    model,
    tokenizer,
    prompts: list[list[int]],
    max_new_tokens: int,
    stop: list[int],
    batch_size: int = GENERATE_BATCH,
) -> list[str]:
    """Each prompt's (token ids) greedy answer, stopped at a `stop` token or after
    `max_new_tokens`, decoded without special tokens. Left-padded batches of
    prompts of similar length, on the model's device."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
    device, answers = device_of(model), [""] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    for first in range(0, len(order), batch_size):
        batch = order[first : first + batch_size]
        width = max(len(prompts[i]) for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(batch):
            ids[row, width - len(prompts[i]) :] = torch.as_tensor(prompts[i])
            mask[row, width - len(prompts[i]) :] = 1
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=stop,
            pad_token_id=pad,
        )
        for row, i in enumerate(batch):
            text = tokenizer.decode(out[row, width:], skip_special_tokens=True)
            answers[i] = text.strip()
    return answers


def stop_tokens(tokenizer, skill) -> list[int]:
    """The template's end-of-turn token(s): the special token that ends each
    held-out answer as the run rendered it (ChatML's `<|im_end|>`, Llama 3's
    `<|eot_id|>`, Gemma's `<end_of_turn>`), and the tokenizer's eos."""
    special = end_of_turn_ids(tokenizer)
    ends = {ids[end - 1] for ids, _, end in skill.spans if ids[end - 1] in special}
    if tokenizer.eos_token_id is not None:
        ends.add(tokenizer.eos_token_id)
    return sorted(ends)


def held_out_prompts(skill, pairs) -> dict[str, list[list[int]]]:
    """Each side's held-out prompts as token ids, as the rows were rendered (the
    run's template): the SFT rows' prompts, the pairs' prompts."""
    if hasattr(pairs, "spans"):  # `scoring.TextPairs`: chosen, rejected per row
        pair_prompts = [ids[:start] for ids, start, _ in pairs.spans[::2]]
    else:  # `scoring.TokenizedPairs`: the run's tokenized rows
        pair_prompts = [list(row["prompt_ids"]) for row in pairs.rows]
    return {
        "skill": [ids[:start] for ids, start, _ in skill.spans],
        "preference": pair_prompts,
    }


@dataclass
class AnswerStage:
    """The second stage: `checks` per side (`parse_checks`), how many of the
    screen's best are re-ranked, and how long an answer may be."""

    checks: dict[str, list[Check]]
    finalists: int = DEFAULT_FINALISTS
    max_new_tokens: int = DEFAULT_ANSWER_TOKENS
    prompts: dict[str, list[list[int]]] = field(default_factory=dict)
    stop: list[int] = field(default_factory=list)
    tokenizer: object = None

    def on_rows(self, tokenizer, skill, pairs) -> AnswerStage:
        """Bind the held-out prompts, their template's stop tokens and the
        tokenizer that decodes answers (the run's)."""
        self.tokenizer = tokenizer
        self.prompts = held_out_prompts(skill, pairs)
        self.stop = stop_tokens(tokenizer, skill)
        return self

    def read(self, model) -> tuple[dict, dict[str, list[str]]]:
        """`model`'s answers per side and their per-row terms (pass 1 / fail 0)
        for `scoring.Scorer`."""
        terms, answers = {}, {}
        for side, prompts in self.prompts.items():
            said = greedy_answers(
                model, self.tokenizer, prompts, self.max_new_tokens, self.stop
            )
            texts = self.tokenizer.batch_decode(prompts, skip_special_tokens=True)
            checks = self.checks[side]
            passed = torch.tensor(
                [all(c(a, p) for c in checks) for a, p in zip(said, texts, strict=True)]
            )
            measure = ANSWER_MEASURES[side]
            terms[measure] = MEASURES[measure].terms(passed)
            answers[side] = said
        return terms, answers

    def scorer(
        self, base_model, base, sft, preference, load_reference=None
    ) -> tuple[Scorer, dict]:
        """A `scoring.Scorer` of pass rates with the three references scored,
        and each reference's answers. `load_reference(adapter)`: the reference
        model built as the candidates are (default: the adapter on the base)."""
        terms, answers = self.read(base_model)
        scorer = Scorer(ANSWER_MEASURES, terms)
        said = {"base": answers}
        for name, adapter in (("sft", sft), ("preference", preference)):
            model = (
                load_model(base, adapter)
                if load_reference is None
                else load_reference(adapter)
            )
            terms, said[name] = self.read(model)
            scorer.add_reference(name, terms)
        return scorer, said


def answer_rank(entry: dict, position: int) -> tuple:
    """A finalist's place: the smaller kept share of its answers (capped at 1),
    both summed, then its place in the screen; a finalist whose answers cannot
    rank (nan) goes below every one that can, and never wins."""
    metrics = entry["answers"]
    balanced = metrics.get("balanced", math.nan)
    if math.isnan(balanced):
        return (-math.inf, -math.inf, -position)
    shares = [metrics.get(f"{s}_kept", math.nan) for s in SIDES]
    total = sum(0.0 if math.isnan(s) else s for s in shares)
    return (balanced, total, -position)


def first_lines(answers: list[str], samples: int = SAMPLES) -> list[str]:
    """The first line of the first `samples` answers, as a person skims them."""
    return [(a.splitlines() or [""])[0][:120] for a in answers[:samples]]
