"""Parallel mode against the two runs it replaces, measured side by side.

On one tiny config, interleaved for `--repeats` rounds: (i) one parallel-mode run,
(ii) a plain Axolotl SFT LoRA run plus a plain Axolotl `rl: dpo` LoRA run with the
same steps, batch and data; plus parallel runs with L1 on and off. Each run is a
separate `axolotl train` process (what users time), measured for wall time and
peak RSS (the GPU's max allocated memory when there is one). Prints a Markdown table
and writes JSON.

Usage: python benchmarks/cost/parallel_vs_separate.py [OUT] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

from axolotl_paft.lab.bench import plain_runs, timed_run

STEPS = 40


def configs(world, out: Path) -> dict[str, dict]:
    from axolotl_paft.lab.toy import parallel_config

    common = {"max_steps": STEPS, "paft_merge_methods": [], "paft_report": False}
    sft, dpo = plain_runs(world, out, common)
    return {
        "parallel": parallel_config(world, out / "parallel", **common),
        "parallel_no_l1": parallel_config(
            world, out / "parallel_no_l1", paft_l1_lambda=0, **common
        ),
        "sft": sft,
        "dpo": dpo,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir", nargs="?", default="runs/bench", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    opts = parser.parse_args()
    from axolotl_paft.const import OFFLINE_ENV

    os.environ.update(OFFLINE_ENV)
    from axolotl_paft.lab.toy import build_toy_setup

    out = opts.out_dir.resolve()
    world = build_toy_setup(out / "world")
    runs = configs(world, out)
    results: dict[str, list[dict]] = {name: [] for name in runs}
    for round_ in range(opts.repeats):
        for name, config in runs.items():  # interleaved: one of each per round
            results[name].append(timed_run(config, out / f"{name}.yml"))
            print(f"round {round_ + 1}: {name} {results[name][-1]}", flush=True)

    med = {
        name: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        for name, rs in results.items()
    }
    separate_wall = med["sft"]["wall_s"] + med["dpo"]["wall_s"]
    summary = {
        "steps": STEPS,
        "repeats": opts.repeats,
        "median": med,
        "wall_ratio_parallel_over_sft_plus_dpo": med["parallel"]["wall_s"]
        / separate_wall,
        "memory_ratio_parallel_over_max_sft_dpo": med["parallel"]["peak_rss_mib"]
        / max(med["sft"]["peak_rss_mib"], med["dpo"]["peak_rss_mib"]),
        "l1_overhead": med["parallel"]["wall_s"] / med["parallel_no_l1"]["wall_s"] - 1,
        "device": "cpu (peak RSS of the axolotl process)",
    }
    (out / "bench.json").write_text(json.dumps(summary, indent=2))
    lines = [
        "| run | median wall (s) | median peak RSS (MiB) |",
        "|---|---|---|",
        *(
            f"| {n} | {m['wall_s']:.1f} | {m['peak_rss_mib']:.0f} |"
            for n, m in med.items()
        ),
        "",
        f"wall parallel / (SFT + DPO): "
        f"{summary['wall_ratio_parallel_over_sft_plus_dpo']:.2f}",
        f"peak memory parallel / max(SFT, DPO): "
        f"{summary['memory_ratio_parallel_over_max_sft_dpo']:.2f}",
        f"L1 overhead (whole run): {100 * summary['l1_overhead']:.1f}%",
    ]
    (out / "bench.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
