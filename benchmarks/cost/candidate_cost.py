"""Cost of one merge-search candidate: before, `mergekit-yaml`
writes the candidate as a whole model and the search loads it again; after, the
candidate is built in memory on the resident base (`axolotl_paft.merging.inmemory`).
Both in one run, each mode in a fresh child process (its own peak RSS):

- `smollm2`: SmolLM2-135M-Instruct (fp32, `--model-dir`), two random LoRAs
  (rank 16 on every linear layer), scored by the search's own scorer
  (`evaluate.quick_metrics`) on `--rows` synthetic chat rows and pairs;
- `mistral`: a random-init stack of `--layers` Mistral-7B-shaped layers (hidden
  4096, intermediate 14336, 32/8 heads, vocab 1024, saved in bf16 as Mistral-7B
  is), the same LoRAs; its score is a forward over `--rows` x 2 sequences of
  `--tokens` tokens (random ids), the shape of the search's preference pass.

Per candidate: build time (mergekit to disk, or in memory), load time (before
only), score time, bytes written (the process's `wchar` in /proc/self/io) and,
in memory, the bytes the merge's kernels touch and their FLOPs (every aten op's
inputs and outputs, counted under a dispatch mode: no cache reuse, an upper
bound of the traffic), per method. One-off costs: filling the LoRA merge cache
(a full model per adapter, once per search) and loading the base.

Usage: python benchmarks/cost/candidate_cost.py OUT [--models smollm2 mistral]
       [--layers 2] [--rows 16] [--tokens 128] [--methods a,b] [--before-methods a,b]
       [--count]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from axolotl_paft.lab.bench import (
    MISTRAL,
    SMOLLM2,
    make_adapter,
    mistral_stack,
    provenance,
)
from axolotl_paft.merging.configs import DEFAULT_SEARCH_METHODS

BEFORE_METHODS = ("breadcrumbs_ties", "dare_ties")  # the first default, a random one


def written_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise RuntimeError("no wchar in /proc/self/io")


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class Clock:
    """Wall and CPU seconds since the last `lap` (the machine is shared: CPU
    time is the steadier of the two)."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        lap = (wall - self.wall, cpu - self.cpu)
        self.wall, self.cpu = wall, cpu
        return lap


