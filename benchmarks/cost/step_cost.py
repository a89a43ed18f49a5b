"""Per-optimizer-step cost of parallel mode against the two runs it replaces.

At a CPU size where compute dominates (a randomly initialised Llama of tens of
millions of parameters, a 32k byte-level BPE vocabulary trained on a synthetic
corpus, rows of about 500 tokens at `sequence_len` 512), interleaved for
`--repeats` rounds, each run its own `axolotl train` process:

- `parallel_nocache`: parallel mode, `paft_preference_cache_reference: false`;
- `parallel_cache`: parallel mode with the reference cache (the default);
- `sft`: a plain Axolotl SFT LoRA run; `dpo`: a plain Axolotl `rl: dpo` LoRA run;

same data, batch and steps. Step time comes from the trainer itself: a callback
(benchmarks/cost/step_timer.py) records `perf_counter` at each `on_step_end`; a step's
time is the gap between consecutive step ends (data loading included), and the
first `--warmup` steps are dropped. The preference set holds `--warmup` micro-batches,
so every measured step of `parallel_cache` is past the first pass over it. Peak
memory is the process's peak RSS (`os.wait4`). Prints ratios of medians.

Usage: python benchmarks/cost/step_cost.py [OUT] [--steps N] [--repeats R] [--warmup W]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

from axolotl_paft.lab.bench import (
    STEP_DIMS,
    STEP_FIELD_TOKENS,
    plain_runs,
    provenance,
    rounds_table,
    step_times,
    step_world,
    timed_run,
)

HERE = Path(__file__).resolve().parent


def configs(world, out: Path, steps: int, micro_batch: int) -> dict[str, dict]:
    from axolotl_paft.lab.toy import parallel_config

    common = {
        "max_steps": steps,
        "micro_batch_size": micro_batch,
        "logging_steps": steps,
        "paft_merge_methods": [],
        "paft_report": False,
    }
    sft, dpo = plain_runs(world, out, common)
    parallel = {"paft_l1_lambda": 0, **common}
    return {
        "parallel_nocache": parallel_config(
            world,
            out / "parallel_nocache",
            paft_preference_cache_reference=False,
            **parallel,
        ),
        "parallel_cache": parallel_config(
            world,
            out / "parallel_cache",
            paft_preference_cache_reference=True,
            **parallel,
        ),
        "sft": sft,
        "dpo": dpo,
    }


SCALE_SIZES = {
    "h128-l2": {
        **STEP_DIMS,
        "hidden_size": 128,
        "intermediate_size": 344,
        "num_hidden_layers": 2,
    },
    "h256-l4": STEP_DIMS,
    "h512-l4": {
        **STEP_DIMS,
        "hidden_size": 512,
        "intermediate_size": 1376,
        "num_attention_heads": 8,
    },
}
SCALE_SEQ = (256, 512)


def scaling(out: Path, steps: int, warmup: int, micro_batch: int) -> list[dict]:
    """One parallel-mode run (reference cache on) per model size and sequence length."""
    rows = []
    for size, dims in SCALE_SIZES.items():
        for seq in SCALE_SEQ:
            root = out / f"scale-{size}-{seq}"
            world, _ = step_world(
                root / "world",
                n_sft=64,
                n_preference=warmup * micro_batch,
                dims=dims,
                field_tokens=(seq - 32) // 2,
            )
            config = configs(world, root, steps, micro_batch)["parallel_cache"]
            config["sequence_len"] = seq
            times = root / "steps.json"
            run = timed_run(
                config,
                root / "parallel.yml",
                argv=[
                    sys.executable,
                    str(HERE / "step_timer.py"),
                    str(root / "parallel.yml"),
                ],
                env={"PAFT_STEP_TIMES": str(times)},
            )
            run["step_s"] = step_times(times, warmup)
            run["median_step_s"] = statistics.median(run["step_s"])
            run.update(size=size, sequence_len=seq, parameters=_parameters(world))
            rows.append(run)
            print(f"scale {size} seq {seq}: {run}", flush=True)
    return rows


def _parameters(world) -> int:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(world.model_dir)
    return sum(p.numel() for p in model.parameters())


def plot_scaling(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for seq in SCALE_SEQ:
        sel = [r for r in rows if r["sequence_len"] == seq]
        x = [r["parameters"] / 1e6 for r in sel]
        left.plot(x, [r["median_step_s"] for r in sel], "o-", label=f"seq {seq}")
        right.plot(x, [r["peak_rss_mib"] for r in sel], "o-", label=f"seq {seq}")
    left.set(xlabel="parameters (M)", ylabel="median step (s)", title="step time")
    right.set(xlabel="parameters (M)", ylabel="peak RSS (MiB)", title="peak memory")
    for ax in (left, right):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle("parallel mode (reference cache on), CPU, 2 cores")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir", nargs="?", default="runs/step_cost", type=Path)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--micro-batch", type=int, default=1)
    parser.add_argument("--only", nargs="*", help="run only these (a probe)")
    parser.add_argument(
        "--preference-rows",
        type=int,
        help="preference rows (default: warmup x micro-batch, one pass in warm-up)",
    )
    parser.add_argument(
        "--scale",
        action="store_true",
        help="instead: parallel mode at 3 model sizes x 2 sequence lengths, 1 run each",
    )
    opts = parser.parse_args()
    from axolotl_paft.const import OFFLINE_ENV

    os.environ.update(OFFLINE_ENV)
    command = "python benchmarks/cost/step_cost.py " + " ".join(sys.argv[1:])
    prov = provenance(command)  # at the start: the code and tree that run
    out = opts.out_dir.resolve()
    if opts.scale:
        rows = scaling(out, opts.steps, opts.warmup, opts.micro_batch)
        lines = [
            "| model | params (M) | sequence_len | median step (s) | peak RSS (MiB) |",
            "|---|---|---|---|---|",
            *(
                f"| {r['size']} | {r['parameters'] / 1e6:.1f} | {r['sequence_len']} | "
                f"{r['median_step_s']:.3f} | {r['peak_rss_mib']:.0f} |"
                for r in rows
            ),
        ]
        summary = {"scaling": rows, "provenance": prov}
        (out / "scaling.json").write_text(json.dumps(summary, indent=2))
        (out / "scaling.md").write_text("\n".join(lines) + "\n")
        plot_scaling(rows, out / "scaling.png")
        print("\n".join(lines))
        return
    n_preference = opts.preference_rows or opts.warmup * opts.micro_batch
    world, vocab = step_world(out / "world", n_sft=64, n_preference=n_preference)
    n_params = _parameters(world)
    print(f"model: {n_params / 1e6:.1f}M parameters, vocabulary {vocab}", flush=True)
    runs = configs(world, out, opts.steps, opts.micro_batch)
    if opts.only:
        runs = {k: v for k, v in runs.items() if k in opts.only}
    results: dict[str, list[dict]] = {name: [] for name in runs}
    for round_ in range(opts.repeats):
        for name, config in runs.items():  # interleaved: one of each per round
            times = out / f"{name}.steps.json"
            argv = [
                sys.executable,
                str(HERE / "step_timer.py"),
                str(out / f"{name}.yml"),
            ]
            run = timed_run(
                config,
                out / f"{name}.yml",
                argv=argv,
                env={"PAFT_STEP_TIMES": str(times)},
            )
            run["step_s"] = step_times(times, opts.warmup)
            run["median_step_s"] = statistics.median(run["step_s"])
            results[name].append(run)
            print(
                f"round {round_ + 1}: {name} median step {run['median_step_s']:.3f} s, "
                f"peak RSS {run['peak_rss_mib']:.0f} MiB, wall {run['wall_s']:.0f} s, "
                f"steps {[round(t, 2) for t in run['step_s']]}",
                flush=True,
            )

    med = {
        name: {
            "median_step_s": statistics.median(r["median_step_s"] for r in rs),
            "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in rs),
            "wall_s": statistics.median(r["wall_s"] for r in rs),
        }
        for name, rs in results.items()
    }
    summary = {
        "model": {**STEP_DIMS, "vocab_size": vocab, "parameters": n_params},
        "tokenizer": f"byte-level BPE trained to {vocab} entries on a synthetic corpus",
        "sequence_len": 512,
        "tokens_per_field": STEP_FIELD_TOKENS,
        "micro_batch_size": opts.micro_batch,
        "steps": opts.steps,
        "warmup_steps": opts.warmup,
        "preference_rows": n_preference,
        "repeats": opts.repeats,
        "runs": results,
        "median": med,
        "provenance": prov,
    }
    lines = rounds_table(results, med)
    if {"sft", "dpo", "parallel_nocache", "parallel_cache"} <= set(med):
        separate = med["sft"]["median_step_s"] + med["dpo"]["median_step_s"]
        peak = max(med["sft"]["peak_rss_mib"], med["dpo"]["peak_rss_mib"])
        ratios = {
            "step_parallel_nocache_over_sft_plus_dpo": med["parallel_nocache"][
                "median_step_s"
            ]
            / separate,
            "step_parallel_cache_over_sft_plus_dpo": med["parallel_cache"][
                "median_step_s"
            ]
            / separate,
            "memory_parallel_nocache_over_max_sft_dpo": med["parallel_nocache"][
                "peak_rss_mib"
            ]
            / peak,
            "memory_parallel_cache_over_max_sft_dpo": med["parallel_cache"][
                "peak_rss_mib"
            ]
            / peak,
        }
        summary["ratios"] = ratios
        goals = {
            "step_parallel_nocache_over_sft_plus_dpo": 1.00,
            "step_parallel_cache_over_sft_plus_dpo": 0.85,
            "memory_parallel_nocache_over_max_sft_dpo": 1.05,
            "memory_parallel_cache_over_max_sft_dpo": 1.05,
        }
        lines += ["", "| ratio | measured | goal | met |", "|---|---|---|---|"]
        lines += [
            f"| {k} | {v:.3f} | <= {g:.2f} | {'yes' if v <= g else 'no'} |"
            for k, v in ratios.items()
            for g in [goals[k]]
        ]
    (out / "step_cost.json").write_text(json.dumps(summary, indent=2))
    (out / "step_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
