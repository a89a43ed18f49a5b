"""Scoring on held-out rows: the measures, the rows, and the `Scorer` that ranks
models against the references.

`MEASURES` is the registry of measures (one entry each: side, metric key,
direction, per-row terms), all read from one batched teacher-forced pass per
side (`span_stats`, `row_terms`); a new measure is one entry. Held-out rows are
text rendered with the run's chat template (`TextSkill`, `TextPairs`) or the
run's own splits as Axolotl tokenized them (`TokenizedSkill`,
`TokenizedPairs`). `Scorer` scores a model on them and, once the references
(base, SFT-only, preference-only) are in, the share of each reference's gain a
model keeps, with paired-bootstrap 95% intervals: every caller (the search, the
export, the lab, the benchmarks) scores through it.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

IGNORE_INDEX = -100  # Axolotl's and transformers' label of an unscored token


def load_model(base_model: str | Path, adapter: str | Path | None = None):
    """The base model in float32, with `adapter` applied (not merged), on the
    GPU when there is one (scoring runs where the model is), else on CPU (with
    torch's threads: all cores unless OMP_NUM_THREADS says otherwise)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    return model.to("cuda" if torch.cuda.is_available() else "cpu").eval()


def assistant_loss(model, tokenizer, rows: list[dict]) -> float:
    """Mean NLL per assistant token of chat rows (`messages`, last turn answered):
    the `nll` measure."""
    return value("nll", MEASURES["nll"].terms(TextSkill(tokenizer, rows).stats(model)))


def pair_logps(model, tokenizer, rows: list[dict]) -> torch.Tensor:
    """`[n, 2]` log-probs of each row's chosen and rejected completion (`TextPairs`)."""
    return TextPairs(tokenizer, rows).logps(model)


def margins_from(policy: torch.Tensor, reference: torch.Tensor | None) -> torch.Tensor:
    """Implicit reward margins (DPO's, beta = 1) from `pair_logps` results:
    (log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected)),
    or log pi(chosen) - log pi(rejected) without a reference."""
    ratios = policy if reference is None else policy - reference
    return ratios[:, 0] - ratios[:, 1]


def preference_margins(policy, reference, tokenizer, rows: list[dict]) -> torch.Tensor:
    """`margins_from` for two models (`reference` may be None)."""
    ref = None if reference is None else pair_logps(reference, tokenizer, rows)
    return margins_from(pair_logps(policy, tokenizer, rows), ref)


def read_jsonl(path: Path, limit: int | None = None) -> list[dict]:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line]
    return rows[:limit] if limit else rows


# Chat roles as Axolotl's chat_template loader maps them by default
# (`ChatTemplatePrompter.roles`): the scorer renders roles as written, so a held-
# out file must use the mapped names.
AXOLOTL_ROLES = {"human": "user", "gpt": "assistant"}
CHAT_ROLES = ("system", "user", "assistant", "tool")


