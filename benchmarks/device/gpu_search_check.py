"""The in-memory merge candidates on a GPU: one short script
for a session that is lent one (`benchmarks/device/gpu_search_check.sh`). Nothing in
the project depends on it; it has not been run yet (no GPU was lent when it was
written, docs/performance.md).

1. Equality: a small random Llama and two random LoRAs; every searched method's
   candidate built in memory on the GPU (fp32) against `mergekit-yaml`'s merge
   of the same config (on CPU, as the search writes its winner): max abs
   difference per tensor. Deterministic methods should stay within float
   rounding of a GPU matmul (~1e-6); DARE and DELLA draw their masks from the
   GPU's generator, so their difference is that of another draw: printed with
   the share of entries that differ.
2. Cost at 7B shapes: `--layers` Mistral-7B-shaped layers (random, bf16, on the
   GPU), every searched method built in memory (median of 3, synchronized), and
   one forward over 256 sequences of 512 tokens (batches of 16) in bf16: the
   numbers the 7B estimate in docs/performance.md extrapolates, per layer.

Usage: python benchmarks/device/gpu_search_check.py OUT [--layers 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from axolotl_paft.lab.bench import (
    MISTRAL,
    copy_smollm2_tokenizer,
    make_adapter,
    mistral_stack,
)
from axolotl_paft.merging.candidates import Candidate, candidate_config
from axolotl_paft.merging.configs import (
    DEFAULT_SEARCH_METHODS,
    run_merge_config,
    write_config,
)
from axolotl_paft.merging.inmemory import InMemoryMerges


def tiny_llama(out: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=256, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, vocab_size=49152,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(out)
    copy_smollm2_tokenizer(out)
    return out


def equality(work: Path) -> dict:
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    base = tiny_llama(work / "llama").resolve()
    sft = make_adapter(base, work / "sft", 1, rank=8).resolve()
    pref = make_adapter(base, work / "pref", 2, rank=8).resolve()
    cache = work / "lora-cache"
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).cuda()
    merges = InMemoryMerges(model, sft, pref, cache)
    rows = {}
    for method in DEFAULT_SEARCH_METHODS:
        config = candidate_config(str(base), sft, pref, Candidate(method, density=0.7))
        path = write_config(work / f"{method}.yml", config)
        out = run_merge_config(path, work / method, cache)
        expected = load_file(out / "model.safetensors")
        with merges.candidate(config) as merged:
            ours = merged.state_dict()
            diffs = {
                n: (ours[n].cpu() - t).abs() for n, t in expected.items() if n in ours
            }
        rows[method] = {
            "max_abs_diff": max(d.max().item() for d in diffs.values()),
            "share_differing_1e-6": sum((d > 1e-6).sum().item() for d in diffs.values())
            / sum(d.numel() for d in diffs.values()),
        }
        print(method, rows[method], flush=True)
    return rows


def cost(work: Path, layers: int) -> dict:
    from transformers import MistralForCausalLM

    base = mistral_stack(work / "mistral", layers)
    sft = make_adapter(base, work / "m-sft", 1).resolve()
    pref = make_adapter(base, work / "m-pref", 2).resolve()
    base = base.resolve()
    model = MistralForCausalLM.from_pretrained(base, dtype=torch.bfloat16).cuda()
    merges = InMemoryMerges(model, sft, pref, work / "m-cache")
    result = {"layers": layers, "build_s": {}}
    for method in DEFAULT_SEARCH_METHODS:
        config = candidate_config(str(base), sft, pref, Candidate(method))
        times = []
        for _ in range(3):
            torch.cuda.synchronize()
            start = time.perf_counter()
            merges.apply(config)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
            merges.restore()
        result["build_s"][method] = statistics.median(times)
        print(method, result["build_s"][method], flush=True)
    result["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 2**30
    ids = torch.randint(0, MISTRAL["vocab_size"], (16, 512), device="cuda")
    with torch.no_grad():
        model(input_ids=ids)  # warm-up
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(256 // 16):
            model(input_ids=ids)
        torch.cuda.synchronize()
    result["forward_256x512_s"] = time.perf_counter() - start
    print(result, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: nothing to check")
    result = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "equality": equality(args.out_dir / "eq"),
        "cost": cost(args.out_dir / "cost", args.layers),
    }
    (args.out_dir / "gpu_search_check.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
