"""Cost of the L1 step and of the logged sparsity measures at Mistral-7B's LoRA
shapes, on this CPU, and what it is as a share of training.

An adapter of rank r on every linear layer of Mistral-7B (32 layers; q, o 4096 x
4096; k, v 1024 x 4096; gate, up 14336 x 4096; down 4096 x 14336). `--layers`
of its 32 layers are built (random factors, no model), and the costs scale by
32 / layers (every layer has the same shapes):

- the sparsity measures of one adapter, as the training logs compute them each
  log step: `before` is the sparsity module of the commit `--before` (one dense
  delta per module), `after` the current tree's (blocks of rows, in place);
  median time and transient memory (the child process's peak RSS above its RSS
  with the factors built, one fresh process per measurement);
- the L1 step of each mode on all factors (it runs at every optimizer step).

The share of training divides by the time of a Mistral-7B parallel-mode step on
this CPU estimated from FLOPs: one SFT row and one preference pair of `--tokens`
tokens each (LoRA: forward 2N and backward 2N FLOPs per token, the reference
forward 2N per preference token; N = 7.24e9), at the dense fp32 matmul rate
measured here at Mistral's MLP shape. A real step runs below that rate, so the
shares printed are upper bounds for this CPU.

Usage: python benchmarks/cost/metric_cost.py OUT --before REV [--layers 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

MISTRAL_LAYERS = 32
MISTRAL_PARAMETERS = 7.24e9
MISTRAL_MODULES = {  # name: (out, in)
    "q_proj": (4096, 4096),
    "k_proj": (1024, 4096),
    "v_proj": (1024, 4096),
    "o_proj": (4096, 4096),
    "gate_proj": (14336, 4096),
    "up_proj": (14336, 4096),
    "down_proj": (4096, 14336),
}


def factors(rank: int, layers: int):
    """Random LoRA factors of `layers` Mistral-7B layers (no temporaries)."""
    import torch

    from axolotl_paft.training.sparsity import LoraFactors

    torch.manual_seed(0)
    return [
        LoraFactors(
            f"model.layers.{layer}.{name}",
            torch.empty(rank, d_in).normal_(std=0.02),
            torch.empty(d_out, rank).normal_(std=0.02),
            2.0,
        )
        for layer in range(layers)
        for name, (d_out, d_in) in MISTRAL_MODULES.items()
    ]


def _rss_mib() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(src: str, rank: int, layers: int) -> None:
    """One measurement in this fresh process: time and transient memory of the
    sparsity measures of `src`'s sparsity module (`PYTHONPATH`); prints JSON."""
    try:  # the module's place at the measured commit: training/ since the folders
        from axolotl_paft.training import sparsity
    except ImportError:
        from axolotl_paft import sparsity

    assert sparsity.__file__.startswith(src), sparsity.__file__
    built = factors(rank, layers)
    rss = _rss_mib()
    start = time.perf_counter()
    summary = sparsity.summarize(sparsity.measure(built, 0.01))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {"seconds": seconds, "transient_mib": peak - rss, "summary": summary}
        )
    )


