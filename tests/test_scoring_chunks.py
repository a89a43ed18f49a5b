"""Scoring in pieces (`scoring.span_stats`): the logits a batch holds follow the
model's vocabulary, the loss and argmax take a bounded piece of them, and the
numbers equal one pass over every row at once."""

from __future__ import annotations

import random

import pytest
import torch

from axolotl_paft.merging.scoring import (
    SCORE_BATCH_LOGITS,
    load_model,
    span_stats,
    vocabulary_of,
)

UNBOUNDED = {"batch_tokens": 10**9, "batch_logits": 10**18, "chunk_logits": 10**18}


def _spans(vocab: int, lengths: list[int], seed: int = 0) -> list[tuple]:
    rng = random.Random(seed)
    spans = []
    for length in lengths:
        tokens = [rng.randrange(vocab) for _ in range(length)]
        spans.append((tokens, rng.randrange(1, length // 2), length))
    return spans


def _logits_held(model, spans, **limits) -> tuple[dict, int]:
    """`span_stats` and the most logits elements one forward returned."""
    largest = []
    hook = model.register_forward_hook(
        lambda _m, _a, out: largest.append(out.logits.numel())
    )
    try:
        return span_stats(model, spans, **limits), max(largest)
    finally:
        hook.remove()


def _assert_equal(ours: dict, whole: dict) -> None:
    assert set(ours) == set(whole)
    for key in ("tokens", "correct", "exact"):
        assert torch.equal(ours[key], whole[key]), key
    torch.testing.assert_close(ours["nll"], whole["nll"], rtol=1e-6, atol=1e-4)


def test_pieces_equal_one_pass_on_the_toy(llama_world):
    """On the toy Llama (a 400-token vocabulary), with limits small enough that
    a batch holds a few rows and one row's loss is taken in pieces: the same
    numbers as every row in one batch and one loss."""
    model = load_model(llama_world.model_dir)
    vocab = vocabulary_of(model)
    spans = _spans(vocab, [5, 9, 17, 30, 31, 44, 60, 61, 80])
    whole, whole_held = _logits_held(model, spans, **UNBOUNDED)
    limits = {"batch_logits": 90 * vocab, "chunk_logits": 7 * vocab}
    ours, held = _logits_held(model, spans, **limits)
    assert held <= 90 * vocab < whole_held
    _assert_equal(ours, whole)


@pytest.fixture(scope="module")
def wide():
    from axolotl_paft.lab.bench import WIDE_VOCAB, wide_vocab_model

    model = wide_vocab_model()
    assert vocabulary_of(model) == WIDE_VOCAB
    return model


def test_a_262k_vocabulary_batch_holds_bounded_logits(wide):
    """At Gemma-3's 262,144-token vocabulary, by default: no forward returns
    more than SCORE_BATCH_LOGITS logits (512 tokens; one pass over these rows
    returns 650 x 262,144), and the numbers equal that one pass."""
    spans = _spans(vocabulary_of(wide), [50, 80, 100, 120, 130])
    whole, whole_held = _logits_held(wide, spans, **UNBOUNDED)
    ours, held = _logits_held(wide, spans)
    assert held <= SCORE_BATCH_LOGITS < whole_held
    _assert_equal(ours, whole)
