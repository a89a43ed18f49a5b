"""The examples' L1 and preference rate, measured on the real model.

SmolLM2-135M-Instruct (named by its hub id, built offline by
`axolotl_paft.lab.smollm2`), parallel mode at the examples' LoRA rank and SFT rate
(`paft_mistral.yml`: r 64, alpha 16, all linear layers, learning_rate 2e-4,
max_grad_norm 1, cosine after 3% warm-up), the model's own chat template; SFT on
`a plus b is c.` chat rows, DPO on preference rows of the same arithmetic. Three
runs, each `axolotl train` in this process:

- `base`: L1 off, preference rate 5e-6 (the examples' DPO rate);
- `l1`: as `base` with the examples' `paft_l1_lambda: 1e-4`, `loss` mode;
- `pref_at_sft_rate`: as `base` with the preference rate unset, as it used to
  train: at the SFT rate, 2e-4.

Measured at every evaluation on held-out rows (Axolotl's eval split of the SFT
data, the preference split of parallel mode): the SFT eval loss (the SFT skill;
`base` and `pref_at_sft_rate` must agree, the adapters being independent), and
the preference adapter's TRL metrics (reward accuracy, margin, chosen log-prob:
how far the policy moved its chosen answers from the base's).

Usage: python benchmarks/evidence/real_defaults.py OUT [--steps N] [--micro-batch B]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from axolotl_paft.lab.bench import measured_line, provenance

ARMS = {
    "base": {"paft_l1_lambda": 0.0, "paft_preference_learning_rate": 5e-6},
    "l1": {"paft_l1_lambda": 1e-4, "paft_preference_learning_rate": 5e-6},
    "pref_at_sft_rate": {"paft_l1_lambda": 0.0, "paft_preference_learning_rate": 2e-4},
}
HELD_OUT = 8  # rows held out on each side
KEYS = (
    "eval_loss",
    "eval_dpo/rewards/accuracies",
    "eval_dpo/rewards/margins",
    "eval_dpo/logps/chosen",
    "eval_dpo/logps/rejected",
)


def config(setup, out: Path, steps: int, micro_batch: int, arm: dict) -> dict:
    from axolotl_paft.lab.toy import parallel_config

    return parallel_config(
        setup,
        out,
        sequence_len=256,
        micro_batch_size=micro_batch,
        max_steps=steps,
        lora_r=64,
        lora_alpha=16,
        learning_rate=2e-4,
        lr_scheduler="cosine",
        warmup_ratio=0.03,
        max_grad_norm=1.0,
        val_set_size=HELD_OUT / (steps * micro_batch + HELD_OUT),
        paft_preference_val_set_size=HELD_OUT / (steps * micro_batch + HELD_OUT),
        eval_steps=max(steps // 3, 1),
        logging_steps=max(steps // 3, 1),
        paft_merge_methods=[],
        paft_report=False,
        paft_log_sparsity="all",
        **arm,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--only", nargs="*", choices=list(ARMS))
    opts = parser.parse_args()
    hf_home = Path(tempfile.mkdtemp(prefix="paft-bench-hf-home-"))
    from axolotl_paft.const import OFFLINE_ENV

    os.environ.update(OFFLINE_ENV, HF_HOME=str(hf_home))
    from axolotl.integrations.base import PluginManager

    from axolotl_paft.lab.smollm2 import HUB_ID, hub_cache
    from axolotl_paft.lab.toy import (
        ToySetup,
        preference_rows,
        run_axolotl_train,
        sft_rows,
        write_jsonl,
    )
    from axolotl_paft.plugin import PAFTPlugin

    command = "python benchmarks/evidence/real_defaults.py " + " ".join(sys.argv[1:])
    prov = provenance(command)
    hub_cache(hf_home)
    out = opts.out_dir.resolve()
    rows = opts.steps * opts.micro_batch + HELD_OUT
    setup = ToySetup(
        model_dir=HUB_ID,
        sft_path=write_jsonl(out / "data" / "sft.jsonl", sft_rows(rows)),
        preference_path=write_jsonl(
            out / "data" / "pref.jsonl",
            preference_rows(opts.steps * opts.micro_batch + HELD_OUT),
        ),
    )
    results = {}
    for name in opts.only or ARMS:
        print(f"--- {name}", flush=True)
        run_axolotl_train(
            config(setup, out / name, opts.steps, opts.micro_batch, ARMS[name])
        )
        (plugin,) = [
            p
            for p in PluginManager.get_instance().plugins.values()
            if isinstance(p, PAFTPlugin)
        ]
        history = plugin._callback.trainer.state.log_history
        results[name] = {
            "settings": ARMS[name],
            "evals": [
                {"step": e["step"], **{k: e[k] for k in KEYS if k in e}}
                for e in history
                if "eval_loss" in e
            ],
            "train": [e for e in history if "loss" in e],
        }
    summary = {"results": results, "provenance": prov}
    (out / "real_defaults.json").write_text(json.dumps(summary, indent=2))
    lines = [
        "| run | step | SFT eval loss | pref. accuracy | margin | chosen logp | "
        "rejected logp |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        for e in result["evals"]:
            lines.append(
                f"| {name} | {e['step']} | {e['eval_loss']:.4f} | "
                f"{e['eval_dpo/rewards/accuracies']:.3f} | "
                f"{e['eval_dpo/rewards/margins']:.3f} | "
                f"{e['eval_dpo/logps/chosen']:.2f} | "
                f"{e['eval_dpo/logps/rejected']:.2f} |"
            )
    (out / "real_defaults.md").write_text(
        "\n".join(lines) + "\n\n" + measured_line(prov, command=True) + "\n"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
