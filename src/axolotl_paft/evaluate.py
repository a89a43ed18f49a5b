"""Evaluate merged candidates: SFT skill, preference alignment, one declared score.

    axolotl-paft-eval --base BASE --candidate sft=OUT/sft \
        --candidate ties=OUT/merged/ties --sft-data heldout_sft.jsonl \
        --preference-data heldout_prefs.jsonl --out EVAL_DIR

A candidate is a PEFT adapter folder (applied to `--base`) or a full model folder
(e.g. a mergekit output). Per candidate, on held-out data:

- SFT: `sft_loss` (mean NLL per assistant token) and `sft_exact_match` (greedy answer
  equals the reference answer, whitespace-trimmed);
- preference: `preference_accuracy` (fraction of pairs whose implicit reward
  `log pi/ref(chosen) - log pi/ref(rejected)` against the base is > 0),
  `preference_margin` (its mean), `chosen_over_rejected` (fraction of pairs where the
  candidate's own log-prob of chosen exceeds rejected);
- `score = (sft_exact_match + preference_accuracy) / 2`: both skills count equally.

The merge search scores the same rows without generation: `MEASURES` is its
registry of measures (one entry each: side, metric key, direction, per-row
terms), all read from one batched teacher-forced pass per side
(`span_stats`, `quick_metrics`); a new measure is one entry.

Writes `eval.json`, `eval.md`, `eval.png` and `lm_eval_commands.sh` (the Open LLM
suite of the paper, for GPU users) into `--out`, prints the table and names the best.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

IGNORE_INDEX = -100  # Axolotl's and transformers' label of an unscored token
OPEN_LLM_TASKS = "arc_challenge,hellaswag,mmlu,truthfulqa_mc2,winogrande,gsm8k"
METRICS = (
    "sft_loss",
    "sft_exact_match",
    "preference_accuracy",
    "preference_margin",
    "chosen_over_rejected",
    "score",
)


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


def load_candidate(base: str | Path, path: str | Path):
    """An adapter folder on `base`, or a full model folder."""
    adapter = Path(path) / "adapter_config.json"
    return load_model(base, path) if adapter.exists() else load_model(path)


@torch.no_grad()
def exact_match(model, tokenizer, rows: list[dict], max_new_tokens: int = 32) -> float:
    """Fraction of chat rows whose greedy answer equals the reference answer."""
    hits = 0
    for row in rows:
        *prompt_turns, reference = row["messages"]
        prompt = tokenizer.apply_chat_template(
            prompt_turns,
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        ).to(device_of(model))
        ids = model.generate(
            **prompt,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
        answer = tokenizer.decode(
            ids[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True
        )
        hits += answer.strip() == reference["content"].strip()
    return hits / len(rows)


# Tokens per scoring forward pass (rows x padded length): bounds the logits
# tensor (tokens x vocabulary floats: 0.8 GB at SmolLM2's 49k vocabulary).
SCORE_BATCH_TOKENS = 4096


def device_of(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def span_stats(
    model,
    spans: list[tuple[list[int], int, int]],
    batch_tokens: int = SCORE_BATCH_TOKENS,
) -> dict[str, torch.Tensor]:
    """Teacher-forced statistics of `ids[start:end]` per `(ids, start, end)`:
    `nll` (summed over the span), `tokens`, `correct` (tokens that are the argmax
    of their position) and `exact` (all of them are: greedy decoding from
    `ids[:start]` emits exactly the span), each `[len(spans)]` on CPU.

    Rows are sorted by length and batched up to `batch_tokens` padded tokens
    (right padding, attention-masked, so each row scores as it would alone),
    on the model's device: one forward pass per batch instead of per row."""
    n = len(spans)
    stats = {
        k: torch.zeros(n, dtype=torch.float64) for k in ("nll", "tokens", "correct")
    }
    order = sorted(range(n), key=lambda i: spans[i][2])
    device = device_of(model)
    while order:
        batch = [order.pop(0)]
        while order and (len(batch) + 1) * spans[order[0]][2] <= batch_tokens:
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
        logits, targets = logits[:, :-1].float(), labels[:, 1:].to(device)
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),  # flat: 4x faster than (N, C, L)
            targets.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="none",
        ).view(targets.shape)
        scored = targets != IGNORE_INDEX
        index = torch.tensor(batch)
        stats["nll"][index] = nll.sum(1).double().cpu()
        stats["tokens"][index] = scored.sum(1).double().cpu()
        correct = (logits.argmax(-1) == targets) & scored
        stats["correct"][index] = correct.sum(1).double().cpu()
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
    measure is bootstrapped the same way (`search.kept_interval`) and a mean per
    token weighs long answers as the tokens they hold."""

    side: str  # "skill" or "preference"
    metric: str  # its key in metrics dicts
    higher_is_better: bool
    terms: Callable[[dict | torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    description: str


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
}  # fmt: skip
SKILL_MEASURES = tuple(n for n, m in MEASURES.items() if m.side == "skill")
PREFERENCE_MEASURES = tuple(n for n, m in MEASURES.items() if m.side == "preference")
# `auto` takes exact match where the held-out answers are short (median answer
# with its end-of-turn token at most SHORT_ANSWER_TOKENS tokens: a sentence, a
# number, a label), FREE_FORM_MEASURE otherwise: greedy reproduction of a long
# answer is 0 for every model (benchmarks/results_measure_choice.md).
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
    end-of-turn token), so any dataset type and template Axolotl reads works."""

    def __init__(self, rows):
        self.rows = rows
        self.spans = []
        for row in rows:
            start, end = last_labelled_span(torch.as_tensor(row["labels"]))
            self.spans.append((list(row["input_ids"]), start, end))


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

    @torch.no_grad()
    def logps(self, model) -> torch.Tensor:
        """`[n, 2]` summed log-probs of each pair's chosen and rejected completion."""
        from axolotl_paft.losses import completion_logps

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
        for name, m in MEASURES.items()
    }


