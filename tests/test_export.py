"""One adapter out: the exact adapter equals mergekit's merge; the extracted one
loads, generates, and reports its error and scores."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
import yaml

from axolotl_paft.merging.configs import (
    MergeDeltas,
    MergeSettings,
    build_config,
    run_merge_config,
)
from axolotl_paft.merging.export import (
    NotExact,
    exact_plan,
    export_adapter,
    extract_command,
    lora_modules,
    lora_modules_or_names,
    target_rank,
)


def lora(base_dir, out_dir, seed, **config):
    """A saved PEFT LoRA with non-zero A and B and the given LoraConfig keys."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    settings = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    model = get_peft_model(
        model, LoraConfig(**(settings | config), init_lora_weights=False)
    )
    model.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def unlike(llama_world, tmp_path_factory):
    """An SFT and a preference LoRA as unlike as PEFT allows: ranks 4 and 2,
    rsLoRA on one, a rank_pattern and alpha_pattern, different target sets."""
    root = tmp_path_factory.mktemp("unlike")
    sft = lora(
        llama_world.model_dir, root / "sft", 1,
        target_modules=["q_proj", "v_proj", "down_proj"],
        rank_pattern={"down_proj": 3}, alpha_pattern={"down_proj": 5},
    )  # fmt: skip
    preference = lora(
        llama_world.model_dir, root / "pref", 2, r=2, lora_alpha=3,
        use_rslora=True, target_modules=["q_proj", "k_proj"],
    )  # fmt: skip
    return sft, preference


def merge(llama_world, sft, preference, tmp_path, method, **settings):
    """mergekit's merge of the two adapters (float32) and its config path."""
    deltas = MergeDeltas(
        str(llama_world.model_dir), sft.resolve(), preference.resolve()
    )
    config = build_config(
        method, deltas, MergeSettings(methods=(method,), dtype="float32", **settings)
    )
    path = tmp_path / f"{method}.yml"
    path.write_text(yaml.safe_dump(config))
    return path, run_merge_config(path, tmp_path / method, tmp_path / "cache")


def peft_merged(base_dir, adapter):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()


@pytest.mark.parametrize(
    "method, settings",
    [
        ("task_arithmetic", {}),
        (
            "task_arithmetic",
            {
                "sft_weight": 0.7,
                "preference_weight": 1.3,
                "lambda_": 0.8,
                "normalize": True,
            },
        ),  # fmt: skip
        ("linear", {"sft_weight": 0.25, "preference_weight": 1.5}),
    ],
)
def test_exact_adapter_is_mergekits_merge(
    llama_world, unlike, tmp_path, method, settings
):
    """PEFT's merge of the one adapter into the base equals mergekit's merged
    model, every tensor within 1e-6 in float32."""
    from safetensors.torch import load_file

    config, merged = merge(llama_world, *unlike, tmp_path, method, **settings)
    out = tmp_path / "adapter"
    summary = export_adapter(config, str(llama_world.model_dir), list(unlike), out,
                             merged=merged)  # fmt: skip
    assert summary["kind"] == "exact"
    assert summary["rank"] == 4 + 2  # every module padded to r_s + r_p
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["r"] == adapter_config["lora_alpha"] == 6
    assert sorted(adapter_config["target_modules"]) == [
        "down_proj", "k_proj", "q_proj", "v_proj",
    ]  # fmt: skip
    ours = peft_merged(llama_world.model_dir, out).state_dict()
    theirs = load_file(merged / "model.safetensors")
    gaps = {k: float((ours[k] - v).abs().max()) for k, v in theirs.items()}
    assert max(gaps.values()) < 1e-6, sorted(gaps.items(), key=lambda kv: -kv[1])[:3]
    assert summary["gap"]["max_abs"] < 1e-6
    assert summary["gap"]["relative_frobenius"] < 1e-6
    # the adapters' deltas are really there: the merge moved the targeted modules
    base = load_file(llama_world.model_dir / "model.safetensors")
    moved = [k for k in theirs if not torch.equal(theirs[k], base[k])]
    assert any("k_proj" in k for k in moved) and any("down_proj" in k for k in moved)


