"""Delta sparsity: definitions on known tensors, live model == saved adapter."""

from __future__ import annotations

import pytest
import torch

from axolotl_paft.merging.scoring import load_model
from axolotl_paft.training.sparsity import (
    LoraFactors,
    live_lora_factors,
    measure,
    measure_module,
    module_name,
    saved_lora_factors,
    summarize,
)


def test_counts_on_a_known_delta():
    a = torch.tensor([[1.0, 0.0, 0.001]])  # r=1, in=3
    b = torch.tensor([[2.0], [0.0]])  # out=2
    stats = measure_module(LoraFactors("model.layers.3.mlp.up_proj", a, b, 0.5), 0.01)
    # delta = 0.5 * b @ a = [[1, 0, 0.001], [0, 0, 0]]; max 1, threshold 0.01
    assert stats.numel == 6
    assert stats.near_zero == 5
    assert stats.delta_zeros == 4
    assert stats.factor_zeros == 2
    assert stats.l1 == pytest.approx(3.001)
    assert (stats.layer, stats.module_type) == (3, "up_proj")


@pytest.mark.parametrize("chunk_entries", [1, 7, 80, 81 * 8, 10**6])
def test_chunked_counts_equal_the_dense_delta(chunk_entries):
    """Blocks of rows of any size (one row, several, a ragged last block, the
    whole delta) count what the dense delta gives (a block's product may round
    differently in the last bit: no entry here sits that close to the threshold)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(4, 80, generator=generator)  # r=4, in=80
    b = torch.randn(81, 4, generator=generator)  # out=81
    a[:, ::3] = 0  # exact zeros in the delta's columns and in A
    b[5] = 0
    factors = LoraFactors("model.layers.0.self_attn.o_proj", a, b, -0.25)
    delta = (factors.delta()).abs()
    stats = measure_module(factors, 0.1, chunk_entries=chunk_entries)
    assert stats.max_abs == pytest.approx(float(delta.max()), rel=1e-6)
    assert stats.near_zero == int((delta <= 0.1 * delta.max()).sum())
    assert stats.delta_zeros == int((delta == 0).sum()) > 0
    assert stats.numel == 81 * 80


def test_names():
    name = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.sft.weight"
    assert module_name(name) == "model.layers.0.self_attn.q_proj"
    assert module_name("base_model.model.model.layers.0.mlp.up_proj.lora_B.weight") == (
        "model.layers.0.mlp.up_proj"
    )
    embedding = "base_model.model.model.embed_tokens.lora_embedding_B.sft"
    assert module_name(embedding) == "model.embed_tokens"


def test_live_and_saved_measure_the_same(llama_world, adapters):
    model = load_model(llama_world.model_dir, adapters["sft"])
    live = measure(live_lora_factors(model, "default"), 0.01)
    saved = measure(saved_lora_factors(adapters["sft"]), 0.01)
    assert [m.name for m in live] == [m.name for m in saved]
    for x, y in zip(live, saved, strict=True):
        assert (x.near_zero, x.delta_zeros, x.factor_zeros) == (
            y.near_zero,
            y.delta_zeros,
            y.factor_zeros,
        )
        assert x.l1 == pytest.approx(y.l1, rel=1e-6)
    overall = summarize(saved)
    assert 0.45 < overall["lora_exact_zeros"] < 0.55
    assert (
        overall["sparsity"]
        > summarize(measure(saved_lora_factors(adapters["preference"]), 0.01))[
            "sparsity"
        ]
    )
