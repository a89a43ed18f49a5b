"""A change's effect on parallel mode's per-step cost: the code of an earlier commit
against the current tree, side by side in one run.

The earlier commit's `src/` is exported (`git archive`) into `OUT/before-src` and
each `axolotl train` process imports `axolotl_paft` from one tree or the other
(`PYTHONPATH`, checked in the child); rounds are interleaved, step times come from
the trainer (benchmarks/cost/step_timer.py), peak memory is the process's peak RSS.

Cases:

- `overhead`: a 32-layer Llama with a tiny hidden size (64), so that
  what is not arithmetic is visible: `--before` the commit whose trainer switched
  adapters with PEFT's `set_adapter` / `disable_adapter` / `set_requires_grad`.
  Also times the switches alone, both implementations imported from their trees,
  on the same model.
- `memory`: step_cost.py's 20M-parameter, 32k-vocabulary model at
  `sequence_len` 512, reference cache off (every step computes the reference
  forward): `--before` the commit whose reference forward ran while the policy
  graph and its logits were alive.

Usage: python benchmarks/cost/before_after.py OUT --case overhead --before REV
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from axolotl_paft.lab.bench import (
    export_tree,
    provenance,
    rounds_table,
    step_times,
    step_world,
    timed_run,
)

HERE = Path(__file__).resolve().parent

OVERHEAD_DIMS = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 32,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


def imported_from(src: Path) -> str:
    """Where a child process with PYTHONPATH=src imports axolotl_paft from."""
    return subprocess.run(
        [sys.executable, "-c", "import axolotl_paft; print(axolotl_paft.__file__)"],
        env={**os.environ, "PYTHONPATH": str(src)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def overhead_world(root: Path):
    """The toy world's data and tokenizer on a random 32-layer, hidden-64 Llama."""
    from transformers import AutoTokenizer

    from axolotl_paft.lab.toy import build_model, build_toy_setup

    world = build_toy_setup(root)
    tokenizer = AutoTokenizer.from_pretrained(world.model_dir)
    build_model(world.model_dir, tokenizer, dims=OVERHEAD_DIMS, pretrain_steps=0)
    return world


def case_configs(case: str, out: Path, steps: int) -> tuple[dict, dict, object]:
    """The `before` and `after` configs of one case (same run; keys the earlier
    code did not have left out of `before`), and the world."""
    from axolotl_paft.lab.toy import parallel_config

    common = {
        "max_steps": steps,
        "logging_steps": steps,
        "paft_l1_lambda": 0,
        "paft_merge_methods": [],
        "paft_report": False,
    }
    if case == "overhead":
        world = overhead_world(out / "world")
        after = parallel_config(
            world, out / "after", micro_batch_size=2, sequence_len=128, **common
        )
        before = {**after, "output_dir": str(out / "before")}
        return before, after, world
    world, _ = step_world(out / "world", n_sft=64, n_preference=64)
    after = parallel_config(
        world,
        out / "after",
        micro_batch_size=1,
        paft_preference_cache_reference=False,
        **common,
    )
    before = {**after, "output_dir": str(out / "before")}
    del before["paft_preference_cache_reference"]  # no cache before it existed
    return before, after, world