def test_exact_plan_follows_mergekit_normalize_and_lambda(unlike):
    """task_arithmetic: lambda * w, divided by sum(w) only with normalize (its
    default: off); linear: normalized by default; without, only a weight sum of
    1 leaves the base whole."""
    sft, preference = unlike
    ref = {"sft": f"B+{sft.resolve()}", "pref": f"B+{preference.resolve()}"}

    def config(method, parameters, ws=(1.0, 3.0)):
        return {
            "merge_method": method,
            "models": [
                {"model": ref["sft"], "parameters": {"weight": ws[0]}},
                {"model": ref["pref"], "parameters": {"weight": ws[1]}},
            ],
            "parameters": parameters,
        }

    def coefficients(c):
        return [w for _, w in exact_plan(c, [sft, preference])]

    assert coefficients(config("task_arithmetic", {})) == [1.0, 3.0]
    assert coefficients(
        config("task_arithmetic", {"lambda": 0.5, "normalize": True})
    ) == [0.125, 0.375]  # noqa: E501
    assert coefficients(config("linear", {})) == [0.25, 0.75]
    assert coefficients(config("linear", {"normalize": False}, (0.4, 0.6))) == [
        0.4,
        0.6,
    ]
    with pytest.raises(NotExact, match="scales the base by 4"):
        exact_plan(config("linear", {"normalize": False}), [sft, preference])
    with pytest.raises(NotExact, match="ties merges are not a sum"):
        exact_plan(config("ties", {}), [sft, preference])


def test_dora_is_refused_by_name(llama_world, tmp_path):
    """A DoRA adapter's merge is no LoRA sum: the export names the key (and
    extracts instead, from the module names it still reads)."""
    dora = lora(llama_world.model_dir, tmp_path / "dora", 3, use_dora=True)
    with pytest.raises(NotExact, match="use_dora is set"):
        lora_modules(dora)
    names = lora_modules_or_names(dora)
    assert len(names) == 4 and all(n.endswith(("q_proj", "v_proj")) for n in names)


def test_extracted_adapter_error_falls_with_rank_and_it_generates(
    llama_world, adapters, tmp_path, caplog
):
    """TIES is not low rank. `paft_merge_export: adapter` on the TIES config the
    run names (`paft_merge_run`) builds the merge (with the config's own LoRA
    cache), extracts it with mergekit-extract-lora at `paft_merge_export_rank`
    2, reports the error and the scores beside the merged model's, and removes
    the merge; at rank 64 (full rank on the toy) the error is 0. The adapter
    loads with PEFT and generates. Its error exceeds `paft_merge_export_max_error`
    (0.05): paft_export.json says `within_bound: false` with the rank that meets
    the bound (mergekit's extraction at that rank does, one below does not), and
    the run's last log line is a warning that says so."""
    from transformers import AutoTokenizer

    from axolotl_paft.config.args import PAFTArgs
    from axolotl_paft.merging.configs import write_merge_configs
    from axolotl_paft.merging.export import export_run_adapters
    from axolotl_paft.merging.scoring import (
        Scorer,
        TextPairs,
        TextSkill,
        load_model,
        read_jsonl,
    )

    base = str(llama_world.model_dir)
    args = PAFTArgs(
        paft_merge_methods=["ties"], paft_merge_run="ties",
        paft_merge_export="adapter", paft_merge_export_rank=2,
        paft_merge_dtype="float32",
    )  # fmt: skip
    deltas = MergeDeltas(
        base, adapters["sft"].resolve(), adapters["preference"].resolve()
    )
    emitted = write_merge_configs(tmp_path / "mergekit", deltas, args.merge_settings())
    tokenizer = AutoTokenizer.from_pretrained(base)
    held_out = (
        TextSkill(tokenizer, read_jsonl(llama_world.sft_path, 4)),
        TextPairs(tokenizer, read_jsonl(llama_world.preference_path, 4)),
    )
    scorer = Scorer.on_rows(*held_out, load_model(base))
    caplog.set_level(logging.INFO, logger="axolotl.axolotl_paft.merging.export")
    written = export_run_adapters(
        tmp_path, base, adapters, args, emitted, scorer=scorer
    )
    assert written == [tmp_path / "adapter" / "ties"]
    summary = json.loads((written[0] / "paft_export.json").read_text())
    assert summary["kind"] == "extracted" and "ties" in summary["why_not_exact"]
    assert summary["rank"] == 2
    assert summary["gap"]["relative_frobenius"] > 0.05  # rank 2 loses part of it
    modules = summary["gap"]["per_module"]
    assert len(modules) == 3 * 2  # q, v, down in both layers: nothing else
    assert all(n.endswith(("q_proj", "v_proj", "down_proj")) for n in modules)
    scores = summary["scores"]
    assert set(scores) == {"measures", "merged", "adapter"}
    assert scores["measures"] == {"skill": "exact_match", "preference": "margin"}
    assert set(scores["adapter"]) >= {"sft_exact_match", "preference_margin"}
    assert scores["adapter"] != scores["merged"]  # rank 2 costs something
    assert not (tmp_path / "paft_merged" / "ties").exists()  # built for it, removed
    assert any(emitted.cache_dir.iterdir())  # the config's own LoRA cache
    error = summary["gap"]["relative_frobenius"]
    assert summary["max_error"] == 0.05 and summary["within_bound"] is False
    suggested = summary["suggested_rank"]
    assert 2 < suggested <= 64
    last = caplog.records[-1]
    assert last.levelname == "WARNING" and str(written[0]) in last.getMessage()
    assert f"relative error {error:.2g}" in last.getMessage()
    assert "paft_merge_export_max_error 0.05" in last.getMessage()
    assert f"paft_merge_export_rank: {suggested}" in last.getMessage()
    merged_ties = run_merge_config(
        emitted.written["ties"], tmp_path / "merged-ties", emitted.cache_dir
    )
    for rank, within in ((suggested, True), (suggested - 1, False)):
        at = export_adapter(
            emitted.written["ties"], base, [adapters["sft"], adapters["preference"]],
            tmp_path / f"r{rank}", merged=merged_ties, rank=rank,
        )  # fmt: skip
        assert at["within_bound"] is within, (rank, at["gap"]["relative_frobenius"])
        assert (at["gap"]["relative_frobenius"] <= 0.05) is within
        assert ("suggested_rank" in at) is not within

    full = export_adapter(
        emitted.written["ties"], base, [adapters["sft"], adapters["preference"]],
        tmp_path / "r64", merged=merged_ties, rank=64,
    )  # fmt: skip
    assert full["gap"]["relative_frobenius"] < 1e-5  # the toy's widths are < 64
    model = peft_merged(llama_world.model_dir, written[0])
    ids = tokenizer("What is 2 plus 3?", return_tensors="pt").input_ids
    answer = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert answer.shape[1] > ids.shape[1]


