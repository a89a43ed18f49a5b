"""The end-to-end demo on an embedded default: tiny model and data built locally.

    axolotl-paft-demo [OUT_DIR]

1. builds a tiny, briefly pre-trained Llama, its tokenizer and two JSONL data sets;
2. runs `axolotl train` in PAFT's parallel mode: the L1-sparse SFT LoRA and the DPO
   LoRA train together on one base, and the plugin writes the sparsity report and
   one mergekit config per method;
3. runs `mergekit-yaml` on the TIES config, loads the merged model and answers.
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
from axolotl_paft.toy import build_toy_setup, parallel_config


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", default="runs/demo", type=Path)
    out = parser.parse_args(argv).out_dir.resolve()
    os.environ.update(OFFLINE_ENV)
    out.mkdir(parents=True, exist_ok=True)

    print(f"1/3 building a tiny model and data under {out / 'world'}", flush=True)
    world = build_toy_setup(out / "world")

    print("2/3 axolotl train, parallel mode: SFT + DPO LoRAs on one base", flush=True)
    run_dir = out / "paft"
    config = parallel_config(world, run_dir, max_steps=120)
    config_path = _write_config(out / "paft_parallel.yml", config)
    _run(["axolotl", "train", str(config_path)], out / "train.log")

    print("3/3 mergekit-yaml on the emitted TIES config", flush=True)
    report = json.loads((run_dir / "paft_report.json").read_text())
    merged = out / "merged" / "ties"
    _run(
        [
            "mergekit-yaml",
            report["merge"]["written"]["ties"],
            str(merged),
            "--lora-merge-cache",
            report["merge"]["cache_dir"],
        ],
        out / "mergekit.log",
    )

    for role, section in report["adapters"].items():
        overall = section["overall"]
        print(
            f"{role} delta sparsity: {100 * overall['sparsity']:.1f}% "
            f"(exact zeros in A/B: {100 * overall['lora_exact_zeros']:.1f}%)"
        )
    interference = report["interference"]["overall"]
    print(
        f"overlap of kept entries: {100 * interference['overlap']:.1f}%, "
        f"sign conflicts: {100 * interference['sign_conflicts']:.1f}%"
    )
    print(f"adapters: {run_dir / 'sft'} and {run_dir / 'dpo'}")
    print(f"report: {run_dir / 'paft_report.md'} (+ .json, .png)")
    print(f"mergekit configs: {run_dir / 'mergekit'}")
    print(f"merged model (ties): {merged}")
    question = "What is 12 plus 7?"
    print(f"merged model answers {question!r}: {answer(merged, question)!r}")


if __name__ == "__main__":
    main()
