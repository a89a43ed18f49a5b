"""Which skill and preference measure can rank merges of free-form answers?

    python benchmarks/evidence/measure_choice.py OUT [--steps 24] [--rows 64]

On the real model (SmolLM2-135M-Instruct, the folder `axolotl_paft.lab.smollm2`
builds), one parallel-mode `axolotl train` run learns an SFT LoRA on the free-form
field cards of `axolotl_paft.lab.freeform` (answers of 83-101 tokens in a house
style the base does not have) and a DPO LoRA on its pairs (a warm answer over
a plain one; results_measure_choice.md was measured on the earlier
warm-over-curt pairs). Then
the base, the SFT-only and the preference-only adapters are scored on held-out
rows (other seeds) by every measure of `evaluate.MEASURES`, each with the 95%
interval of the reference's gain over the base (`search.reference_gain`, paired
bootstrap over rows). A measure can rank merges only where the SFT-only (or
preference-only) adapter gains clearly, beyond that noise. Writes
`OUT/measure_choice.{json,md}` and prints the table. CPU, about 10 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

from axolotl_paft.lab.bench import SMOLLM2 as MODEL


def train(out: Path, steps: int) -> dict[str, Path]:
    """One parallel-mode run on the free-form rows; returns the two adapters."""
    from axolotl_paft.lab.freeform import preference_rows, sft_rows
    from axolotl_paft.lab.toy import (
        ToySetup,
        parallel_config,
        run_axolotl_train,
        write_jsonl,
    )

    adapters = {"sft": out / "run" / "sft", "preference": out / "run" / "dpo"}
    if all((a / "adapter_model.safetensors").exists() for a in adapters.values()):
        return adapters
    sft = write_jsonl(out / "data" / "sft.jsonl", sft_rows(400, seed=0))
    pref = write_jsonl(out / "data" / "preference.jsonl", preference_rows(400, seed=1))
    setup = ToySetup(MODEL, sft, pref, preference_type="chat_template.default")
    run_axolotl_train(
        parallel_config(
            setup,
            out / "run",
            dataset_prepared_path=str(out / "prepared"),
            sequence_len=256,
            lora_r=16,
            lora_alpha=32,
            micro_batch_size=2,
            max_steps=steps,
            learning_rate=1e-3,
            logging_steps=4,
            paft_preference_val_set_size=0,
            paft_preference_learning_rate=5e-4,
            paft_merge_methods=[],
            paft_report=False,
        )
    )
    return adapters


SUBSETS = (8, 16, 32, 64, 128)  # held-out rows per side, for the interval widths


def score(opts, adapters: dict[str, Path]) -> dict:
    """Every measure of `evaluate.MEASURES` for the base, the SFT-only and the
    preference-only adapters and an equal-weight task-arithmetic merge (mergekit)
    on `opts.rows` held-out rows per side (scored once, batched); then per
    skill x preference measure, on the first 16..rows rows, the references'
    gains with their 95% intervals and the merge's kept shares with theirs
    (`search.Scorer`, as the search computes them)."""
    from transformers import AutoTokenizer

    from axolotl_paft.lab.freeform import preference_rows, sft_rows
    from axolotl_paft.merging.candidates import Candidate, build_candidate
    from axolotl_paft.merging.scoring import (
        PREFERENCE_MEASURES,
        SKILL_MEASURES,
        Scorer,
        TextPairs,
        TextSkill,
        choose_skill_measure,
        load_model,
        row_terms,
    )

    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    skill = TextSkill(tokenizer, sft_rows(opts.rows, seed=100))
    pairs = TextPairs(tokenizer, preference_rows(opts.rows, seed=101))
    merged = opts.out / "merge" / "task_arithmetic"
    if not (merged / "model.safetensors").exists():
        build_candidate(
            MODEL, adapters["sft"], adapters["preference"],
            Candidate("task_arithmetic"), merged, opts.out / "merge" / "cache",
        )  # fmt: skip
    paths = {
        "base": (MODEL, None),
        "sft": (MODEL, adapters["sft"]),
        "preference": (MODEL, adapters["preference"]),
        "task_arithmetic": (merged, None),
    }
    base_logps, terms, seconds = None, {}, {}
    for name, (folder, adapter) in paths.items():
        model = load_model(folder, adapter)
        started = time.time()
        if base_logps is None:
            base_logps = pairs.logps(model)
            terms[name] = row_terms(model, base_logps, skill, pairs, base_logps)
        else:
            terms[name] = row_terms(model, base_logps, skill, pairs)
        seconds[name] = round(time.time() - started, 1)
        print(f"scored {name} in {seconds[name]}s", flush=True)
    lengths = sorted(end - start for _, start, end in skill.spans)
    result = {
        "rows": opts.rows,
        "answer_tokens": {"min": lengths[0], "median": lengths[len(lengths) // 2],
                          "max": lengths[-1]},
        "auto_measure": choose_skill_measure(skill),
        "score_seconds": seconds,
        "subsets": {},
    }  # fmt: skip
    for n in [n for n in SUBSETS if n < opts.rows] + [opts.rows]:
        sliced = {
            name: {m: (num[:n], den[:n]) for m, (num, den) in t.items()}
            for name, t in terms.items()
        }
        subset = {}
        for skill_measure in SKILL_MEASURES:
            for preference_measure in PREFERENCE_MEASURES:
                measures = {"skill": skill_measure, "preference": preference_measure}
                scorer = Scorer(measures, sliced["base"])
                for name in ("sft", "preference"):
                    scorer.add_reference(name, sliced[name])
                subset[f"{skill_measure}/{preference_measure}"] = {
                    "references": scorer.references,
                    "gains": scorer.gains,
                    "task_arithmetic": scorer.metrics(sliced["task_arithmetic"]),
                }
        result["subsets"][n] = subset
    return result


def render(result: dict) -> str:
    """Per measure: the references' values, the gain with its 95% interval,
    gain / half-width (how far clear of noise), and the merge's kept share with
    its interval; then the interval widths by number of rows."""
    full = result["subsets"][result["rows"]]
    lines = [
        f"Held-out rows per side: {result['rows']}; answer tokens (with "
        f"end-of-turn) min/median/max {result['answer_tokens']['min']}/"
        f"{result['answer_tokens']['median']}/{result['answer_tokens']['max']}; "
        f"`auto` picks `{result['auto_measure']}`.",
        "",
        "| side | measure | base | SFT-only | preference-only | reference gain "
        "[95%] | gain / half-width | TA merge kept [95%] |",
        "|---|---|---|---|---|---|---|---|",
    ]
    seen = set()
    for entry in full.values():
        for side in ("skill", "preference"):
            gain = entry["gains"][side]
            if (side, gain["measure"]) in seen:
                continue
            seen.add((side, gain["measure"]))
            metric = _metric(gain["measure"])
            refs = entry["references"]
            half = (gain["high"] - gain["low"]) / 2
            merge = entry["task_arithmetic"]
            kept = f"{side}_kept"
            lines.append(
                f"| {side} | {gain['measure']} | {refs['base'][metric]:.4g} | "
                f"{refs['sft'][metric]:.4g} | {refs['preference'][metric]:.4g} | "
                f"{gain['gain']:.4g} [{gain['low']:.4g}, {gain['high']:.4g}] | "
                f"{gain['gain'] / half if half else float('nan'):.1f} | "
                f"{merge[kept]:.3f} [{merge[kept + '_low']:.3f}, "
                f"{merge[kept + '_high']:.3f}] |"
            )
    lines += [
        "",
        "Width of the TA merge's 95% kept-share interval by held-out rows per side:",
        "",
        "| rows | " + " | ".join(sorted(seen_name(seen))) + " |",
        "|---" * (len(seen) + 1) + "|",
    ]
    for n, subset in result["subsets"].items():
        widths = {}
        for entry in subset.values():
            for side in ("skill", "preference"):
                name = f"{side}/{entry['gains'][side]['measure']}"
                m = entry["task_arithmetic"]
                widths[name] = m[f"{side}_kept_high"] - m[f"{side}_kept_low"]
        lines.append(
            f"| {n} | " + " | ".join(f"{widths[k]:.3f}" for k in sorted(widths)) + " |"
        )
    return "\n".join(lines) + "\n"


def seen_name(seen: set) -> list[str]:
    return [f"{side}/{measure}" for side, measure in seen]


def _metric(measure: str) -> str:
    from axolotl_paft.merging.scoring import MEASURES

    return MEASURES[measure].metric


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--rows", type=int, default=64)
    opts = parser.parse_args(argv)
    opts.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    adapters = train(opts.out, opts.steps)
    trained = time.time() - started
    print(f"trained in {trained:.0f}s: {adapters}", flush=True)
    result = score(opts, adapters)
    result["provenance"] = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}",
        "versions": {
            p: version(p) for p in ("torch", "transformers", "peft", "trl", "axolotl")
        },
        "train_s": round(trained),
        "total_s": round(time.time() - started),
    }
    (opts.out / "measure_choice.json").write_text(json.dumps(result, indent=2))
    table = render(result)
    (opts.out / "measure_choice.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
