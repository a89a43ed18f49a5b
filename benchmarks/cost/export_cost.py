"""What one adapter out costs on the real model: the exact adapter's
gap to mergekit's task-arithmetic merge, the extracted adapter's error and
scores per rank for TIES and DARE-TIES, and the size of every artifact.

SmolLM2-135M-Instruct (fp32 folder of `axolotl_paft.lab.smollm2`) and two
synthetic LoRAs on every linear module (r 16, alpha 32, seeds 1 and 2; A as
PEFT's non-zero init, B random and scaled so each delta is `--delta-norm` of its
weight's Frobenius norm, the size a short fine-tune moves): random deltas are
full rank within their r, so the extraction error here is that of two
independent deltas, not of trained ones. Every merge is mergekit's (float32),
every extraction mergekit-extract-lora's, through `axolotl_paft.merging.export`. The
scores (`quick_metrics`) are on `--rows` held-out rows of the toy world's
arithmetic skill and polite-style preference in SmolLM2's chat template: with
random deltas they say how close the adapter behaves to its merged model, not
how good either is.

Usage: python benchmarks/cost/export_cost.py OUT [--ranks 8 16 32 64] [--rows 16]
[--methods task_arithmetic,ties,dare_ties]; a second call on the same OUT with
other `--methods` adds its rows (the adapters and base are reused; the table is
rebuilt from every adapter folder in OUT, each call's provenance kept).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from axolotl_paft.lab.bench import LINEAR_MODULES, provenance
from axolotl_paft.lab.bench import SMOLLM2 as MODEL


def synthetic_lora(base: Path, out: Path, seed: int, delta_norm: float) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(r=16, lora_alpha=32, target_modules=LINEAR_MODULES)
    model = get_peft_model(model, config)
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "lora_B") and "default" in module.lora_B:
                a = module.lora_A["default"].weight
                b = module.lora_B["default"].weight
                b.normal_()
                delta = b @ a * module.scaling["default"]
                b.mul_(delta_norm * module.base_layer.weight.norm() / delta.norm())
    model.save_pretrained(out)
    return out


def held_out(rows: int):
    from transformers import AutoTokenizer

    from axolotl_paft.lab.toy import preference_rows, sft_rows
    from axolotl_paft.merging.scoring import TextPairs, TextSkill

    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    return (
        TextSkill(tokenizer, sft_rows(rows, seed=100)),
        TextPairs(tokenizer, preference_rows(rows, seed=101)),
    )


def main() -> None:
    from axolotl_paft.merging.configs import (
        MergeDeltas,
        MergeSettings,
        build_config,
        run_merge_config,
        write_config,
    )
    from axolotl_paft.merging.export import export_adapter, folder_size
    from axolotl_paft.merging.scoring import Scorer, load_model

    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--delta-norm", type=float, default=0.01)
    parser.add_argument("--methods", default="task_arithmetic,ties,dare_ties")
    opts = parser.parse_args()
    command = "python benchmarks/cost/export_cost.py " + " ".join(sys.argv[1:])
    out = opts.out
    out.mkdir(parents=True, exist_ok=True)
    sft, pref = out / "sft", out / "pref"
    if not (pref / "adapter_config.json").exists():
        synthetic_lora(MODEL, sft, 1, opts.delta_norm)
        synthetic_lora(MODEL, pref, 2, opts.delta_norm)
    scorer = Scorer.on_rows(*held_out(opts.rows), load_model(str(MODEL)))
    deltas = MergeDeltas(str(MODEL), sft.resolve(), pref.resolve())
    state = out / "export_cost.json"
    results = json.loads(state.read_text()) if state.exists() else {
        "provenance": [],
        "sizes_bytes": {
            "base model (fp32)": folder_size(MODEL),
            "sft adapter": folder_size(sft),
            "preference adapter": folder_size(pref),
        },
        "runs": [],
    }  # fmt: skip
    from importlib.metadata import version

    results["provenance"].append(provenance(command))
    results["provenance"][-1]["versions"]["mergekit"] = version("mergekit")
    for method in opts.methods.split(","):
        ranks = [None] if method == "task_arithmetic" else opts.ranks
        config = build_config(
            method, deltas, MergeSettings(methods=(method,), dtype="float32")
        )
        path = write_config(out / f"{method}.yml", config)
        merged = run_merge_config(path, out / "merged" / method, out / "cache")
        results["sizes_bytes"][f"merged {method} (fp32)"] = folder_size(merged)
        for rank in ranks:
            adapter = out / "adapter" / f"{method}-r{rank}"
            print(f"export {method} rank {rank}", flush=True)
            summary = export_adapter(
                path, str(MODEL), [sft, pref], adapter, merged=merged, rank=rank,
                scorer=scorer,
            )  # fmt: skip
            per_module = summary["gap"].pop("per_module")
            results["runs"] = [
                r for r in results["runs"]
                if (r["method"], r["rank"]) != (method, summary["rank"])
            ]  # fmt: skip
            results["runs"].append(
                {
                    "method": method,
                    "kind": summary["kind"],
                    "rank": summary["rank"],
                    "relative_frobenius": summary["gap"]["relative_frobenius"],
                    "max_abs": summary["gap"]["max_abs"],
                    "worst_module": max(per_module, key=per_module.get),
                    "worst_module_error": max(per_module.values()),
                    "size_bytes": summary["size_bytes"],
                    "scores": summary["scores"],
                }
            )
            state.write_text(json.dumps(results, indent=2))
        shutil.rmtree(merged)
    state.write_text(json.dumps(results, indent=2))
    (out / "export_cost.md").write_text(render(results))
    print(render(results))


def render(results: dict) -> str:
    lines = [
        "| method | adapter | rank | relative error (Frobenius) | worst module | "
        "max abs gap | MB | skill adapter / merged | pref. acc. adapter / merged "
        "| pref. margin adapter / merged |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in results["runs"]:
        a, m = run["scores"]["adapter"], run["scores"]["merged"]
        lines.append(
            f"| {run['method']} | {run['kind']} | {run['rank']} | "
            f"{run['relative_frobenius']:.2e} | {run['worst_module_error']:.2e} "
            f"({run['worst_module']}) | {run['max_abs']:.1e} | "
            f"{run['size_bytes'] / 1e6:.1f} | {a['sft_exact_match']:.3f} / "
            f"{m['sft_exact_match']:.3f} | {a['preference_accuracy']:.3f} / "
            f"{m['preference_accuracy']:.3f} | {a['preference_margin']:.3f} / "
            f"{m['preference_margin']:.3f} |"
        )
    lines += ["", "| artifact | MB |", "|---|---|"]
    lines += [f"| {k} | {v / 1e6:.1f} |" for k, v in results["sizes_bytes"].items()]
    lines.append("")
    for p in results["provenance"]:
        lines.append(
            f"- commit {p['commit']} (dirty: {p['dirty']}), {p['date_utc']}, "
            f"`{p['command']}`, {p['cpu']} ({p['nproc']} cores, OMP_NUM_THREADS "
            f"{p['omp_num_threads']}), versions {p['versions']}"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