def test_extraction_touches_the_targeted_modules_only():
    """One exclusion regex keeps every other module, embeddings included, out
    of the extracted adapter (mergekit would save them whole)."""
    import re

    command = extract_command("B", "M", "O", 8, ["q_proj", "v_proj"])
    pattern = command[command.index("--exclude-regex") + 1]
    for name in ("model.embed_tokens", "lm_head", "model.layers.0.mlp.up_proj"):
        assert re.search(pattern, name)
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.11.self_attn.v_proj"):
        assert not re.search(pattern, name)
    assert "--embed-lora" not in command


def test_vllm_rank_choice():
    assert [target_rank(r) for r in (6, 16, 17, 512, 513)] == [8, 16, 32, 512, None]


def test_a_qlora_run_exports_against_the_full_precision_base(llama_world, tmp_path):
    """`paft_merge_export: both` after a parallel QLoRA (`load_in_4bit`) run:
    the emitted config names the full-precision base, and the named method's
    merge (task arithmetic) is kept as a merged model and exported as an exact
    adapter whose delta equals merged - base within 1e-6 (a 4-bit base, off by
    its quantization error, could not match), the log naming the adapter."""
    from axolotl_paft.lab.toy import parallel_config, run_axolotl_train

    out = tmp_path / "run"
    run_axolotl_train(
        parallel_config(
            llama_world, out, max_steps=2, adapter="qlora", load_in_4bit=True,
            paft_merge_export="both", paft_merge_methods=["task_arithmetic", "ties"],
            paft_merge_run="task_arithmetic", paft_merge_dtype="float32",
        )
    )  # fmt: skip
    config = yaml.safe_load((out / "mergekit/task_arithmetic.yml").read_text())
    assert config["base_model"] == str(llama_world.model_dir.resolve())
    exact = json.loads((out / "adapter/task_arithmetic/paft_export.json").read_text())
    assert exact["kind"] == "exact" and exact["rank"] == 16  # lora_r 8 + 8
    assert exact["gap"]["max_abs"] < 1e-6
    assert (out / "paft_merged/task_arithmetic/model.safetensors").is_file()
    assert not (out / "adapter/ties").exists()  # the method named, no other


def test_paft_merge_export_needs_something_to_export(llama_world, tmp_path):
    from conftest import validate

    config = parallel_config_for(llama_world, tmp_path, paft_merge_methods=[])
    with pytest.raises(
        ValueError,
        match=r"paft_merge_export: 'adapter' .* neither: set paft_merge_search: "
        r"true, or paft_merge_methods and paft_merge_run",
    ):
        validate(config)