def measure_in_child(src: Path, rank: int, layers: int) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(src), str(rank), str(layers)],
        env={**os.environ, "PYTHONPATH": str(src)},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def l1_step_seconds(rank: int, layers: int, repeats: int) -> dict[str, float]:
    """The L1 step of each mode on every factor (l1.py's own step functions)."""
    import torch

    from axolotl_paft.training.l1 import add_l1_gradient_, soft_threshold_

    params = [t for f in factors(rank, layers) for t in (f.lora_a, f.lora_b)]
    for p in params:
        p.grad = torch.zeros_like(p)
    shrink, l1_lambda = 1e-5, 1e-3

    def loss_mode():
        for p in params:
            add_l1_gradient_(p, l1_lambda)

    def proximal_mode():
        for p in params:
            soft_threshold_(p, shrink)

    times: dict[str, list[float]] = {"loss": [], "proximal": []}
    for _ in range(repeats):
        for name, step in (("loss", loss_mode), ("proximal", proximal_mode)):
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def matmul_flops_per_second(repeats: int) -> float:
    """Dense fp32 matmul rate at Mistral's MLP shape (512 tokens)."""
    import torch

    x, w = torch.randn(512, 4096), torch.randn(4096, 14336)
    torch.matmul(x, w)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(x, w)
        times.append(time.perf_counter() - start)
    return 2 * 512 * 4096 * 14336 / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--before", required=True, help="git revision")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--ranks", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--logging-steps", type=int, default=10)
    opts = parser.parse_args()
    # here, not at the top: a child imports axolotl_paft from the tree it measures
    from axolotl_paft.lab.bench import export_tree, provenance

    command = "python benchmarks/cost/metric_cost.py " + " ".join(sys.argv[1:])
    prov = provenance(command)
    out = opts.out_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    trees = {
        "before": export_tree(opts.before, out / "before-src"),
        "after": HERE.parents[1] / "src",
    }
    scale = MISTRAL_LAYERS / opts.layers
    rate = matmul_flops_per_second(opts.repeats)
    step_flops = MISTRAL_PARAMETERS * opts.tokens * (4 + 2 * 4 + 2 * 2)
    step_s = step_flops / rate
    rows = []
    for rank in opts.ranks:
        runs: dict[str, list[dict]] = {name: [] for name in trees}
        for _ in range(opts.repeats):  # interleaved
            for name, src in trees.items():
                runs[name].append(measure_in_child(src, rank, opts.layers))
        sparsity = {
            name: runs[name][0]["summary"]["sparsity"] for name in trees
        }  # the same measure either way
        l1 = l1_step_seconds(rank, opts.layers, opts.repeats)
        for name in trees:
            seconds = scale * statistics.median(r["seconds"] for r in runs[name])
            rows.append(
                {
                    "rank": rank,
                    "code": name,
                    "metrics_s": seconds,
                    "transient_mib": statistics.median(
                        r["transient_mib"] for r in runs[name]
                    ),
                    "share_at_logging_steps": seconds / (opts.logging_steps * step_s),
                    "sparsity": sparsity[name],
                    "runs": runs[name],
                }
            )
        rows.append(
            {
                "rank": rank,
                "code": "l1_step",
                "l1_step_s": {k: scale * v for k, v in l1.items()},
                "share_of_a_step": {k: scale * v / step_s for k, v in l1.items()},
            }
        )
        print(json.dumps(rows[-3:], indent=1), flush=True)
    summary = {
        "layers_built": opts.layers,
        "scale_to_32_layers": scale,
        "matmul_flops_per_second": rate,
        "step_flops": step_flops,
        "estimated_step_s": step_s,
        "tokens": opts.tokens,
        "logging_steps": opts.logging_steps,
        "rows": rows,
        "provenance": prov,
    }
    lines = [
        f"Mistral-7B LoRA shapes, all linear layers, 32 layers (built {opts.layers}, "
        f"scaled x{scale:g}); CPU matmul rate {rate / 1e9:.0f} GFLOP/s; estimated "
        f"parallel-mode step on this CPU {step_s:.0f} s ({opts.tokens} tokens per "
        f"row, {step_flops:.3g} FLOPs).",
        "",
        "| rank | code | sparsity measures per log step (s) | transient memory "
        f"(MiB) | share of {opts.logging_steps} steps |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if r["code"] == "l1_step":
            continue
        lines.append(
            f"| {r['rank']} | {r['code']} | {r['metrics_s']:.2f} | "
            f"{r['transient_mib']:.0f} | {100 * r['share_at_logging_steps']:.3f}% |"
        )
    lines += ["", "| rank | L1 step | seconds per step | share of a step |"]
    lines.append("|---|---|---|---|")
    for r in rows:
        if r["code"] == "l1_step":
            for mode, seconds in r["l1_step_s"].items():
                lines.append(
                    f"| {r['rank']} | {mode} | {seconds:.3f} | "
                    f"{100 * r['share_of_a_step'][mode]:.4f}% |"
                )
    (out / "metric_cost.json").write_text(json.dumps(summary, indent=2))
    (out / "metric_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
