"""The end-to-end demo on an embedded default: tiny model and data built locally.

    axolotl-paft-demo [OUT_DIR]

1. builds a tiny, briefly pre-trained Llama, its tokenizer and two JSONL data sets;
2. trains a preference LoRA with plain Axolotl (`rl: dpo`), as users do today;
3. trains the L1-sparse SFT LoRA with `axolotl train` and the PAFT plugin, which
   writes the sparsity report and one mergekit config per method;
4. runs `mergekit-yaml` on the TIES config, loads the merged model and answers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from axolotl_paft.toy import ToySetup, axolotl_config, build_toy_setup


def preference_config(world: ToySetup, output_dir: Path) -> dict:
    """Plain Axolotl LoRA DPO on the toy preference data (no plugin)."""
    config = axolotl_config(
        world,
        output_dir,
        rl="dpo",
        rl_beta=0.1,
        datasets=[{"path": str(world.preference_path), "type": "chatml.intel"}],
        learning_rate=3e-3,
        max_steps=40,
    )
    config.pop("plugins")
    return config


def _run(command: list[str], log: Path) -> None:
    """Run a console script of this environment, its output kept in `log`."""
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "DO_NOT_TRACK": "1",
        "AXOLOTL_DO_NOT_TRACK": "1",
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
    out.mkdir(parents=True, exist_ok=True)

    print(f"1/4 building a tiny model and data under {out / 'world'}", flush=True)
    world = build_toy_setup(out / "world")

    print("2/4 preference LoRA, plain Axolotl DPO", flush=True)
    pref_dir = out / "preference"
    pref_cfg = _write_config(out / "preference.yml", preference_config(world, pref_dir))
    _run(["axolotl", "train", str(pref_cfg)], out / "preference.log")

    print("3/4 L1-sparse SFT LoRA, axolotl train + PAFT plugin", flush=True)
    sft_dir = out / "sft"
    sft_config = axolotl_config(
        world, sft_dir, max_steps=120, paft_preference_adapter=str(pref_dir)
    )
    sft_cfg = _write_config(out / "paft_sft.yml", sft_config)
    _run(["axolotl", "train", str(sft_cfg)], out / "sft.log")

    print("4/4 mergekit-yaml on the emitted TIES config", flush=True)
    report = json.loads((sft_dir / "paft_report.json").read_text())
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
    print(f"report: {sft_dir / 'paft_report.md'} (+ .json, .png)")
    print(f"mergekit configs: {sft_dir / 'mergekit'}")
    print(f"merged model (ties): {merged}")
    question = "What is 12 plus 7?"
    print(f"merged model answers {question!r}: {answer(merged, question)!r}")


if __name__ == "__main__":
    main()
