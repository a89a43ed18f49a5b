"""In-memory merge candidates (`merging.inmemory`) against `mergekit-yaml`."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import yaml
from safetensors.torch import load_file

from axolotl_paft.merging.candidates import Candidate, candidate_config
from axolotl_paft.merging.configs import DEFAULT_SEARCH_METHODS, run_merge_config
from axolotl_paft.merging.inmemory import (
    InMemoryMerges,
    InMemoryUnsupported,
    draw_untouched,
    merge_schedule,
)
from axolotl_paft.merging.scoring import load_model


def _mergekit_weights(config: dict, tmp_path, cache) -> dict[str, torch.Tensor]:
    path = tmp_path / f"{config['merge_method']}.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    out = run_merge_config(path, tmp_path / config["merge_method"], cache)
    return {
        name: tensor
        for shard in sorted(out.glob("*.safetensors"))
        for name, tensor in load_file(shard).items()
    }


@pytest.fixture(scope="module")
def resident(llama_world, adapters, tmp_path_factory):
    cache = tmp_path_factory.mktemp("lora-cache") / "run"
    base = str(llama_world.model_dir)
    model = load_model(base)
    merges = InMemoryMerges(model, adapters["sft"], adapters["preference"], cache)
    return merges, base, cache


# Off the default parameters, so density, weights and normalisation all count.
CANDIDATES = [
    Candidate(method, sft_weight=1.25, preference_weight=0.5, density=0.7)
    for method in DEFAULT_SEARCH_METHODS
] + [  # per-layer weights, as mergekit's gradient lists
    Candidate(method, 1.25, 0.5, 0.7, profile=profile)
    for method, profile in (
        ("ties", "lines"),
        ("task_arithmetic", "preference_deep"),
        ("dare_ties", "preference_shallow"),
        ("della", "preference_deep"),
    )
]


@pytest.mark.parametrize("candidate", CANDIDATES, ids=lambda c: c.name)
def test_in_memory_candidate_equals_mergekit_yaml(
    resident, adapters, candidate, tmp_path
):
    """Every searched method, DARE and DELLA included (their masks drawn in
    mergekit's order from the same seed): every tensor of the merge that
    `mergekit-yaml` writes equals the resident model's, max abs diff <= 1e-6."""
    merges, base, cache = resident
    config = candidate_config(
        base, adapters["sft"].resolve(), adapters["preference"].resolve(), candidate
    )
    expected = _mergekit_weights(config, tmp_path, cache)
    before = {n: t.clone() for n, t in merges.model.state_dict().items()}
    with merges.candidate(config) as model:
        ours = model.state_dict()
        assert set(expected) <= set(ours)
        changed, largest = 0, 0.0
        for name, tensor in expected.items():
            diff = (ours[name] - tensor).abs().max().item()
            assert diff <= 1e-6, (name, diff)
            changed += not torch.equal(ours[name], before[name])
            largest = max(largest, diff)
        print(f"{candidate.method}: largest gap to mergekit-yaml {largest:.3g}")
        assert changed == len(merges.layers)  # every targeted weight, nothing else
    after = merges.model.state_dict()
    assert all(torch.equal(after[n], before[n]) for n in before)  # restored


RANDOM_CANDIDATES = [c for c in CANDIDATES if c.method in ("dare_ties", "della")] + [
    Candidate("della", 1.25, 0.5, 0.7, profile="preference_deep")
]


@pytest.mark.parametrize("candidate", RANDOM_CANDIDATES, ids=lambda c: c.name)
def test_dare_and_della_merge_only_the_targeted_tensors(
    resident, adapters, candidate, monkeypatch
):
    """The untouched tensors (embedding, norms, lm_head, the modules no LoRA
    targets) are not merged: mergekit's `merge_tensors` runs once per targeted
    weight, nothing else; their masks' draws are made without a merge (the
    equality test above holds the masks of the targeted ones to mergekit's)."""
    import mergekit.merge_methods.api as api

    merges, base, _ = resident
    config = candidate_config(
        base, adapters["sft"].resolve(), adapters["preference"].resolve(), candidate
    )
    merged, merge_tensors = [], api.merge_tensors

    def counted(*args, **kwargs):
        merged.append(kwargs["name"])
        return merge_tensors(*args, **kwargs)

    monkeypatch.setattr(api, "merge_tensors", counted)
    with merges.candidate(config):
        pass
    assert sorted(merged) == sorted(merges.layers)
    assert len(merges.model.state_dict()) > len(merges.layers)


@pytest.mark.parametrize("candidate", RANDOM_CANDIDATES, ids=lambda c: c.name)
def test_untouched_draws_leave_the_generator_where_mergekits_merge_does(
    resident, adapters, candidate
):
    """For every untouched tensor of a DARE or DELLA candidate (a 1-d norm, the
    embedding, ...): mergekit's own merge of it (every input the base, as the
    search replayed it before) and `draw_untouched`, in pieces smaller than the
    tensor and not dividing it, leave torch's generator in the same state."""
    from mergekit import merge_methods
    from mergekit.merge_methods.api import merge_tensors

    merges, base, cache = resident
    config = candidate_config(
        base, adapters["sft"].resolve(), adapters["preference"].resolve(), candidate
    )
    method = merge_methods.get(config["merge_method"])
    state = merges.model.state_dict()
    untouched = [
        t
        for t in merge_schedule(config, cache)
        if t.output_weight.name not in merges.layers
    ]
    assert {len(state[t.output_weight.name].shape) for t in untouched} == {1, 2}
    for task in untouched:
        tensor = state[task.output_weight.name]
        ids = list(task.model_order)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(3)
            merge_tensors(
                [tensor] * len(ids), method,
                parameters=InMemoryMerges._parameters(task, method), ids=ids,
                base_index=ids.index(task.base_model), dtype=torch.float32,
            )  # fmt: skip
            merged = torch.get_rng_state()
            torch.manual_seed(3)
            drawn = draw_untouched(task, method, tensor.shape, chunk=97)
            assert torch.equal(torch.get_rng_state(), merged), task.output_weight.name
        assert drawn == 2 * tensor.numel()  # both adapters' masks, density 0.7


def test_a_layer_profile_scales_each_layers_delta_by_its_multiplier(resident, adapters):
    """Task arithmetic with the `lines` profile (0.2 of each weight in the first
    layer, all of it in the last): the first layer's merged delta is a fifth of
    the flat merge's, the last layer's is the flat merge's."""
    from axolotl_paft.merging.candidates import PROFILES

    merges, base, _ = resident
    sft, pref = adapters["sft"].resolve(), adapters["preference"].resolve()
    assert PROFILES["lines"].sft == PROFILES["lines"].preference == (0.2, 1.0)
    before = {n: t.clone() for n, t in merges.model.state_dict().items()}
    deltas = {}
    for profile in ("flat", "lines"):
        config = candidate_config(
            base, sft, pref, Candidate("task_arithmetic", profile=profile)
        )
        with merges.candidate(config) as model:
            state = model.state_dict()
            deltas[profile] = {n: state[n] - before[n] for n in merges.layers}
    first = [n for n in merges.layers if ".layers.0." in n]
    last = [n for n in merges.layers if ".layers.1." in n]
    assert first and last
    for name in first:
        torch.testing.assert_close(
            deltas["lines"][name], 0.2 * deltas["flat"][name], atol=1e-6, rtol=1e-4
        )
    for name in last:
        torch.testing.assert_close(
            deltas["lines"][name], deltas["flat"][name], atol=1e-6, rtol=1e-4
        )


def test_two_draws_of_dare_are_the_same_and_differ_by_density(resident, adapters):
    """The masks are drawn from the seed per candidate, not from whatever the
    generator holds: the same config builds the same weights twice; another
    density builds others."""
    merges, base, _ = resident
    sft, pref = adapters["sft"].resolve(), adapters["preference"].resolve()
    name = next(iter(merges.layers))
    weights = []
    for density in (0.5, 0.5, 0.3):
        config = candidate_config(
            base, sft, pref, Candidate("dare_ties", density=density)
        )
        torch.rand(7)  # moves the global generator between candidates
        with merges.candidate(config) as model:
            weights.append(model.state_dict()[name].clone())
    assert torch.equal(weights[0], weights[1])
    assert not torch.equal(weights[0], weights[2])


def test_other_adapters_are_refused_with_the_reason(llama_world, adapters, tmp_path):
    dora = tmp_path / "dora"
    dora.mkdir()
    config = json.loads((adapters["sft"] / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps(config | {"use_dora": True}))
    base = str(llama_world.model_dir)
    with pytest.raises(InMemoryUnsupported, match="use_dora=True"):
        InMemoryMerges(load_model(base), dora, adapters["preference"], tmp_path)


def test_the_search_writes_no_candidate_and_its_winner_scores_as_searched(
    llama_world, adapters, tmp_path
):
    """A search in memory: no model folder per candidate, and the winner that
    mergekit-yaml writes from best.yml scores what the search measured, DARE's
    random drop included."""
    from transformers import AutoTokenizer

    from axolotl_paft.merging.scoring import (
        TextPairs,
        TextSkill,
        quick_metrics,
        read_jsonl,
    )
    from axolotl_paft.merging.search import search

    base = str(llama_world.model_dir)
    skill_rows = read_jsonl(llama_world.sft_path, 4)
    pair_rows = read_jsonl(llama_world.preference_path, 4)
    out = tmp_path / "search"
    result = search(
        llama_world.model_dir, adapters["sft"], adapters["preference"],
        skill_rows, pair_rows, out, budget=3, methods=("dare_ties",),
        objective="score",
    )  # fmt: skip
    assert len(result.leaderboard) == 3
    written = [p for p in (out / "candidates").iterdir() if p.suffix != ".yml"]
    assert written == []
    tokenizer = AutoTokenizer.from_pretrained(base)
    skill, pairs = TextSkill(tokenizer, skill_rows), TextPairs(tokenizer, pair_rows)
    base_logps = pairs.logps(load_model(base))
    rebuilt = quick_metrics(
        load_model(out / "merged" / "best"), base_logps, skill, pairs
    )
    searched = result.leaderboard[0]["metrics"]
    for key, value in rebuilt.items():
        assert value == pytest.approx(searched[key], abs=1e-5), key


def test_the_search_merges_other_adapters_on_disk(
    llama_world, adapters, tmp_path, caplog
):
    """A DoRA adapter is not built in memory: the search says so and builds its
    candidates with mergekit-yaml, deleting each after scoring."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from axolotl_paft.merging.scoring import read_jsonl
    from axolotl_paft.merging.search import search

    model = AutoModelForCausalLM.from_pretrained(llama_world.model_dir)
    config = LoraConfig(r=4, target_modules=["q_proj"], use_dora=True)
    get_peft_model(model, config).save_pretrained(tmp_path / "dora")
    out = tmp_path / "search"
    caplog.set_level(logging.INFO, logger="axolotl.axolotl_paft.merging.search")
    result = search(
        llama_world.model_dir, tmp_path / "dora", adapters["preference"],
        read_jsonl(llama_world.sft_path, 2), read_jsonl(llama_world.preference_path, 2),
        out, budget=1, methods=("ties",), objective="score",
    )  # fmt: skip
    logged = caplog.text
    assert "merged on disk by mergekit" in logged and "use_dora=True" in logged
    assert len(result.leaderboard) == 1
    assert [p.suffix for p in (out / "candidates").iterdir()] == [".yml"]
    assert (out / "merged" / "best" / "model.safetensors").is_file()


def test_on_disk_references_are_scored_merged_as_the_candidates_are(
    llama_world, adapters, tmp_path
):
    """On the on-disk fallback the candidates are mergekit's merges of
    `base+adapter`, while the references were the adapters applied unmerged by
    PEFT: where the two differ (a LoRA on a tied lm_head: merging it moves the
    embeddings too) the same SFT adapter scored NLL 6.75 as a reference and
    7.45 inside a merge. The references are built as mergekit builds them."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from axolotl_paft.merging.scoring import read_jsonl
    from axolotl_paft.merging.search import merged_reference, search

    tied = tmp_path / "tied"
    model = AutoModelForCausalLM.from_pretrained(llama_world.model_dir)
    model.config.tie_word_embeddings = True
    model.lm_head.weight = model.model.embed_tokens.weight
    model.save_pretrained(tied)
    AutoModelForCausalLM.from_pretrained(tied)  # loads tied
    for file in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (tied / file).write_bytes((llama_world.model_dir / file).read_bytes())
    torch.manual_seed(3)
    lora = LoraConfig(
        r=4, target_modules=["q_proj", "lm_head"], use_dora=True,
        init_lora_weights=False,
    )  # fmt: skip
    sft = tmp_path / "sft"
    get_peft_model(AutoModelForCausalLM.from_pretrained(tied), lora).save_pretrained(
        sft
    )
    result = search(
        tied, sft, adapters["preference"],
        read_jsonl(llama_world.sft_path, 4), read_jsonl(llama_world.preference_path, 4),
        tmp_path / "search", budget=1, methods=("task_arithmetic",),
    )  # fmt: skip
    merged = result.scorer(load_model(merged_reference(tied, sft, result.cache)))
    unmerged = result.scorer(load_model(tied, sft))
    reference = result.references["sft"]
    assert reference["sft_loss"] == pytest.approx(merged["sft_loss"], abs=1e-6)
    assert abs(unmerged["sft_loss"] - merged["sft_loss"]) > 1e-3  # they differ