def summarize(terms: dict[str, tuple]) -> dict[str, float]:
    """Every measure's value from `row_terms`, under its metric key, and
    `score = (sft_exact_match + preference_accuracy) / 2` (`evaluate`'s)."""
    metrics = {MEASURES[name].metric: value(name, t) for name, t in terms.items()}
    score = (metrics["sft_exact_match"] + metrics["preference_accuracy"]) / 2
    return metrics | {"score": score}


def quick_metrics(model, base_logps: torch.Tensor, skill, pairs) -> dict[str, float]:
    """`evaluate`'s skill, preference and score metrics without generation
    (every measure of `MEASURES`), on held-out rows from a file (`TextSkill`,
    `TextPairs`) or from the run's own splits (`Tokenized*`): what searches
    and grids use. `base_logps`: the base's `pairs.logps`."""
    return summarize(row_terms(model, base_logps, skill, pairs))


def evaluate(
    model,
    base_logps: torch.Tensor,
    tokenizer,
    sft_rows: list[dict],
    preference_rows: list[dict],
) -> dict[str, float]:
    """All metrics of one candidate (see the module docstring); `base_logps` are
    the base's `pair_logps` on `preference_rows`."""
    logps = pair_logps(model, tokenizer, preference_rows)
    margins = margins_from(logps, base_logps)
    own = margins_from(logps, None)
    metrics = {
        "sft_loss": assistant_loss(model, tokenizer, sft_rows),
        "sft_exact_match": exact_match(model, tokenizer, sft_rows),
        "preference_accuracy": float((margins > 0).float().mean()),
        "preference_margin": float(margins.mean()),
        "chosen_over_rejected": float((own > 0).float().mean()),
    }
    metrics["score"] = (metrics["sft_exact_match"] + metrics["preference_accuracy"]) / 2
    return metrics


def evaluate_candidates(
    base: Path,
    candidates: dict[str, Path],
    sft_rows: list[dict],
    preference_rows: list[dict],
) -> dict[str, dict[str, float]]:
    """Metrics per candidate name; the base itself is evaluated as `base`."""
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    base_model = load_model(base)
    base_logps = pair_logps(base_model, tokenizer, preference_rows)
    results = {}
    for name, path in tqdm({"base": base, **candidates}.items(), desc="candidates"):
        model = base_model if name == "base" else load_candidate(base, path)
        results[name] = evaluate(
            model, base_logps, tokenizer, sft_rows, preference_rows
        )
    return results


