"""The end-to-end demo on the small miniature world, built locally.

    axolotl-paft-demo [OUT_DIR]

1. builds the small variant of `axolotl_paft.lab.world` (a pre-trained tiny Llama, three
   SFT skills, a preference for a polite style on the same kinds of questions
   when they ask for it: "Please answer politely: ...");
2. runs `axolotl train` in PAFT's parallel mode: the SFT LoRA and the DPO LoRA
   (rate 1/10 of the SFT rate) train together on one base; the plugin writes the
   sparsity report, the mergekit configs and runs the merge search
   (`paft_merge_search`) on held-out rows: mergekit/best.yml and the winner;
3. trains the usual pipeline for comparison: SFT folded in, DPO on top;
4. prints a side-by-side table: base, SFT only, preference only, sequential and
   the searched PAFT merge, each with its skill, preference accuracy and answer.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from axolotl_paft.const import OFFLINE_ENV
from axolotl_paft.lab.toy import parallel_config, write_jsonl

# The miniature world's recipe (axolotl_paft.lab.world.recipe), shortened for the demo.
DEMO_RECIPE = {
    "lora_r": 16,
    "lora_alpha": 32,
    "micro_batch_size": 8,
    "max_steps": 150,
    "learning_rate": 1e-3,
    "paft_merge_methods": ["ties", "task_arithmetic"],
}


def _run(command: list[str], log: Path) -> None:
    """Run a console script of this environment, its output kept in `log`."""
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        **OFFLINE_ENV,
    }
    print(f"$ {' '.join(command)}   (log: {log})", flush=True)
    with log.open("w") as handle:
        done = subprocess.run(command, env=env, stdout=handle, stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"failed ({done.returncode}); last lines of {log}:\n" + _tail(log))


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def answer(model_dir: Path, question: str) -> str:
    """Greedy answer of a causal LM folder to one chat question."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    ids = model.generate(**prompt, max_new_tokens=24, do_sample=False)
    new = ids[0, prompt["input_ids"].shape[1] :]
    return tokenizer.decode(new, skip_special_tokens=True).strip()


def side_by_side(world, candidates: dict[str, Path | None], question: str) -> str:
    """Markdown table: skill exact match and preference accuracy on held-out rows
    (`axolotl_paft.lab.world.heldout_rows`) and one greedy answer per candidate."""
    from axolotl_paft.lab.world import Scorer, fold, heldout_rows

    scorer = Scorer(world.model_dir, *heldout_rows(48))
    lines = [
        "| model | skill (exact match) | preference accuracy | answer to "
        f"{question!r} |",
        "|---|---|---|---|",
    ]
    for name, path in candidates.items():
        metrics = scorer(path)
        if path is None:
            model = world.model_dir
        elif (path / "adapter_config.json").exists():
            model = fold(world.model_dir, path, path.parent / f"{path.name}-model")
        else:
            model = path
        lines.append(
            f"| {name} | {metrics['sft_exact_match']:.2f} | "
            f"{metrics['preference_accuracy']:.2f} | {answer(model, question)!r} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", default="runs/demo", type=Path)
    out = parser.parse_args(argv).out_dir.resolve()
    os.environ.update(OFFLINE_ENV)
    out.mkdir(parents=True, exist_ok=True)
    from axolotl_paft.lab.world import (
        build_world,
        preference_rows,
        sequential,
        skill_rows,
    )

    print(f"1/4 building the small miniature world under {out / 'world'}", flush=True)
    world = build_world(out / "world", "small")
    search_sft = write_jsonl(out / "heldout" / "sft.jsonl", skill_rows(32, 200))
    search_pref = write_jsonl(
        out / "heldout" / "preference.jsonl", preference_rows(32, 201)
    )

    print(
        "2/4 axolotl train, parallel mode: SFT + DPO LoRAs on one base, then the "
        "merge search (paft_merge_search)",
        flush=True,
    )
    run_dir = out / "paft"
    config = parallel_config(
        world,
        run_dir,
        **DEMO_RECIPE,
        paft_preference_learning_rate=DEMO_RECIPE["learning_rate"] / 10,
        paft_merge_search=True,
        paft_merge_search_budget=16,
        paft_merge_search_sft_data=str(search_sft),
        paft_merge_search_preference_data=str(search_pref),
    )
    config_path = _write_config(out / "paft_parallel.yml", config)
    _run(["axolotl", "train", str(config_path)], out / "train.log")

    print("3/4 the usual pipeline for comparison: SFT, then DPO on top", flush=True)
    seq = sequential(
        world,
        run_dir / "sft",
        out / "sequential",
        seed=0,
        steps=DEMO_RECIPE["max_steps"],
        learning_rate=DEMO_RECIPE["learning_rate"] / 10,
    )

    report = json.loads((run_dir / "paft_report.json").read_text())
    for role, section in report["adapters"].items():
        overall = section["overall"]
        print(
            f"{role} delta sparsity: {100 * overall['sparsity']:.1f}% "
            f"(exact zeros in A/B: {100 * overall['lora_exact_zeros']:.1f}%)"
        )
    board = json.loads((run_dir / "search" / "leaderboard.json").read_text())
    print(f"adapters: {run_dir / 'sft'} and {run_dir / 'dpo'}")
    print(f"merge search: {run_dir / 'search' / 'leaderboard.md'} (+ .json, .png)")
    print(f"searched merge: {board['best']}, config {run_dir / 'mergekit/best.yml'}")

    print("4/4 side by side, on held-out questions", flush=True)
    table = side_by_side(
        world,
        {
            "base": None,
            "SFT only": run_dir / "sft",
            "preference only": run_dir / "dpo",
            "sequential SFT->DPO": seq,
            "PAFT merged (searched)": run_dir / "search" / "merged" / "best",
        },
        "What is the opposite of hot?",
    )
    print(table)
    (out / "side_by_side.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