def check_held_out_file(path: Path, side: str) -> int:
    """Refuse a held-out file the scorer would misread, naming the file, the line
    and what to write: no file, no rows, a line that is not a JSON object, and
    rows of the wrong shape for `side` (`skill`: `messages` of `role`/`content`
    turns ending in an assistant answer, as `TextSkill` reads them; `preference`:
    `question` or `messages`, `chosen` and `rejected`, as `TextPairs` reads
    them). Shapes Axolotl's chat_template loader maps before rendering (ShareGPT
    `from`/`value` keys, `human`/`gpt` roles, a `system` field beside the turns,
    content parts) are refused with the mapped spelling: the scorer renders rows
    as written. A run's own split as `outputs.write_held_out` wrote it
    (`input_ids`/`labels`; `prompt_ids`/`chosen_ids`/`rejected_ids`, what the
    printed rerun command names) is read as tokenized (`read_rows`). Returns
    the number of rows."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no such JSONL file {str(path)!r}")
    rows = 0
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not JSON ({err})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{where}: not a JSON object")
        problem = _skill_row_problem(row) if side == "skill" else _pair_problem(row)
        if problem:
            raise ValueError(f"{where}: {problem}")
        rows += 1
    if not rows:
        raise ValueError(f"{path} is empty: no rows to score")
    return rows


def _turns_problem(turns) -> str | None:
    if not isinstance(turns, list) or not turns:
        return "`messages` must be a non-empty list of turns"
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            return f"message {i} is not an object"
        if {"from", "value"} & turn.keys() and "content" not in turn:
            return (
                f"message {i} has ShareGPT keys {sorted(turn)}: write `role` and "
                "`content` (Axolotl maps `from`/`value` only through a dataset "
                "entry's message_property_mappings)"
            )
        role, content = turn.get("role"), turn.get("content")
        if role in AXOLOTL_ROLES:
            return (
                f"message {i} has role {role!r}, which Axolotl's chat_template "
                f"loader maps to {AXOLOTL_ROLES[role]!r}: write "
                f"{AXOLOTL_ROLES[role]!r} (the scorer renders roles as written)"
            )
        if role not in CHAT_ROLES:
            return f"message {i} has role {role!r}; roles: {list(CHAT_ROLES)}"
        if not isinstance(content, str):
            return f"message {i}: `content` must be a string, not {content!r:.60}"
    return None


def _tokenized_problem(row: dict, columns: tuple[str, ...]) -> str | None:
    """A run's own tokenized row (`read_rows`): lists of token ids."""
    for key in columns:
        ids = row[key]
        if not (isinstance(ids, list) and ids and all(isinstance(i, int) for i in ids)):
            return f"`{key}` must be a non-empty list of token ids"
    return None


def _skill_row_problem(row: dict) -> str | None:
    if {"input_ids", "labels"} <= row.keys():
        problem = _tokenized_problem(row, ("input_ids", "labels"))
        if problem or len(row["labels"]) > len(row["input_ids"]):
            return problem or "`labels` is longer than `input_ids`"
        if all(label == IGNORE_INDEX for label in row["labels"]):
            return "no token of `labels` is scored: the row has no answer"
        return None
    if "messages" not in row:
        hint = " (`conversations` is ShareGPT's name)" if "conversations" in row else ""
        return f"a held-out SFT row needs `messages`{hint}; it has {sorted(row)}"
    if "system" in row:
        return (
            "a `system` field beside `messages` is rendered by Axolotl as a first "
            "system turn; write it into `messages` as {role: system, content: ...}"
        )
    turns = row["messages"]
    problem = _turns_problem(turns)
    if problem:
        return problem
    if turns[-1]["role"] != "assistant" or len(turns) < 2:
        return (
            "the last message must be the assistant's answer to the turns before "
            f"it (the skill scored), not a {turns[-1]['role']!r} turn"
            + (" alone" if len(turns) < 2 else "")
        )
    if not turns[-1]["content"].strip():
        return "the assistant's answer (the last message) is empty"
    return None


def _pair_problem(row: dict) -> str | None:
    tokenized = ("prompt_ids", "chosen_ids", "rejected_ids")
    if set(tokenized) <= row.keys():
        return _tokenized_problem(row, tokenized)
    missing = [k for k in ("chosen", "rejected") if k not in row]
    if missing or not row.keys() & {"messages", "question"}:
        return (
            f"a held-out pair needs `question` (or `messages`), `chosen` and "
            f"`rejected`, as chatml.intel or chat_template.default rows; it has "
            f"{sorted(row)}"
        )
    if "messages" in row:
        problem = _turns_problem(row["messages"])
        if problem:
            return problem
    elif not isinstance(row["question"], str):
        return "`question` must be a string"
    if not isinstance(row.get("system", ""), str):
        return "`system` must be a string"
    for key in ("chosen", "rejected"):
        answer = row[key]
        if isinstance(answer, dict):
            if answer.get("role", "assistant") != "assistant":
                return f"`{key}` must be an assistant message"
            answer = answer.get("content")
        if not isinstance(answer, str):
            return (
                f"`{key}` must be a string or one assistant message "
                "({role: assistant, content: ...}), not a list of turns"
            )
    return None


def load_candidate(base: str | Path, path: str | Path):
    """An adapter folder on `base`, or a full model folder."""
    adapter = Path(path) / "adapter_config.json"
    return load_model(base, path) if adapter.exists() else load_model(path)


