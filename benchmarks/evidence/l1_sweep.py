"""Sweep the L1 strength in both modes: SFT-delta sparsity vs the skill kept.

Skill kept = (base loss - adapter loss) / (base loss - adapter loss at lambda 0),
the loss measured on the assistant tokens of the SFT data. With `--merged`, every
lambda is a parallel-mode run whose TIES merge is also measured (SFT skill kept by
the merge, preference accuracy of the merge on held-out pairs); with
`--preference-l1` the same lambda also applies to the preference adapter. Prints a
Markdown table, writes JSON and a PNG.
Usage: python benchmarks/evidence/l1_sweep.py [out_dir] [--steps N] [--merged]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from axolotl_paft.const import OFFLINE_ENV  # noqa: E402  (cheap: no Axolotl import)

os.environ.update(OFFLINE_ENV)

LAMBDAS = {
    "loss": [0.0, 1e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2],
    "proximal": [0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0],
}


def plot(results: list[dict], path: Path) -> None:
    """Sparsity and skill kept against lambda, one panel per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(LAMBDAS)
    fig, axes = plt.subplots(1, len(modes), figsize=(5 * len(modes), 3.6))
    for ax, mode in zip(axes, modes, strict=True):
        rows = [r for r in results if r["mode"] == mode]
        xs = range(len(rows))
        ax.plot(xs, [r["sparsity"] for r in rows], "o-", label="SFT delta sparsity")
        ax.plot(xs, [r["skill_kept"] for r in rows], "s-", label="skill kept")
        ax.plot(
            xs, [r["lora_exact_zeros"] for r in rows], "^:", label="exact zeros A/B"
        )
        if "merged_skill_kept" in rows[0]:
            merged = [max(r["merged_skill_kept"], 0) for r in rows]
            ax.plot(xs, merged, "D-", label="TIES merge: SFT skill kept")
            accuracy = [r["merged_preference_accuracy"] for r in rows]
            ax.plot(xs, accuracy, "v--", label="TIES merge: preference accuracy")
        ax.set_xticks(xs, [f"{r['lambda']:g}" for r in rows])
        ax.set_xlabel(f"lambda ({mode} mode)")
        ax.set_ylim(0, 1.1)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir", nargs="?", default="runs/l1_sweep")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--arch", default="llama")
    parser.add_argument("--merged", action="store_true")
    parser.add_argument("--preference-l1", action="store_true")
    parser.add_argument("--few", action="store_true", help="every other lambda")
    opts = parser.parse_args()

    from transformers import AutoTokenizer

    from axolotl_paft.lab.toy import (
        axolotl_config,
        build_toy_setup,
        parallel_config,
        preference_rows,
        run_axolotl_train,
        sft_rows,
    )
    from axolotl_paft.merging.scoring import (
        assistant_loss,
        load_model,
        preference_margins,
    )

    out = Path(opts.out_dir)
    world = build_toy_setup(out / "world", arch=opts.arch)
    rows = sft_rows(64)
    tokenizer = AutoTokenizer.from_pretrained(world.model_dir)
    base = load_model(world.model_dir)
    base_loss = assistant_loss(base, tokenizer, rows)
    held_out = preference_rows(32, seed=101)
    results = []
    for mode, lambdas in LAMBDAS.items():
        for lam in lambdas[:: 2 if opts.few else 1]:
            run_dir = out / f"{mode}-{lam:g}"
            overrides = {
                "max_steps": opts.steps,
                "learning_rate": opts.lr,
                "paft_l1_mode": mode,
                "paft_l1_lambda": lam,
                "paft_merge_methods": [],
            }
            if opts.merged:
                overrides |= {"paft_merge_methods": ["ties"], "paft_merge_run": "ties"}
                if opts.preference_l1:
                    overrides["paft_preference_l1_lambda"] = lam
                cfg = run_axolotl_train(parallel_config(world, run_dir, **overrides))
                adapter = run_dir / "sft"
            else:
                cfg = run_axolotl_train(axolotl_config(world, run_dir, **overrides))
                adapter = run_dir
            report = json.loads((run_dir / "paft_report.json").read_text())
            sparsity = report["adapters"]["sft"]["overall"]
            loss = assistant_loss(load_model(world.model_dir, adapter), tokenizer, rows)
            row = {"mode": mode, "lambda": lam, "loss": loss, **sparsity}
            row["steps"] = cfg.max_steps
            if opts.merged:
                merged = load_model(run_dir / "merged" / "ties")
                row["merged_loss"] = assistant_loss(merged, tokenizer, rows)
                margins = preference_margins(merged, base, tokenizer, held_out)
                row["merged_preference_accuracy"] = float((margins > 0).float().mean())
                row["preference_sparsity"] = report["adapters"]["preference"][
                    "overall"
                ]["sparsity"]
            results.append(row)
    gain0 = {r["mode"]: base_loss - r["loss"] for r in results if r["lambda"] == 0}
    lines = [
        f"base loss {base_loss:.4f}; {opts.steps} steps, lr {opts.lr}, {opts.arch}",
        "",
        "| mode | lambda | SFT loss | skill kept | sparsity | exact zeros A/B |",
        "|---|---|---|---|---|---|",
    ]
    if opts.merged:
        lines[-2] += " TIES: SFT skill kept | TIES: pref. accuracy | DPO sparsity |"
        lines[-1] += "---|---|---|"
    for r in results:
        r["skill_kept"] = (base_loss - r["loss"]) / gain0[r["mode"]]
        line = (
            f"| {r['mode']} | {r['lambda']:g} | {r['loss']:.4f} | "
            f"{100 * r['skill_kept']:.0f}% | {100 * r['sparsity']:.1f}% | "
            f"{100 * r['lora_exact_zeros']:.1f}% |"
        )
        if opts.merged:
            r["merged_skill_kept"] = (base_loss - r["merged_loss"]) / gain0[r["mode"]]
            line += (
                f" {100 * r['merged_skill_kept']:.0f}% | "
                f"{100 * r['merged_preference_accuracy']:.0f}% | "
                f"{100 * r['preference_sparsity']:.1f}% |"
            )
        lines.append(line)
    (out / "l1_sweep.json").write_text(json.dumps(results, indent=2))
    plot(results, out / "l1_sweep.png")
    (out / "l1_sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