def best_candidate(results: dict[str, dict[str, float]]) -> str:
    """The highest score; lower SFT loss breaks ties."""
    return max(results, key=lambda n: (results[n]["score"], -results[n]["sft_loss"]))


def render_table(results: dict[str, dict[str, float]]) -> str:
    lines = [
        "| candidate | " + " | ".join(METRICS) + " |",
        "|---" * (len(METRICS) + 1) + "|",
    ]
    for name, m in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{m[k]:.3f}" for k in METRICS) + " |")
    return "\n".join(lines)


def render_chart(results: dict[str, dict[str, float]], path: Path) -> None:
    """Grouped bars: SFT exact match, preference accuracy and score per candidate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = ("sft_exact_match", "preference_accuracy", "score")
    names = list(results)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(names)), 4))
    width = 0.8 / len(shown)
    for i, metric in enumerate(shown):
        xs = [j + (i - 1) * width for j in range(len(names))]
        ax.bar(xs, [results[n][metric] for n in names], width, label=metric)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"PAFT candidates (best: {best_candidate(results)})")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def lm_eval_commands(base: Path, candidates: dict[str, Path]) -> str:
    """lm-evaluation-harness commands for the paper's Open LLM suite."""
    lines = ["#!/usr/bin/env bash", "# Open LLM suite per candidate (GPU).", "set -e"]
    for name, path in candidates.items():
        if (Path(path) / "adapter_config.json").exists():
            model_args = f"pretrained={base},peft={path}"
        else:
            model_args = f"pretrained={path}"
        lines.append(
            f"lm_eval --model hf --model_args {model_args} --tasks {OPEN_LLM_TASKS} "
            f"--batch_size auto --output_path lm_eval/{name}"
        )
    return "\n".join(lines) + "\n"


def write_evaluation(
    results: dict[str, dict[str, float]],
    base: Path,
    candidates: dict[str, Path],
    out_dir: Path,
) -> str:
    """Write eval.json/.md/.png and lm_eval_commands.sh; return the best name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    best = best_candidate(results)
    summary = {
        "score": "(sft_exact_match + preference_accuracy) / 2",
        "best": best,
        "candidates": {n: str(p) for n, p in {"base": base, **candidates}.items()},
        "results": results,
    }
    (out_dir / "eval.json").write_text(json.dumps(summary, indent=2))
    (out_dir / "eval.md").write_text(render_table(results) + f"\n\nbest: {best}\n")
    render_chart(results, out_dir / "eval.png")
    (out_dir / "lm_eval_commands.sh").write_text(lm_eval_commands(base, candidates))
    return best


def parse_candidates(items: list[str]) -> dict[str, Path]:
    candidates = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not Path(path).is_dir():
            raise SystemExit(
                f"--candidate {item!r}: use NAME=FOLDER (an existing folder)"
            )
        candidates[name] = Path(path)
    return candidates


def add_data_arguments(parser: argparse.ArgumentParser, out: str) -> None:
    """Held-out data and output options shared by the eval and sweep commands."""
    parser.add_argument("--sft-data", required=True, type=Path)
    parser.add_argument("--preference-data", required=True, type=Path)
    parser.add_argument("--limit", type=int, default=None, help="rows per data set")
    parser.add_argument("--out", type=Path, default=Path(out))


def evaluate_and_report(
    opts: argparse.Namespace, base: Path, candidates: dict[str, Path]
) -> str:
    """Evaluate on `opts`' data, write the outputs, print the table; return the
    best candidate's name."""
    results = evaluate_candidates(
        base,
        candidates,
        read_jsonl(opts.sft_data, opts.limit),
        read_jsonl(opts.preference_data, opts.limit),
    )
    best = write_evaluation(results, base, candidates, opts.out)
    print(render_table(results))
    print(
        f"best candidate: {best}  (score = (sft_exact_match + preference_accuracy) / 2)"
    )
    print(f"wrote {opts.out / 'eval.json'}, eval.md, eval.png, lm_eval_commands.sh")
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--base", required=True, help="the base model: a folder or a hub id"
    )
    parser.add_argument("--candidate", action="append", default=[], metavar="NAME=DIR")
    add_data_arguments(parser, out="paft_eval")
    opts = parser.parse_args(argv)
    evaluate_and_report(opts, opts.base, parse_candidates(opts.candidate))


if __name__ == "__main__":
    main()