# Padded tokens one scoring batch may hold.
SCORE_BATCH_TOKENS = 4096
# Elements of full-vocabulary logits one scoring batch may hold (0.5 GB in fp32):
# its tokens follow the model's vocabulary, 4096 at Mistral's 32k, 2730 at
# SmolLM2's 49k, 512 at Gemma-3's 262k (a longer row is scored alone).
SCORE_BATCH_LOGITS = 4096 * 32768
# Elements of logits the loss and argmax take at a time, in fp32 (64 MB).
SCORE_CHUNK_LOGITS = 1 << 24


def device_of(model) -> torch.device:
    return next(model.parameters()).device


def vocabulary_of(model) -> int:
    """The width of `model`'s logits: its output embedding's rows."""
    head = model.get_output_embeddings()
    if head is not None and getattr(head, "weight", None) is not None:
        return head.weight.shape[0]
    return model.config.get_text_config().vocab_size


def _token_stats(
    logits: torch.Tensor, targets: torch.Tensor, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of `logits` `[B, L, V]` (any dtype) and `targets` `[B, L]`: the
    summed fp32 cross-entropy of the scored targets and how many are the argmax
    of their position, computed on at most `chunk` logits at a time (whole rows
    when one fits, else pieces of one row), never on a fp32 copy of them all."""
    rows, length, vocab = logits.shape
    nll = torch.zeros(rows, dtype=torch.float64)
    correct = torch.zeros(rows, dtype=torch.float64)
    per_row = max(1, chunk // max(1, length * vocab))
    step = max(1, length if length * vocab <= chunk else chunk // vocab)
    for first in range(0, rows, per_row):
        last = min(rows, first + per_row)
        for start in range(0, length, step):
            piece = logits[first:last, start : start + step].float()
            wanted = targets[first:last, start : start + step]
            lost = torch.nn.functional.cross_entropy(
                piece.reshape(-1, vocab),  # flat: 4x faster than (N, C, L)
                wanted.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="none",
            ).view(wanted.shape)
            hit = (piece.argmax(-1) == wanted) & (wanted != IGNORE_INDEX)
            nll[first:last] += lost.sum(1).double().cpu()
            correct[first:last] += hit.sum(1).double().cpu()
            del piece, lost
    return nll, correct


@torch.no_grad()
def span_stats(
    model,
    spans: list[tuple[list[int], int, int]],
    batch_tokens: int = SCORE_BATCH_TOKENS,
    batch_logits: int = SCORE_BATCH_LOGITS,
    chunk_logits: int = SCORE_CHUNK_LOGITS,
) -> dict[str, torch.Tensor]:
    """Teacher-forced statistics of `ids[start:end]` per `(ids, start, end)`:
    `nll` (summed over the span), `tokens`, `correct` (tokens that are the argmax
    of their position) and `exact` (all of them are: greedy decoding from
    `ids[:start]` emits exactly the span), each `[len(spans)]` on CPU.

    Rows are sorted by length and batched up to `batch_tokens` padded tokens
    and `batch_logits` elements of logits (tokens x the model's vocabulary)
    (right padding, attention-masked, so each row scores as it would alone),
    on the model's device: one forward pass per batch instead of per row. The
    loss and argmax take `chunk_logits` of the batch's logits at a time; the
    logits the model returns are the one batch-sized tensor held."""
    n = len(spans)
    stats = {
        k: torch.zeros(n, dtype=torch.float64) for k in ("nll", "tokens", "correct")
    }
    order = sorted(range(n), key=lambda i: spans[i][2])
    device = device_of(model)
    tokens_cap = min(batch_tokens, batch_logits // vocabulary_of(model))
    while order:
        batch = [order.pop(0)]
        while order and (len(batch) + 1) * spans[order[0]][2] <= tokens_cap:
            batch.append(order.pop(0))
        width = max(spans[i][2] for i in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, IGNORE_INDEX)
        for row, i in enumerate(batch):
            tokens, start, end = spans[i]
            ids[row, :end] = torch.as_tensor(tokens[:end])
            mask[row, :end] = 1
            labels[row, start:end] = ids[row, start:end]
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        targets = labels[:, 1:].to(device)
        nll, correct = _token_stats(logits[:, :-1], targets, chunk_logits)
        del logits
        index = torch.tensor(batch)
        stats["nll"][index] = nll
        stats["tokens"][index] = (targets != IGNORE_INDEX).sum(1).double().cpu()
        stats["correct"][index] = correct
    stats["exact"] = (stats["correct"] == stats["tokens"]).double()
    return stats


def end_of_turn_ids(tokenizer) -> set[int]:
    """The tokenizer's special tokens: the chat template's end-of-turn token is
    one (ChatML's `<|im_end|>`, Llama 3's `<|eot_id|>`, `</s>`)."""
    added = getattr(tokenizer, "added_tokens_decoder", {})
    return set(tokenizer.all_special_ids) | {i for i, t in added.items() if t.special}


def render_answer(
    tokenizer, turns: list[dict], answer: str
) -> tuple[list[int], int, int]:
    """`(ids, start, end)`: `turns` and the assistant `answer` as the tokenizer's
    chat template renders them, the span being the answer and the template's
    end-of-turn token (the first special token after the answer; what follows
    it, e.g. ChatML's newline, is not part of the turn), tokenized after the
    generation prompt's tokens as a model generating it would. With the run's
    tokenizer these are the tokens its `chat_template` rows were trained on: a
    model trained with `chat_template: llama3` is scored on `<|eot_id|>`, not
    on the base's `eos_token`. Where the template renders the conversation
    otherwise than prompt + answer (the prompt is not a prefix), the answer
    is ended by `eos_token`."""
    prompt = tokenizer.apply_chat_template(
        turns, add_generation_prompt=True, tokenize=False
    )
    full = tokenizer.apply_chat_template(
        [*turns, {"role": "assistant", "content": answer}], tokenize=False
    )
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    start = len(ids)
    if not full.startswith(prompt):
        text = answer.strip() + tokenizer.eos_token
        ids += tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids, start, len(ids)
    ids += tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
    ends = end_of_turn_ids(tokenizer)
    end = next((i + 1 for i in range(start, len(ids)) if ids[i] in ends), len(ids))
    return ids[:end], start, end


@dataclass(frozen=True)
class Measure:
    """One way to score a side of the search on held-out rows.

    A measure's value on a set of rows is `sum(numerator) / sum(denominator)` of
    its per-row terms (`terms`, from `span_stats` for the skill, from the
    implicit-reward margins against the base for the preference), so that every
    measure is bootstrapped the same way (`Scorer.metrics`) and a mean per
    token weighs long answers as the tokens they hold."""

    side: str  # "skill" or "preference"
    metric: str  # its key in metrics dicts
    higher_is_better: bool
    terms: Callable[[dict | torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    description: str
    # read from greedy answers (`answers`), not from the teacher-forced pass
    generated: bool = False


def _per_row(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    values = values.double()
    return values, torch.ones_like(values)


MEASURES = {
    "exact_match": Measure(
        "skill", "sft_exact_match", True, lambda s: _per_row(s["exact"]),
        "share of rows whose greedy answer is the reference answer and its "
        "end-of-turn token, token for token (one teacher-forced pass)",
    ),
    "token_accuracy": Measure(
        "skill", "sft_token_accuracy", True, lambda s: (s["correct"], s["tokens"]),
        "share of answer tokens (and end-of-turn) that are the argmax of their "
        "position, teacher-forced",
    ),
    "nll": Measure(
        "skill", "sft_loss", False, lambda s: (s["nll"], s["tokens"]),
        "mean negative log-likelihood per answer token (and end-of-turn), "
        "teacher-forced: lower is better",
    ),
    "margin": Measure(
        "preference", "preference_margin", True, _per_row,
        "mean implicit-reward margin against the base, (log pi/ref(chosen) - "
        "log pi/ref(rejected)) in nats: 0 for the base, no floor",
    ),
    "accuracy": Measure(
        "preference", "preference_accuracy", True, lambda m: _per_row(m > 0),
        "share of pairs whose implicit-reward margin against the base is > 0 "
        "(ties are misses: the base scores 0)",
    ),
    "skill_checks": Measure(
        "skill", "skill_pass_rate", True, _per_row,
        "share of held-out SFT prompts whose greedy answer passes every skill "
        "check (paft_merge_search_answer_checks)", generated=True,
    ),
    "preference_checks": Measure(
        "preference", "preference_pass_rate", True, _per_row,
        "share of held-out preference prompts whose greedy answer passes every "
        "preference check (paft_merge_search_answer_checks)", generated=True,
    ),
}  # fmt: skip
# the screen's measures, one of each side chosen by paft_merge_search_*_measure
TEACHER_FORCED = {n: m for n, m in MEASURES.items() if not m.generated}
SKILL_MEASURES = tuple(n for n, m in TEACHER_FORCED.items() if m.side == "skill")
PREFERENCE_MEASURES = tuple(
    n for n, m in TEACHER_FORCED.items() if m.side == "preference"
)
# `auto` takes exact match where the held-out answers are short (median answer
# with its end-of-turn token at most SHORT_ANSWER_TOKENS tokens: a sentence, a
# number, a label), FREE_FORM_MEASURE otherwise: greedy reproduction of a long
# answer is 0 for every model (benchmarks/evidence/results_measure_choice.md).
SHORT_ANSWER_TOKENS = 16
FREE_FORM_MEASURE = "nll"
DEFAULT_PREFERENCE_MEASURE = "margin"


def choose_skill_measure(skill, name: str = "auto") -> str:
    """`name`, or for `auto` the measure the held-out answers' lengths call for."""
    if name != "auto":
        if name not in SKILL_MEASURES:
            raise ValueError(f"skill measure {name!r} not in {SKILL_MEASURES}")
        return name
    lengths = sorted(end - start for _, start, end in skill.spans)
    median = lengths[len(lengths) // 2]
    return "exact_match" if median <= SHORT_ANSWER_TOKENS else FREE_FORM_MEASURE


def value(measure: str, terms: tuple[torch.Tensor, torch.Tensor]) -> float:
    numerator, denominator = terms
    return float(numerator.sum() / denominator.sum())


class TextSkill:
    """Held-out chat rows (JSONL, `messages`): the skill is the last answer and
    its end-of-turn token, rendered with `tokenizer`'s chat template
    (`render_answer`): give it the run's tokenizer, as Axolotl loaded it."""

    def __init__(self, tokenizer, rows: list[dict]):
        self.tokenizer, self.rows = tokenizer, rows
        self.spans = [
            render_answer(tokenizer, r["messages"][:-1], r["messages"][-1]["content"])
            for r in rows
        ]

    def stats(self, model) -> dict[str, torch.Tensor]:
        return span_stats(model, self.spans)


class TokenizedSkill(TextSkill):
    """A run's own SFT eval rows as Axolotl tokenized them (`input_ids`,
    `labels`): the skill is the last labelled span (the last answer and its
    end-of-turn token), so any dataset type and template Axolotl reads works.

    With `train_on_inputs: true` every token is labelled, the prompt too: the
    last labelled span is then the whole conversation, not the answer. Where
    the span holds the template's assistant header (`tokenizer`: the run's),
    the answer starts after its last occurrence and ends at the first
    end-of-turn token after it (`render_answer`'s span); without a tokenizer
    such rows are refused."""

    def __init__(self, rows, tokenizer=None):
        self.rows = rows
        self.spans = []
        header = None if tokenizer is None else assistant_header(tokenizer)
        ends = set() if tokenizer is None else end_of_turn_ids(tokenizer)
        for number, row in enumerate(rows, 1):
            ids = list(row["input_ids"])
            start, end = last_labelled_span(torch.as_tensor(row["labels"]))
            if header is not None:
                start, end = _answer_in(ids, start, end, header, ends)
            if start <= 1:
                raise ValueError(
                    f"held-out SFT row {number}: every token is labelled "
                    "(train_on_inputs: true), so its last labelled span is the "
                    "whole conversation, not the answer, and the run's tokenizer "
                    "(TokenizedSkill(rows, tokenizer)) finds no assistant header "
                    "in it: name held-out rows in paft_merge_search_sft_data"
                )
            self.spans.append((ids, start, end))

    def token_rows(self) -> list[dict]:
        """The rows as scored, for a JSONL file `TokenizedSkill` reads back to
        the same spans: `input_ids`, and `labels` on the answer's span only."""
        return [
            {"input_ids": ids, "labels": [IGNORE_INDEX] * start + ids[start:end]}
            for ids, start, end in self.spans
        ]


def assistant_header(tokenizer) -> list[list[int]]:
    """The token ids the chat template puts before an assistant answer (its
    generation prompt, e.g. ChatML's `<|im_start|>assistant\n`), and the same
    without its last token (which may merge with the answer's first)."""
    turns = [{"role": "user", "content": "x"}]
    without = tokenizer.apply_chat_template(turns, tokenize=False)
    prompt = tokenizer.apply_chat_template(
        turns, add_generation_prompt=True, tokenize=False
    )
    if not prompt.startswith(without) or prompt == without:
        return []
    ids = tokenizer(prompt[len(without) :], add_special_tokens=False)["input_ids"]
    return [ids, ids[:-1]] if len(ids) > 1 else [ids]


def _answer_in(
    ids: list[int], start: int, end: int, headers: list[list[int]], ends: set[int]
) -> tuple[int, int]:
    """`[start, end)` narrowed to the last answer where the labelled span holds
    an assistant header (`train_on_inputs`): after the header's last
    occurrence, to the first end-of-turn token after it (included)."""
    for header in headers:
        width = len(header)
        found = [
            i for i in range(start, end - width + 1) if ids[i : i + width] == header
        ]
        if found:
            answer = found[-1] + width
            stop = next((i + 1 for i in range(answer, end) if ids[i] in ends), end)
            return answer, stop
    return start, end


def prompt_turns(row: dict, number: int) -> list[dict]:
    """The prompt of held-out pair `row` (row `number` of its file) as chat turns."""
    prompt = row.keys() & {"messages", "question"}
    if not (prompt and {"chosen", "rejected"} <= row.keys()):
        raise ValueError(
            f"held-out preference row {number} has keys {sorted(row)}: a pair needs "
            "`question` (or `messages`), `chosen` and `rejected`"
        )
    if "messages" in row:
        return list(row["messages"])
    system = row.get("system")
    turns = [{"role": "system", "content": system}] if system else []
    return [*turns, {"role": "user", "content": row["question"]}]


class TextPairs:
    """Held-out preference rows (JSONL), each completion rendered as the
    assistant's answer with `tokenizer`'s chat template (`render_answer`). A row
    is either `chatml.intel`'s shape (`question`, optionally `system`, `chosen`
    and `rejected` strings) or `chat_template.default`'s (`messages`, the prompt
    turns, and `chosen` / `rejected` assistant messages or strings), so a held-out
    file can be a split of the run's own preference data in either format."""

    def __init__(self, tokenizer, rows: list[dict]):
        self.tokenizer, self.rows = tokenizer, rows
        self.spans = []
        for number, row in enumerate(rows, 1):
            turns = prompt_turns(row, number)
            for key in ("chosen", "rejected"):
                answer = row[key]
                answer = answer["content"] if isinstance(answer, dict) else answer
                self.spans.append(render_answer(tokenizer, turns, answer))

    def logps(self, model) -> torch.Tensor:
        """`[n, 2]` summed log-probs of each pair's chosen and rejected answer."""
        return -span_stats(model, self.spans)["nll"].float().view(-1, 2)


class TokenizedPairs:
    """A run's own held-out preference rows as its RL loaders tokenized them,
    batched by the run's preference collator."""

    def __init__(self, rows, collator, batch_size: int = 8):
        self.rows, self.collator, self.batch_size = rows, collator, batch_size

    def token_rows(self) -> list[dict]:
        """The rows as the collator scores them (prompt and completions cut to
        its `max_length`, keep start), for a JSONL file read back with a
        collator that cuts nothing (`read_rows`) to the same scores."""
        most = getattr(self.collator, "max_length", None)
        rows = []
        for i in range(len(self.rows)):
            row = self.rows[i]
            prompt = list(row["prompt_ids"])
            room = None if most is None else max(0, most - len(prompt))
            rows.append(
                {
                    "prompt_ids": prompt if most is None else prompt[:most],
                    "chosen_ids": list(row["chosen_ids"])[:room],
                    "rejected_ids": list(row["rejected_ids"])[:room],
                }
            )
        return rows

    @torch.no_grad()
    def logps(self, model) -> torch.Tensor:
        """`[n, 2]` summed log-probs of each pair's chosen and rejected completion."""
        from axolotl_paft.training.losses import completion_logps

        device = device_of(model)
        logps = []
        for start in range(0, len(self.rows), self.batch_size):
            stop = min(start + self.batch_size, len(self.rows))
            batch = self.collator([self.rows[i] for i in range(start, stop)])
            batch = {
                k: batch[k].to(device)
                for k in ("input_ids", "attention_mask", "completion_mask")
            }
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
            summed, _ = completion_logps(
                logits, batch["input_ids"], batch["completion_mask"]
            )
            logps.append(torch.stack(summed.float().cpu().chunk(2), dim=1))
        return torch.cat(logps)


def read_rows(tokenizer, skill_rows: list[dict], pair_rows: list[dict]) -> tuple:
    """Held-out JSONL rows as the search scores them: text rows (`messages`;
    `question`/`chosen`/`rejected`) rendered with `tokenizer` (`TextSkill`,
    `TextPairs`), or a run's own splits as `outputs.write_held_out` wrote them
    (`input_ids`/`labels`; `prompt_ids`/`chosen_ids`/`rejected_ids`), scored as
    the run scored them (`TokenizedSkill`, `TokenizedPairs`)."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    if skill_rows and "input_ids" in skill_rows[0]:
        skill = TokenizedSkill(skill_rows, tokenizer)
    else:
        skill = TextSkill(tokenizer, skill_rows)
    if pair_rows and "prompt_ids" in pair_rows[0]:
        pad = tokenizer.pad_token_id
        pad = tokenizer.eos_token_id if pad is None else pad
        pairs = TokenizedPairs(pair_rows, DataCollatorForPreference(pad_token_id=pad))
    else:
        pairs = TextPairs(tokenizer, pair_rows)
    return skill, pairs


def last_labelled_span(labels: torch.Tensor) -> tuple[int, int]:
    """`[start, end)` of the last run of scored labels (never from position 0:
    the first token has no prediction)."""
    scored = (labels != IGNORE_INDEX).tolist()
    end = len(scored) - scored[::-1].index(True)
    start = end
    while start > 1 and scored[start - 1]:
        start -= 1
    return start, end


def row_terms(
    model, base_logps: torch.Tensor, skill, pairs, logps: torch.Tensor | None = None
) -> dict[str, tuple]:
    """Per measure of `MEASURES`, its per-row `(numerator, denominator)` terms
    for `model` on the held-out rows (one batched pass over each side; `logps`:
    the model's `pairs.logps` where already computed, e.g. the base's)."""
    stats = skill.stats(model)
    logps = pairs.logps(model) if logps is None else logps
    margins = margins_from(logps, base_logps).double()
    return {
        name: m.terms(stats if m.side == "skill" else margins)
        for name, m in TEACHER_FORCED.items()
    }


def summarize(terms: dict[str, tuple]) -> dict[str, float]:
    """Every measure's value from `row_terms`, under its metric key, and
    `score = (sft_exact_match + preference_accuracy) / 2` (teacher-forced:
    `axolotl-paft-eval`'s generated one is `greedy_score`)
    where both are among them."""
    metrics = {MEASURES[name].metric: value(name, t) for name, t in terms.items()}
    if {"sft_exact_match", "preference_accuracy"} <= metrics.keys():
        score = (metrics["sft_exact_match"] + metrics["preference_accuracy"]) / 2
        metrics["score"] = score
    return metrics


def quick_metrics(model, base_logps: torch.Tensor, skill, pairs) -> dict[str, float]:
    """`evaluate`'s skill, preference and score metrics without generation
    (every measure of `MEASURES`), on held-out rows from a file (`TextSkill`,
    `TextPairs`) or from the run's own splits (`Tokenized*`): what searches
    and grids use. `base_logps`: the base's `pairs.logps`."""
    return summarize(row_terms(model, base_logps, skill, pairs))


LOG = logging.getLogger(f"axolotl.{__name__}")  # shown by axolotl's log config
QUANTILES = torch.tensor([0.025, 0.975], dtype=torch.float64)  # a 95% interval

BOOTSTRAP_SAMPLES = 2000  # resamples of the held-out rows per interval
SIDES = ("skill", "preference")
# the measures `kept_shares` reads by default: the miniature world's, whose
# answers are short (`scoring.choose_skill_measure`)
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
    keep, on `measures` (side -> `scoring.MEASURES` name)."""
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
    reference gains over the base), capped at 1; nan without a side, and nan
    where a share of `sides` is nan (a broken candidate: `min` would skip it)."""
    shares = [kept[f"{side}_kept"] for side in sides]
    if not shares or any(math.isnan(share) for share in shares):
        return math.nan
    return min(1.0, *shares)


def balanced_metrics(
    metrics: dict, references: dict, measures: dict | None = None
) -> dict[str, float]:
    """`kept_shares` and `balanced` (`balanced_of` the sides whose reference
    gains over the base; `Scorer` also requires the gain to exceed its noise
    and says which sides rank)."""
    kept = kept_shares(metrics, references, measures)
    measures = measures or LEGACY_MEASURES
    sides = [
        side
        for side, reference in zip(SIDES, ("sft", "preference"), strict=True)
        if not math.isnan(
            kept_shares(references[reference], references, measures)[f"{side}_kept"]
        )
    ]  # the sides whose reference gains over the base (not the candidate's nan)
    return kept | {"balanced": balanced_of(kept, sides)}


def _bootstrap_values(terms: tuple, index) -> torch.Tensor:
    """A measure's value (sum of numerators / sum of denominators) on each
    resample of rows (`index`: `[samples, rows]`)."""
    numerator, denominator = terms
    return numerator[index].sum(1) / denominator[index].sum(1)


class Scorer:
    """Scores models on the search's held-out rows and ranks them against the
    references (the base, the SFT-only and the preference-only adapters).

    The skill and preference measures are `scoring.MEASURES` entries (the skill
    one chosen from the answers' lengths by default). Every kept share comes
    with a 95% interval: a paired bootstrap over the held-out rows (the same
    resampled rows for the candidate, the base and the reference, so what the
    rows share cancels; `BOOTSTRAP_SAMPLES` resamples, percentiles 2.5 and
    97.5), and so does each reference's gain over the base. A side whose
    reference gains nothing beyond that noise (interval reaching 0) cannot be
    ranked: it is warned about, named in the leaderboard, and the balanced
    objective ranks by the other side alone; with neither, by the score."""

    def __init__(self, measures: dict[str, str], base_terms: dict, score_terms=None):
        """`measures`: side -> `scoring.MEASURES` name; `base_terms`: the base's
        `scoring.row_terms`; `score_terms(model)`: a model's (`on_rows`)."""
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
        (`scoring.choose_skill_measure`); `preference_measure`: None for
        `scoring.DEFAULT_PREFERENCE_MEASURE`."""
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
        """`scoring.summarize` of a model's `row_terms`, with (once the
        references are in) `skill_kept`, `preference_kept`, `balanced` and the
        95% interval of each (`*_low`, `*_high`)."""
        metrics = summarize(terms)
        if not self.gains:
            return metrics
        kept = kept_shares(metrics, self.references, self.measures)
        # a side that does not rank has no kept share: its reference's gain is
        # noise, and a share of noise (72, -62) means nothing and must not
        # break ties
        kept |= {f"{s}_kept": math.nan for s in SIDES if s not in self.ranked_sides}
        metrics |= kept | {"balanced": balanced_of(kept, self.ranked_sides)}
        draws = {}
        for side, reference in zip(SIDES, ("sft", "preference"), strict=True):
            if side not in self.ranked_sides:
                metrics |= {f"{side}_kept_low": math.nan, f"{side}_kept_high": math.nan}
                continue
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
