"""The paper's ablation in miniature, on the tiny local world (2 CPU cores, minutes).

Candidates, all from the same briefly pre-trained tiny Llama:
- base; SFT only; preference (DPO) only;
- sequential: SFT merged into the base, then DPO trained on top (the usual pipeline);
- PAFT: one parallel run, its two deltas merged by ties / dare_ties /
  task_arithmetic / slerp;
each SFT-bearing candidate with and without L1 on the SFT adapter. Scored on
held-out rows by `axolotl-paft-eval` (SFT greedy match and loss, preference
accuracy against the base, greedy score = mean of greedy match and preference
accuracy),
with both deltas' sparsity.

Usage: python benchmarks/evidence/ablation.py [OUT] [--steps N]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

METHODS = ("ties", "dare_ties", "task_arithmetic", "slerp")


def parallel_runs(world, out: Path, steps: int) -> dict[str, Path]:
    from axolotl_paft.lab.toy import parallel_config, run_axolotl_train

    runs = {}
    for tag, lam in (("l1", None), ("no_l1", 0.0)):
        overrides = {"max_steps": steps, "paft_merge_methods": list(METHODS)}
        if lam is not None:
            overrides["paft_l1_lambda"] = lam
        runs[tag] = out / f"paft_{tag}"
        if not (runs[tag] / "paft_report.json").exists():
            run_axolotl_train(parallel_config(world, runs[tag], **overrides))
    return runs


def sequential(world, sft_adapter: Path, out: Path, steps: int) -> Path:
    """SFT merged into the base, DPO trained on that model, merged again."""
    from axolotl_paft.lab.toy import axolotl_config, run_axolotl_train
    from axolotl_paft.merging.scoring import load_model

    final = out / "model"
    if final.exists():
        return final
    sft_model = out / "sft_merged"
    load_model(world.model_dir, sft_adapter).merge_and_unload().save_pretrained(
        sft_model
    )
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(world.model_dir).save_pretrained(sft_model)
    config = axolotl_config(
        world,
        out / "dpo",
        base_model=str(sft_model),
        rl="dpo",
        rl_beta=0.1,
        datasets=[{"path": str(world.preference_path), "type": "chatml.intel"}],
        max_steps=steps,
    )
    del config["plugins"]
    run_axolotl_train(config)
    load_model(sft_model, out / "dpo").merge_and_unload().save_pretrained(final)
    AutoTokenizer.from_pretrained(world.model_dir).save_pretrained(final)
    return final


def merges(base: Path, run: Path, out: Path) -> dict[str, Path]:
    from axolotl_paft.merging.configs import run_merge_config

    report = json.loads((run / "paft_report.json").read_text())
    cache = Path(report["merge"]["cache_dir"])
    return {
        method: run_merge_config(Path(path), out / method, cache)
        if not (out / method / "model.safetensors").exists()
        else out / method
        for method, path in report["merge"]["written"].items()
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir", nargs="?", default="runs/ablation", type=Path)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--eval-rows", type=int, default=32)
    opts = parser.parse_args()
    from axolotl_paft.const import OFFLINE_ENV

    os.environ.update(OFFLINE_ENV)
    from axolotl_paft.cli.eval import (
        evaluate_candidates,
        render_table,
        write_evaluation,
    )
    from axolotl_paft.lab.toy import build_toy_setup, preference_rows, sft_rows

    out = opts.out_dir.resolve()
    world = build_toy_setup(out / "world")
    runs = parallel_runs(world, out, opts.steps)
    candidates: dict[str, Path] = {"dpo only": runs["no_l1"] / "dpo"}
    sparsity = {}
    for tag, run in runs.items():
        report = json.loads((run / "paft_report.json").read_text())
        sparsity[tag] = {
            role: section["overall"]["sparsity"]
            for role, section in report["adapters"].items()
        }
        candidates[f"sft only ({tag})"] = run / "sft"
        candidates[f"sequential ({tag})"] = sequential(
            world, run / "sft", out / f"sequential_{tag}", opts.steps
        )
        for method, path in merges(world.model_dir, run, out / f"merged_{tag}").items():
            candidates[f"paft {method} ({tag})"] = path

    n = opts.eval_rows
    results = evaluate_candidates(
        world.model_dir,
        candidates,
        sft_rows(n, seed=100),  # held out: other seeds than training
        preference_rows(n, seed=101),
    )
    best = write_evaluation(results, world.model_dir, candidates, out)
    lines = [
        render_table(results),
        "",
        f"best: {best}",
        "",
        "| run | SFT delta sparsity | DPO delta sparsity |",
        "|---|---|---|",
        *(
            f"| {tag} | {100 * s['sft']:.1f}% | {100 * s['preference']:.1f}% |"
            for tag, s in sparsity.items()
        ),
    ]
    (out / "ablation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
