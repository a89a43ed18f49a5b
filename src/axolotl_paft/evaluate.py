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

Writes `eval.json`, `eval.md`, `eval.png` and `lm_eval_commands.sh` (the Open LLM
suite of the paper, for GPU users) into `--out`, prints the table and names the best.
"""

from __future__ import annotations

import argparse
import json
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
    """The base model in float32 on CPU, with `adapter` applied (not merged)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    return model.eval()


@torch.no_grad()
def assistant_loss(model, tokenizer, rows: list[dict]) -> float:
    """Mean NLL per assistant token of chat rows (`messages`, last turn answered)."""
    total, count = 0.0, 0
    for row in rows:
        messages = row["messages"]
        prompt = tokenizer.apply_chat_template(
            messages[:-1], add_generation_prompt=True, tokenize=False
        )
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        prompt_len = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        ids = torch.tensor([tokenizer(full, add_special_tokens=False)["input_ids"]])
        labels = ids.clone()
        labels[:, :prompt_len] = IGNORE_INDEX
        logits = model(input_ids=ids).logits[:, :-1].float()
        targets = labels[:, 1:]
        losses = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            targets.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        total += float(losses)
        count += int((targets != IGNORE_INDEX).sum())
    return total / count


def _completion_logp(model, tokenizer, prompt: str, completion: str) -> float:
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = tokenizer(prompt + completion, add_special_tokens=False)["input_ids"]
    logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
    logps = torch.log_softmax(logits, -1)
    targets = torch.tensor(ids[1:])
    picked = logps.gather(-1, targets[:, None])[:, 0]
    return float(picked[len(prompt_ids) - 1 :].sum())


@torch.no_grad()
def pair_logps(model, tokenizer, rows: list[dict]) -> torch.Tensor:
    """`[n, 2]` log-probs of each row's chosen and rejected completion.

    Rows hold `question` (and optionally `system`), `chosen` and `rejected`; the
    prompt is rendered with the tokenizer's chat template."""
    logps = []
    for row in rows:
        messages = (
            [{"role": "system", "content": row["system"]}] if row.get("system") else []
        )
        messages.append({"role": "user", "content": row["question"]})
        prompt = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        logps.append(
            [
                _completion_logp(model, tokenizer, prompt, row[k] + tokenizer.eos_token)
                for k in ("chosen", "rejected")
            ]
        )
    return torch.tensor(logps)


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
        )
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


@torch.no_grad()
def forced_exact_match(model, tokenizer, rows: list[dict]) -> list[bool]:
    """Per chat row: does greedy decoding reproduce the reference answer and stop?

    Read from one teacher-forced forward pass instead of a generation loop: greedy
    decoding emits the reference (in the tokenizer's own tokenization) followed by
    the end-of-turn token exactly when, at each of those positions, the reference
    token is the argmax. A lower bound of `exact_match`'s string comparison (which
    also accepts another tokenization of the same text), and many times cheaper."""
    hits = []
    for row in rows:
        *prompt_turns, reference = row["messages"]
        prompt = tokenizer.apply_chat_template(
            prompt_turns, add_generation_prompt=True, tokenize=False
        )
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(
            reference["content"].strip() + tokenizer.eos_token,
            add_special_tokens=False,
        )["input_ids"]
        ids = torch.tensor(prompt_ids + answer_ids)
        hits.append(greedy_reproduces(model, ids, len(prompt_ids), len(ids)))
    return hits


def greedy_reproduces(model, ids: torch.Tensor, start: int, end: int) -> bool:
    """Whether greedy decoding from `ids[:start]` emits exactly `ids[start:end]`:
    at each of those positions the token is the argmax of one teacher-forced pass."""
    logits = model(input_ids=ids[None, :end]).logits[0, start - 1 : end - 1]
    return bool((logits.argmax(-1) == ids[start:end]).all())


class TextSkill:
    """Held-out chat rows (JSONL, `messages`): the skill is the last answer,
    scored by `forced_exact_match` with the tokenizer's chat template."""

    def __init__(self, tokenizer, rows: list[dict]):
        self.tokenizer, self.rows = tokenizer, rows

    def hits(self, model) -> list[bool]:
        return forced_exact_match(model, self.tokenizer, self.rows)


class TextPairs:
    """Held-out preference rows (JSONL: `question`, `chosen`, `rejected`)."""

    def __init__(self, tokenizer, rows: list[dict]):
        self.tokenizer, self.rows = tokenizer, rows

    def logps(self, model) -> torch.Tensor:
        return pair_logps(model, self.tokenizer, self.rows)


class TokenizedSkill:
    """A run's own SFT eval rows as Axolotl tokenized them (`input_ids`,
    `labels`): the skill is the last labelled span (the last answer and its
    end-of-turn token), so any dataset type and template Axolotl reads works."""

    def __init__(self, rows):
        self.rows = rows

    @torch.no_grad()
    def hits(self, model) -> list[bool]:
        """`forced_exact_match` on token ids."""
        hits = []
        for row in self.rows:
            ids = torch.as_tensor(row["input_ids"])
            start, end = last_labelled_span(torch.as_tensor(row["labels"]))
            hits.append(greedy_reproduces(model, ids, start, end))
        return hits


class TokenizedPairs:
    """A run's own held-out preference rows as its RL loaders tokenized them,
    batched by the run's preference collator."""

    def __init__(self, rows, collator, batch_size: int = 8):
        self.rows, self.collator, self.batch_size = rows, collator, batch_size

    @torch.no_grad()
    def logps(self, model) -> torch.Tensor:
        """`[n, 2]` summed log-probs of each pair's chosen and rejected completion."""
        from axolotl_paft.losses import completion_logps

        logps = []
        for start in range(0, len(self.rows), self.batch_size):
            stop = min(start + self.batch_size, len(self.rows))
            batch = self.collator([self.rows[i] for i in range(start, stop)])
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
            summed, _ = completion_logps(
                logits, batch["input_ids"], batch["completion_mask"]
            )
            logps.append(torch.stack(summed.float().chunk(2), dim=1))
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


def quick_metrics(model, base_logps: torch.Tensor, skill, pairs) -> dict[str, float]:
    """`evaluate`'s skill, preference and score metrics without generation
    (`forced_exact_match` for `sft_exact_match`), on held-out rows from a file
    (`TextSkill`, `TextPairs`) or from the run's own splits (`Tokenized*`): what
    searches and grids use. `base_logps`: the base's `pairs.logps`."""
    margins = margins_from(pairs.logps(model), base_logps)
    hits = skill.hits(model)
    skill = sum(hits) / len(hits)
    accuracy = float((margins > 0).float().mean())
    return {
        "sft_exact_match": skill,
        "preference_accuracy": accuracy,
        "preference_margin": float(margins.mean()),
        "score": (skill + accuracy) / 2,
    }


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