def test_an_adapter_nobody_named_is_refused_not_exported(llama_world, tmp_path):
    """Without the search and `paft_merge_run`, `paft_merge_export: adapter`
    exported the first config written: at Gemma-3-270m breadcrumbs-TIES,
    extracted at rank 32 with relative error 0.35 in 6.4 minutes, an adapter
    nobody asked for. Now refused before training, naming the keys to set."""
    from conftest import validate

    config = parallel_config_for(
        llama_world, tmp_path, paft_merge_methods=["breadcrumbs_ties", "linear"]
    )
    with pytest.raises(
        ValueError,
        match=r"paft_merge_export: 'adapter' exports the search's winner or the "
        r"method paft_merge_run names, and this config has neither: set "
        r"paft_merge_run to one of \['breadcrumbs_ties', 'linear'\] \(linear: "
        r"an exact adapter\), or paft_merge_search: true",
    ):
        validate(config)
    validate(parallel_config_for(
        llama_world, tmp_path, paft_merge_methods=["breadcrumbs_ties", "linear"],
        paft_merge_run="linear",
    ))  # fmt: skip


def parallel_config_for(llama_world, tmp_path, **overrides):
    from axolotl_paft.lab.toy import parallel_config

    return parallel_config(
        llama_world, tmp_path / "out", paft_merge_export="adapter", **overrides
    )


def test_sweep_search_exports_the_best_as_one_adapter(llama_world, adapters, tmp_path):
    """`axolotl-paft-sweep --search --export adapter`: the best (task arithmetic,
    exact) scores as its merged model does on the same held-out rows."""
    from axolotl_paft.cli.sweep import main

    out = tmp_path / "search"
    main(
        [
            "--base", str(llama_world.model_dir),
            "--sft", str(adapters["sft"]), "--preference", str(adapters["preference"]),
            "--search", "--budget", "1", "--methods", "task_arithmetic",
            "--sft-data", str(llama_world.sft_path),
            "--preference-data", str(llama_world.preference_path),
            "--limit", "4", "--out", str(out), "--export", "adapter",
        ]
    )  # fmt: skip
    summary = json.loads((out / "adapter/best/paft_export.json").read_text())
    assert summary["kind"] == "exact" and summary["gap"]["max_abs"] < 1e-6
    assert summary["within_bound"] is True and "suggested_rank" not in summary
    merged, adapter = summary["scores"]["merged"], summary["scores"]["adapter"]
    assert adapter["sft_exact_match"] == merged["sft_exact_match"]
    assert adapter["preference_margin"] == pytest.approx(
        merged["preference_margin"], abs=1e-4
    )


@pytest.mark.slow
def test_real_model_exact_and_extracted_adapters(smollm2, tmp_path):
    """SmolLM2-135M-Instruct (tied embeddings, GQA): the exact adapter
    reproduces mergekit's task-arithmetic merge within 1e-6; the extracted TIES
    adapter at rank 8 loads, generates, and reports its error. The base is the
    hub id's cached snapshot folder: mergekit 0.1.5 lists a hub id's files
    online even when it is cached (hub ids offline are the hub-id work's)."""
    from huggingface_hub import snapshot_download
    from transformers import AutoTokenizer

    smollm2 = snapshot_download(smollm2, local_files_only=True)

    sft = lora(smollm2, tmp_path / "sft", 1, r=8, lora_alpha=16)
    preference = lora(smollm2, tmp_path / "pref", 2, r=8, lora_alpha=16,
                      target_modules=["q_proj", "k_proj", "o_proj"])  # fmt: skip
    world = type("World", (), {"model_dir": smollm2})
    for method, rank in (("task_arithmetic", None), ("ties", 8)):
        config, merged = merge(world, sft, preference, tmp_path, method)
        out = tmp_path / f"adapter-{method}"
        summary = export_adapter(config, smollm2, [sft, preference], out,
                                 merged=merged, rank=rank)  # fmt: skip
        if method == "task_arithmetic":
            assert summary["kind"] == "exact" and summary["rank"] == 16
            assert summary["gap"]["max_abs"] < 1e-6
            assert len(summary["gap"]["per_module"]) == 30 * 4  # q, k, v, o
        else:
            assert summary["kind"] == "extracted" and summary["rank"] == 8
            assert 0 < summary["gap"]["relative_frobenius"] < 1
        shutil.rmtree(merged)
    model = peft_merged(smollm2, tmp_path / "adapter-ties")
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 plus 3?"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True,
    )["input_ids"]  # fmt: skip
    answer = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert answer.shape[1] > ids.shape[1]
