"""Evaluate merged candidates: SFT skill, preference alignment, one declared score.

    axolotl-paft-eval --base BASE --candidate sft=OUT/sft \
        --candidate ties=OUT/merged/ties --sft-data heldout_sft.jsonl \
        --preference-data heldout_prefs.jsonl --out EVAL_DIR

A candidate is a PEFT adapter folder (applied to `--base`) or a full model folder
(e.g. a mergekit output). Per candidate, on held-out data:

- SFT: `sft_loss` (mean NLL per assistant token, the search's `nll` measure) and
  `sft_greedy_match` (the greedy answer, generated, equals the reference answer,
  whitespace-trimmed: not the search's teacher-forced `sft_exact_match`);
- preference: `preference_accuracy` (fraction of pairs whose implicit reward
  `log pi/ref(chosen) - log pi/ref(rejected)` against the base is > 0),
  `preference_margin` (its mean), `chosen_over_rejected` (fraction of pairs where the
  candidate's own log-prob of chosen exceeds rejected);
- `greedy_score = (sft_greedy_match + preference_accuracy) / 2`: both skills count
  equally.

The merge search scores the same rows without generation
(`axolotl_paft.merging.scoring`): a name shared with its measures (`sft_loss`,
`preference_accuracy`, `preference_margin`) is the same computation.

Writes `eval.json`, `eval.md`, `eval.png` and `lm_eval_commands.sh` (the Open LLM
suite of the paper, for GPU users) into `--out`, prints the table and names the best.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from axolotl_paft.cli.inputs import candidate, check_candidates, check_data, positive
from axolotl_paft.merging.configs import base_model_reference
from axolotl_paft.merging.scoring import (
    assistant_loss,
    device_of,
    load_candidate,
    load_model,
    margins_from,
    pair_logps,
    read_jsonl,
)

OPEN_LLM_TASKS = "arc_challenge,hellaswag,mmlu,truthfulqa_mc2,winogrande,gsm8k"
METRICS = (
    "sft_loss",
    "sft_greedy_match",
    "preference_accuracy",
    "preference_margin",
    "chosen_over_rejected",
    "greedy_score",
)
SCORE = "greedy_score = (sft_greedy_match + preference_accuracy) / 2"


@torch.no_grad()
def greedy_match(model, tokenizer, rows: list[dict], max_new_tokens: int = 32) -> float:
    """Fraction of chat rows whose greedy answer, generated, equals the reference
    answer (text, whitespace-trimmed): `sft_greedy_match`."""
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
        "sft_greedy_match": greedy_match(model, tokenizer, sft_rows),
        "preference_accuracy": float((margins > 0).float().mean()),
        "preference_margin": float(margins.mean()),
        "chosen_over_rejected": float((own > 0).float().mean()),
    }
    metrics["greedy_score"] = (
        metrics["sft_greedy_match"] + metrics["preference_accuracy"]
    ) / 2
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
    """The highest greedy score; lower SFT loss breaks ties; nan (a broken
    candidate) never wins."""

    def rank(name: str) -> tuple:
        score, loss = results[name]["greedy_score"], results[name]["sft_loss"]
        return (
            -math.inf if math.isnan(score) else score,
            -math.inf if math.isnan(loss) else -loss,
        )

    return max(results, key=rank)


def render_table(results: dict[str, dict[str, float]]) -> str:
    lines = [
        "| candidate | " + " | ".join(METRICS) + " |",
        "|---" * (len(METRICS) + 1) + "|",
    ]
    for name, m in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{m[k]:.3f}" for k in METRICS) + " |")
    return "\n".join(lines)


def render_chart(results: dict[str, dict[str, float]], path: Path) -> None:
    """Grouped bars: SFT greedy match, preference accuracy and greedy score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = ("sft_greedy_match", "preference_accuracy", "greedy_score")
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
        "score": SCORE,
        "best": best,
        "candidates": {n: str(p) for n, p in {"base": base, **candidates}.items()},
        "results": results,
    }
    (out_dir / "eval.json").write_text(json.dumps(summary, indent=2))
    (out_dir / "eval.md").write_text(render_table(results) + f"\n\nbest: {best}\n")
    render_chart(results, out_dir / "eval.png")
    (out_dir / "lm_eval_commands.sh").write_text(lm_eval_commands(base, candidates))
    return best


def add_data_arguments(parser: argparse.ArgumentParser, out: str) -> None:
    """Held-out data and output options shared by the eval and sweep commands."""
    parser.add_argument("--sft-data", required=True, type=Path)
    parser.add_argument("--preference-data", required=True, type=Path)
    parser.add_argument(
        "--limit", type=positive, default=None, help="rows per data set"
    )
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
    print(f"best candidate: {best}  ({SCORE})")
    print(f"wrote {opts.out / 'eval.json'}, eval.md, eval.png, lm_eval_commands.sh")
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--base", required=True, help="the base model: a folder or a hub id"
    )
    parser.add_argument(
        "--candidate", action="append", default=[], type=candidate, metavar="NAME=DIR",
        help="an adapter folder (on --base) or a model folder; `base` is reserved",
    )  # fmt: skip
    add_data_arguments(parser, out="paft_eval")
    opts = parser.parse_args(argv)
    base = base_model_reference(opts.base)
    candidates = check_candidates(parser, opts.candidate, base)
    check_data(parser, opts)
    evaluate_and_report(opts, opts.base, candidates)


if __name__ == "__main__":
    main()