def switch_times(world, trees: dict[str, Path], repeats: int, calls: int) -> dict:
    """Seconds per preference micro-batch's worth of adapter switches (into the
    preference adapter, into the base for the reference and back, then back to
    SFT), each tree's own implementation on the same two-adapter model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from axolotl_paft.training.adapters import add_parallel_adapters

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(world.model_dir),
        LoraConfig(r=16, target_modules="all-linear"),
    )
    add_parallel_adapters(model, "sft", "dpo", seed=0)
    trained = ["sft", "dpo"]

    def load(name: str, src: Path):
        # the module's place at the measured commit: training/ since the folders
        package = src / "axolotl_paft"
        path = next(
            p
            for p in (package / "training" / "adapters.py", package / "adapters.py")
            if p.is_file()
        )
        spec = importlib.util.spec_from_file_location(f"adapters_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    def peft_switches(module):
        def micro_batch():
            with (
                module.active_adapter(model, "dpo", trained),
                module.base_only(model, trained),
            ):
                pass

        return micro_batch

    def router_switches(module):
        router = module.AdapterRouter(model)

        def micro_batch():
            with router.through("dpo"), router.through(None):
                pass

        return micro_batch

    runs = {}
    for name, src in trees.items():
        module = load(name, src)
        runs[name] = (
            router_switches(module)
            if hasattr(module, "AdapterRouter")
            else peft_switches(module)
        )
    results: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, micro_batch in runs.items():
            start = time.perf_counter()
            for _ in range(calls):
                micro_batch()
            results[name].append((time.perf_counter() - start) / calls)
    return {name: statistics.median(ts) for name, ts in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--case", choices=("overhead", "memory"), required=True)
    parser.add_argument("--before", required=True, help="git revision")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    opts = parser.parse_args()
    from axolotl_paft.const import OFFLINE_ENV

    os.environ.update(OFFLINE_ENV)
    command = "python benchmarks/cost/before_after.py " + " ".join(sys.argv[1:])
    prov = provenance(command)
    before_rev = subprocess.run(
        ["git", "rev-parse", opts.before],
        cwd=HERE,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    out = opts.out_dir.resolve()
    trees = {
        "before": export_tree(before_rev, out / "before-src"),
        "after": HERE.parents[1] / "src",
    }
    for name, src in trees.items():
        where = imported_from(src)
        assert where.startswith(str(src)), f"{name}: axolotl_paft from {where}"
    before, after, world = case_configs(opts.case, out, opts.steps)
    configs = {"before": before, "after": after}
    results: dict[str, list[dict]] = {name: [] for name in configs}
    for round_ in range(opts.repeats):
        for name, config in configs.items():
            path, times = out / f"{name}.yml", out / f"{name}.steps.json"
            run = timed_run(
                config,
                path,
                argv=[sys.executable, str(HERE / "step_timer.py"), str(path)],
                env={"PAFT_STEP_TIMES": str(times), "PYTHONPATH": str(trees[name])},
            )
            run["median_step_s"] = statistics.median(step_times(times, opts.warmup))
            results[name].append(run)
            print(f"round {round_ + 1}: {name} {run}", flush=True)
    med = {
        name: {
            key: statistics.median(r[key] for r in rs)
            for key in ("median_step_s", "peak_rss_mib", "wall_s")
        }
        for name, rs in results.items()
    }
    summary = {
        "case": opts.case,
        "before": before_rev,
        "steps": opts.steps,
        "warmup_steps": opts.warmup,
        "repeats": opts.repeats,
        "runs": results,
        "median": med,
        "step_ratio_after_over_before": med["after"]["median_step_s"]
        / med["before"]["median_step_s"],
        "peak_rss_ratio_after_over_before": med["after"]["peak_rss_mib"]
        / med["before"]["peak_rss_mib"],
        "provenance": prov,
    }
    lines = [
        f"case `{opts.case}`, before = `{before_rev[:7]}`, after = "
        f"`{prov['commit'][:7]}`{' + changes' if prov['dirty'] else ''}",
        "",
        *rounds_table(results, med, label="code"),
        "",
        f"step after / before: {summary['step_ratio_after_over_before']:.3f}; "
        f"peak RSS after / before: {summary['peak_rss_ratio_after_over_before']:.3f}",
    ]
    if opts.case == "overhead":
        switches = switch_times(world, trees, opts.repeats, calls=200)
        summary["switches_per_micro_batch_s"] = switches
        lines.append(
            "adapter switches per preference micro-batch: "
            + ", ".join(f"{n} {1e3 * s:.3f} ms" for n, s in switches.items())
        )
    (out / f"{opts.case}.json").write_text(json.dumps(summary, indent=2))
    (out / f"{opts.case}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
