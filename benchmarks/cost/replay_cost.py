"""Two costs that grew with the vocabulary, before and after, side by side:

- `build`: seconds to build one DARE-TIES and one DELLA candidate in memory
  (`InMemoryMerges.apply` + `restore`, no scoring), before: the untouched
  tensors merged (replayed) to keep mergekit's random order; after: only their
  draws made (`inmemory.draw_untouched`). On the toy Llama (a 400-token
  vocabulary) and on a 262,144 x 640 embedding (`lab.bench.wide_vocab_model`
  with hidden 640 and one layer: Gemma-3-270m's embedding, 62% of its
  parameters, with one small layer), rank-16 LoRAs on every linear layer.
- `score`: peak RSS and seconds of `scoring.span_stats` on the 262k-vocabulary
  model at hidden 16 (its logits are the cost), `--rows` rows of `--tokens`
  random tokens, before: one batch of up to 4096 padded tokens with its fp32
  logits whole; after: SCORE_BATCH_LOGITS and SCORE_CHUNK_LOGITS.

Each (mode, tree) runs in a fresh child process (its own peak RSS), importing
`axolotl_paft` from the earlier commit's `src/` (`git archive`, `--before`) or
this tree's.

Usage: python benchmarks/cost/replay_cost.py OUT [--before REV] [--rows 16]
       [--tokens 128]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
SRC = HERE.parents[2] / "src"


def _status_gb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError(f"no {key}")


def peak_rss_gb() -> float:
    """This process's peak RSS (VmHWM: not getrusage's ru_maxrss, which Linux
    carries over `exec` from the forking parent, here the one holding models)."""
    return _status_gb("VmHWM")


def rss_gb() -> float:
    return _status_gb("VmRSS")


def child_build(base: str, sft: str, pref: str, cache: str, repeats: int) -> dict:
    import torch

    from axolotl_paft.merging.candidates import Candidate, candidate_config
    from axolotl_paft.merging.inmemory import InMemoryMerges
    from axolotl_paft.merging.scoring import load_model

    torch.set_num_threads(1)
    merges = InMemoryMerges(load_model(base), Path(sft), Path(pref), Path(cache))
    warm = candidate_config(base, Path(sft), Path(pref), Candidate("task_arithmetic"))
    merges.apply(warm)  # fills the LoRA merge cache (once per search)
    merges.restore()
    seconds = {}
    for method in ("dare_ties", "della"):
        config = candidate_config(base, Path(sft), Path(pref), Candidate(method))
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            merges.apply(config)
            merges.restore()
            times.append(time.perf_counter() - start)
        seconds[method] = min(times)
    return {"seconds": seconds, "peak_rss_gb": peak_rss_gb()}


def child_score(base: str, rows: int, tokens: int) -> dict:
    import random

    import torch

    from axolotl_paft.merging.scoring import load_model, span_stats

    torch.set_num_threads(1)
    model = load_model(base)
    vocab = model.get_output_embeddings().weight.shape[0]
    rng = random.Random(0)
    spans = [
        ([rng.randrange(vocab) for _ in range(tokens)], tokens // 2, tokens)
        for _ in range(rows)
    ]
    loaded = rss_gb()
    start = time.perf_counter()
    stats = span_stats(model, spans)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "peak_rss_gb": peak_rss_gb(),
        "loaded_rss_gb": loaded,
        "nll_sum": float(stats["nll"].sum()),
    }


def run_child(tree: Path, *args: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, str(HERE), "-", "--child", *args],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--before", default="09fdd52")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--child", nargs="+")
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "build":
            result = child_build(*rest[:4], repeats=int(rest[4]))
        else:
            result = child_score(rest[0], int(rest[1]), int(rest[2]))
        print(json.dumps(result))
        return

    from axolotl_paft.lab.bench import (
        export_tree,
        make_adapter,
        provenance,
        wide_vocab_model,
    )
    from axolotl_paft.lab.toy import build_toy_setup

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    trees = {"before": export_tree(args.before, out / "before-src"), "after": SRC}
    models = {
        "toy": build_toy_setup(out / "toy").model_dir,
        "wide640": out / "wide640",
        "wide16": out / "wide16",
    }
    for name, hidden in (("wide640", 640), ("wide16", 16)):
        if not (models[name] / "config.json").exists():
            wide_vocab_model(models[name], hidden=hidden)
    results = {"provenance": provenance(" ".join(sys.argv)), "build": {}, "score": {}}
    for name in ("toy", "wide640"):
        sft = make_adapter(models[name], out / f"{name}-sft", 1)
        pref = make_adapter(models[name], out / f"{name}-pref", 2)
        for tree, path in trees.items():
            cache = out / f"cache-{name}-{tree}"
            repeats = "3" if name == "toy" else "1"
            row = run_child(
                path, "build", str(models[name]), str(sft), str(pref), str(cache),
                repeats,
            )  # fmt: skip
            results["build"][f"{name}/{tree}"] = row
            print(name, tree, row, flush=True)
    for tree, path in trees.items():
        row = run_child(
            path, "score", str(models["wide16"]), str(args.rows), str(args.tokens)
        )
        results["score"][tree] = row
        print("score", tree, row, flush=True)
    (out / "results_replay_cost.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