def chat_rows(n: int, tokens: int) -> tuple[list[dict], list[dict]]:
    """`n` SFT rows and `n` pairs of about `tokens` words of fixed filler."""
    rng = random.Random(0)
    words = ["the", "model", "reads", "each", "answer", "and", "weighs", "a", "token"]

    def text(k):
        return " ".join(rng.choice(words) for _ in range(k))

    sft = [
        {
            "messages": [
                {"role": "user", "content": text(tokens // 2)},
                {"role": "assistant", "content": text(tokens // 2)},
            ]
        }
        for _ in range(n)
    ]
    pairs = [
        {
            "question": text(tokens // 2),
            "chosen": text(tokens // 2),
            "rejected": text(tokens // 2),
        }
        for _ in range(n)
    ]
    return sft, pairs


def scorer(kind: str, base: Path, rows: int, tokens: int):
    """(score(model) -> seconds, base-side setup) for `kind`."""
    import torch

    if kind == "smollm2":
        from transformers import AutoTokenizer

        from axolotl_paft.merging.scoring import TextPairs, TextSkill, quick_metrics

        tokenizer = AutoTokenizer.from_pretrained(base)
        sft, pairs = chat_rows(rows, tokens)
        skill, pairs = TextSkill(tokenizer, sft), TextPairs(tokenizer, pairs)
        state = {}

        def score(model):
            if "base_logps" not in state:
                state["base_logps"] = pairs.logps(model)
            return quick_metrics(model, state["base_logps"], skill, pairs)

        return score
    ids = torch.randint(0, MISTRAL["vocab_size"], (2 * rows, tokens))

    @torch.no_grad()
    def forward(model):
        for row in ids:  # row by row, as the search's scorer runs today
            model(input_ids=row[None])

    return forward


def traffic(fn) -> tuple[int, int]:
    """(bytes touched, FLOPs) of `fn()`: every aten op's tensor inputs and
    outputs (views excluded), and the FLOP counter's matmul FLOPs."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten
    from torch.utils.flop_counter import FlopCounterMode

    class Bytes(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if not getattr(func, "is_view", False):
                for t in tree_flatten((args, kwargs, out))[0]:
                    if isinstance(t, torch.Tensor):
                        Bytes.total += t.numel() * t.element_size()
            return out

    flops = FlopCounterMode(display=False)
    with flops, Bytes():
        fn()
    return Bytes.total, flops.get_total_flops()


def child(args) -> dict:
    """One mode on one model: the numbers, as JSON on stdout."""
    import torch

    from axolotl_paft.merging.candidates import (
        Candidate,
        build_candidate,
        candidate_config,
    )
    from axolotl_paft.merging.scoring import load_model

    work = Path(args.work)
    # resolved as the search's configs name them (the LoRA cache is keyed by it)
    base, sft, pref = (
        (work / name).resolve() for name in ("base", "sft", "preference")
    )
    cache = work / f"lora-cache-{args.mode}"
    score = scorer(args.kind, base, args.rows, args.tokens)
    result: dict = {"threads": torch.get_num_threads(), "candidates": {}}
    clock, wrote = Clock(), written_bytes()

    def timed(row: dict, key: str, fn):
        clock.lap()
        value = fn()
        row[f"{key}_s"], row[f"{key}_cpu_s"] = clock.lap()
        return value

    if args.mode == "before":
        from mergekit.common import ModelReference

        def fill():
            for adapter in (sft, pref):  # the LoRA cache, once per search
                ref = ModelReference.model_validate(f"{base}+{adapter}")
                ref.merged(str(cache))

        timed(result, "cache_fill", fill)
        result["cache_fill_bytes"] = written_bytes() - wrote
        for method in args.before_methods:
            row = result["candidates"][method] = {}
            out = work / "candidates" / method
            w0 = written_bytes()
            merged = timed(
                row, "build",
                lambda m=method, o=out: build_candidate(
                    base, sft, pref, Candidate(m), o, cache
                ),
            )  # fmt: skip
            row["bytes_written"] = written_bytes() - w0
            model = timed(row, "load", lambda m=merged: load_model(m))
            timed(row, "score", lambda m=model: score(m))
            row["folder_bytes"] = sum(f.stat().st_size for f in merged.iterdir())
            del model
            shutil.rmtree(merged)
    else:
        from axolotl_paft.merging.inmemory import InMemoryMerges, merge_schedule

        model = timed(result, "load_base", lambda: load_model(base))
        config = candidate_config(str(base), sft, pref, Candidate("ties"))

        def setup():
            merges = InMemoryMerges(model, sft, pref, cache)
            merge_schedule(config, cache)  # fills the LoRA cache the planner reads
            return merges

        merges = timed(result, "setup", setup)
        result["targeted_parameters"] = sum(
            w.numel() for w in merges.base_weights.values()
        )
        result["parameters"] = sum(p.numel() for p in model.parameters())
        score(model)  # base log-probs, as the search computes them once
        for method in args.methods:
            row = result["candidates"][method] = {}
            config = candidate_config(str(base), sft, pref, Candidate(method))
            w0 = written_bytes()
            timed(row, "plan", lambda c=config: merge_schedule(c, cache))
            timed(row, "build", lambda c=config: merges.apply(c))
            timed(row, "score", lambda: score(model))
            timed(row, "restore", merges.restore)
            row["bytes_written"] = written_bytes() - w0
            if args.count:
                row["merge_bytes"], row["merge_flops"] = traffic(
                    lambda c=config: (merges.apply(c), merges.restore())
                )
        result["score_bytes"], result["score_flops"] = traffic(lambda: score(model))
    result["peak_rss_gb"] = peak_rss_gb()
    return result


def prepare(kind: str, work: Path, layers: int) -> None:
    work.mkdir(parents=True, exist_ok=True)
    base = work / "base"
    if not base.exists():
        if kind == "smollm2":
            base.symlink_to(SMOLLM2)
        else:
            mistral_stack(base, layers)
    for seed, name in ((1, "sft"), (2, "preference")):
        if not (work / name).exists():
            make_adapter(base, work / name, seed)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--models", nargs="+", default=["smollm2", "mistral"])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--methods", default=",".join(DEFAULT_SEARCH_METHODS))
    parser.add_argument("--before-methods", default=",".join(BEFORE_METHODS))
    parser.add_argument("--count", action="store_true", help="count merge traffic")
    parser.add_argument("--report", type=Path, help="only the tables of this JSON")
    parser.add_argument("--child", choices=["before", "after"])
    parser.add_argument("--kind")
    parser.add_argument("--work")
    args = parser.parse_args()
    args.methods = args.methods.split(",")
    args.before_methods = args.before_methods.split(",")
    if args.report:
        results = json.loads(args.report.read_text())
        (args.out_dir / "candidate_cost.md").write_text(report(results))
        return
    if args.child:
        args.mode = args.child
        print("RESULT " + json.dumps(child(args)), flush=True)
        return
    command = "python benchmarks/cost/candidate_cost.py " + " ".join(sys.argv[1:])
    results = {"provenance": provenance(command), "models": {}}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for kind in args.models:
        work = args.out_dir / f"work-{kind}"
        prepare(kind, work, args.layers)
        results["models"][kind] = {"layers": args.layers if kind == "mistral" else 30}
        for mode in ("before", "after"):
            print(f"{kind}: {mode}", flush=True)
            run = subprocess.run(
                [sys.executable, __file__, str(args.out_dir), "--child", mode,
                 "--kind", kind, "--work", str(work), "--rows", str(args.rows),
                 "--tokens", str(args.tokens), "--methods", ",".join(args.methods),
                 "--before-methods", ",".join(args.before_methods)]
                + ["--count"] * args.count,
                capture_output=True, text=True, env=os.environ,
            )  # fmt: skip
            line = [x for x in run.stdout.splitlines() if x.startswith("RESULT ")]
            if run.returncode or not line:
                raise SystemExit(f"{kind} {mode} failed:\n{run.stderr[-4000:]}")
            results["models"][kind][mode] = json.loads(line[-1][7:])
            print(json.dumps(results["models"][kind][mode], indent=1), flush=True)
        shutil.rmtree(work / "candidates", ignore_errors=True)
    (args.out_dir / "candidate_cost.json").write_text(json.dumps(results, indent=2))
    (args.out_dir / "candidate_cost.md").write_text(report(results))
    print(report(results))


def report(results: dict) -> str:
    """The tables of candidate_cost.md (wall seconds; CPU seconds in brackets)."""

    def t(row, key):
        return f"{row[key + '_s']:.1f} ({row[key + '_cpu_s']:.1f})"

    lines = []
    for kind, runs in results["models"].items():
        before, after = runs["before"], runs["after"]
        lines += [
            f"## {kind}",
            "",
            f"Peak RSS: before {before['peak_rss_gb']:.2f} GB, after "
            f"{after['peak_rss_gb']:.2f} GB. One-offs: LoRA cache fill "
            f"{t(before, 'cache_fill')} s writing "
            f"{before['cache_fill_bytes'] / 1e9:.2f} GB; in memory, base load "
            f"{t(after, 'load_base')} s and setup (PEFT "
            f"adapters read, LoRA cache fill) {t(after, 'setup')} s. "
            f"{after['targeted_parameters'] / 1e6:.1f}M of "
            f"{after['parameters'] / 1e6:.1f}M parameters targeted; one score pass: "
            f"{after['score_flops'] / 1e9:.1f} GFLOP (matmuls).",
            "",
            "| method | mode | build s | load s | score s | written per candidate "
            "| merge traffic (GB) | traffic per targeted parameter (B) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for method, row in before["candidates"].items():
            lines.append(
                f"| {method} | before: mergekit-yaml to disk | {t(row, 'build')} | "
                f"{t(row, 'load')} | {t(row, 'score')} | "
                f"{row['bytes_written'] / 1e9:.2f} GB | | |"
            )
        for method, row in after["candidates"].items():
            traffic_gb = per_param = ""
            if "merge_bytes" in row:
                traffic_gb = f"{row['merge_bytes'] / 1e9:.1f}"
                per_param = f"{row['merge_bytes'] / after['targeted_parameters']:.0f}"
            lines.append(
                f"| {method} | after: in memory (plan {t(row, 'plan')}) | "
                f"{t(row, 'build')} | 0 | {t(row, 'score')} | "
                f"{row['bytes_written']} B | {traffic_gb} | {per_param} |"
            )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
