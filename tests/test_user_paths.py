"""Parallel mode on the paths a real Axolotl user walks: evaluation, best-model
loading, logs, optimizer groups, dropout, DoRA and embedding LoRA, resume across
epochs, and the commands run after training (preprocess, merge-lora, inference,
evaluate). Each test compares against a standalone Axolotl run or an independent
recomputation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml
from conftest import last_trainer, logged_run
from test_trainer import max_gap, resume_gaps, weights

from axolotl_paft.lab.toy import axolotl_config, parallel_config, run_axolotl_train

pytestmark = pytest.mark.slow

DOCS = Path(__file__).parents[1] / "docs"
QUIET = {"paft_merge_methods": [], "paft_report": False}


def logged(history: list[dict], key: str) -> list[float]:
    return [entry[key] for entry in history if key in entry]


def by_step(history: list[dict], key: str) -> dict[int, float]:
    return {entry["step"]: entry[key] for entry in history if key in entry}


def group_rates(trainer, adapter: str) -> dict[str, float]:
    """The optimizer's rate of every tensor of `adapter`, named without it."""
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    pattern = re.compile(rf"\.{adapter}(?=\.|$)")  # embedding LoRA ends in it
    return {
        pattern.sub(".<adapter>", names[id(p)]): group["lr"]
        for group in trainer.optimizer.param_groups
        for p in group["params"]
        if pattern.search(names[id(p)])
    }


# --- evaluation, best model, logs ---------------------------------------------

EVAL = {
    "max_steps": 20,
    "val_set_size": 0.2,
    "eval_steps": 10,
    "paft_l1_lambda": 0,
    **QUIET,
}


@pytest.fixture(scope="module")
def evaluated(llama_world, tmp_path_factory) -> dict:
    """A parallel run with SFT and preference evaluation, checkpoints and the best
    checkpoint (by a preference metric) loaded at the end; a standalone SFT run."""
    root = tmp_path_factory.mktemp("eval")
    out = root / "parallel"
    run_axolotl_train(
        parallel_config(
            llama_world,
            out,
            paft_preference_val_set_size=0.25,
            save_strategy="steps",
            save_steps=10,
            load_best_model_at_end=True,
            # a preference metric picks the checkpoint of the pair; the margins
            # grow, so smallest-is-best picks the earlier one and loading it is
            # visible (Axolotl alone would drop `greater_is_better: false`)
            metric_for_best_model="eval_dpo/rewards/margins",
            greater_is_better=False,
            paft_log_sparsity="all",  # lambda 0: asked for, so both are logged
            **EVAL,
        )
    )
    trainer = last_trainer()
    parallel = {
        "out": out,
        "history": trainer.state.log_history,
        "best": trainer.state.best_model_checkpoint,
        "held_out": trainer.preference_held_out,
        "collator": trainer.preference.collator,
        "active": trainer.model.active_adapter,
    }
    run_axolotl_train(axolotl_config(llama_world, root / "alone", **EVAL))
    return {"parallel": parallel, "alone": last_trainer().state.log_history}


def test_eval_loss_is_the_sft_adapters(evaluated):
    parallel = by_step(evaluated["parallel"]["history"], "eval_loss")
    alone = by_step(evaluated["alone"], "eval_loss")
    print(f"eval_loss by step: parallel {parallel} vs standalone SFT run {alone}")
    assert {10, 20} <= alone.keys() <= parallel.keys()
    for step in alone:
        assert parallel[step] == pytest.approx(alone[step], abs=1e-6)
    assert evaluated["parallel"]["active"] == "sft"  # training leaves SFT active


def test_preference_eval_matches_an_independent_recomputation(llama_world, evaluated):
    """The step-20 preference metrics equal TRL-style metrics recomputed on the
    held-out pairs from the saved checkpoint-20/dpo adapter."""
    from axolotl_paft.merging.scoring import load_model
    from axolotl_paft.training.losses import batch_preference_loss

    run = evaluated["parallel"]
    last = [e for e in run["history"] if "eval_dpo/loss" in e][-1]
    assert last["step"] == 20
    model = load_model(llama_world.model_dir, run["out"] / "checkpoint-20" / "dpo")
    rows = list(run["held_out"])
    assert len(rows) == 16  # 25% of the 64 toy pairs
    with torch.no_grad():
        loss, metrics = batch_preference_loss(model, run["collator"](rows), "dpo", 0.1)
    expected = {"loss": loss, **metrics}
    for name in ("loss", "rewards/accuracies", "rewards/margins", "logps/chosen"):
        assert last[f"eval_dpo/{name}"] == pytest.approx(
            float(expected[name]), rel=1e-4, abs=1e-5
        ), name


def test_best_checkpoint_loads_both_adapters(evaluated):
    """The best checkpoint by a preference metric (smaller is better, as the
    config says) is reloaded at the end, both adapters of it, not the last
    step's."""
    run = evaluated["parallel"]
    out = run["out"]
    margins = by_step(run["history"], "eval_dpo/rewards/margins")
    best = min((s for s in margins if s), key=margins.get)
    print(f"eval_dpo/rewards/margins by step {margins}: best checkpoint-{best}")
    assert Path(run["best"]).name == f"checkpoint-{best}" == "checkpoint-10"
    for name in ("sft", "dpo"):
        assert max_gap(weights(out / name), weights(out / "checkpoint-10" / name)) == 0
        assert max_gap(weights(out / name), weights(out / "checkpoint-20" / name)) > 0


def test_training_logs_follow_one_documented_scheme(evaluated):
    history = evaluated["parallel"]["history"]
    train = [e for e in history if "loss" in e]
    for entry in train:
        assert entry["sft/loss"] == entry["loss"]  # same scale, by construction
        assert entry["sft/grad_norm"] == entry["grad_norm"]
    logged = ("dpo/loss", "dpo/rewards/accuracies", "dpo/grad_norm", "dpo/sparsity")
    for key in (*logged, "sft/sparsity"):
        assert key in train[-1], key
    documented = (DOCS / "metrics.md").read_text()
    ours = {
        key.replace("sft/", "<sft>/").replace("dpo/", "<pref>/")
        for entry in history
        for key in entry
        if "/" in key and not key.startswith(("memory/", "tokens/"))
    }
    missing = [
        k
        for k in sorted(ours)
        if f"`{k}`" not in documented
        and f"`{re.sub('^<(sft|pref)>', '<adapter>', k)}`" not in documented
    ]
    assert not missing, missing


# --- the config matrix users run ------------------------------------------------

MATRIX = {
    "max_steps": 6,
    "micro_batch_size": 2,
    "gradient_accumulation_steps": 2,
    "gradient_checkpointing": True,
    "lora_dropout": 0.05,
    "loraplus_lr_ratio": 16,
    "val_set_size": 0.2,
    "eval_steps": 3,
    "paft_l1_lambda": 1e-3,
    # Axolotl packs on CPU (without cross-sample masking: no flash attention here)
    "sample_packing": True,
    "sequence_len": 128,
    **QUIET,
}


@pytest.fixture(scope="module")
def matrix(llama_world, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("matrix")
    runs = {}
    for name, build, overrides, adapters in (
        (
            "parallel",
            parallel_config,
            {"paft_preference_learning_rate": 3e-4},
            {"sft", "dpo"},
        ),
        ("alone", axolotl_config, {}, {"default"}),
        (  # read for its rates only, constant over steps (lr_scheduler constant)
            "alone_at_preference_lr",
            axolotl_config,
            {"learning_rate": 3e-4, "max_steps": 1},
            {"default"},
        ),
    ):
        run_axolotl_train(build(llama_world, root / name, **(MATRIX | overrides)))
        trainer = last_trainer()
        runs[name] = {
            "out": root / name,
            "history": trainer.state.log_history,
            "rates": {a: group_rates(trainer, a) for a in adapters},
        }
    return runs


def test_sft_adapter_is_bit_identical_at_dropout_with_checkpointing(matrix):
    """lora_dropout 0.05, gradient checkpointing, GA 2, LoRA+, eval split: the
    preference step has its own random stream, so the SFT adapter is exactly a
    standalone SFT run's."""
    parallel, alone = matrix["parallel"], matrix["alone"]
    gap = max_gap(weights(parallel["out"] / "sft"), weights(alone["out"]))
    print(f"dropout 0.05 + GC + GA 2 + LoRA+: parallel SFT vs standalone {gap:.3g}")
    assert gap == 0
    assert logged(parallel["history"], "eval_loss") == logged(
        alone["history"], "eval_loss"
    )


def test_each_adapter_keeps_its_standalone_group_rates(matrix):
    """LoRA+: every tensor's rate equals the one a standalone run of that adapter
    (at its own learning rate) gives it."""
    parallel = matrix["parallel"]["rates"]
    sft_alone = matrix["alone"]["rates"]["default"]
    dpo_alone = matrix["alone_at_preference_lr"]["rates"]["default"]
    assert parallel["sft"] == sft_alone
    assert parallel["dpo"] == dpo_alone
    print(
        f"LoRA+ rates: SFT {sorted(set(sft_alone.values()))}, "
        f"preference {sorted(set(dpo_alone.values()))}"
    )
    assert sorted(set(dpo_alone.values())) == pytest.approx([3e-4, 16 * 3e-4])


# --- every trainable tensor of an adapter --------------------------------------

DORA = {
    "peft_use_dora": True,
    "lora_target_linear": None,
    "lora_target_modules": ["q_proj", "v_proj", "down_proj", "embed_tokens"],
    "max_steps": 8,
    "lora_dropout": 0.0,
    "max_grad_norm": 0.01,  # clipping acts on every step: every tensor must be in it
    **QUIET,
}


def test_dora_and_embedding_lora_are_whole_adapters(llama_world, tmp_path):
    """DoRA magnitudes and embedding LoRA factors are trained, clipped and grouped
    with their adapter: the SFT adapter equals a standalone run's (clipping acts on
    every step), the preference adapter's sit in the preference LR groups, and the
    report measures the embedding delta."""
    config = {**DORA, "paft_report": True, "paft_preference_learning_rate": 1e-3}
    run_axolotl_train(parallel_config(llama_world, tmp_path / "parallel", **config))
    trainer = last_trainer()
    rates = group_rates(trainer, "dpo")
    model = trainer.model
    assert model.peft_config["sft"] is not model.peft_config["dpo"]
    run_axolotl_train(axolotl_config(llama_world, tmp_path / "alone", **DORA))
    sft = weights(tmp_path / "parallel" / "sft")
    assert any("magnitude" in k for k in sft) and any("embedding" in k for k in sft)
    assert max_gap(sft, weights(tmp_path / "alone")) == 0
    magnitudes = [n for n in rates if "magnitude" in n]
    embedding = [n for n in rates if "lora_embedding" in n]
    assert magnitudes and embedding
    assert set(rates.values()) == {1e-3}
    report = yaml.safe_load((tmp_path / "parallel" / "paft_report.json").read_text())
    measured = {m["name"] for m in report["adapters"]["sft"]["modules"]}
    assert "model.embed_tokens" in measured


# --- resume across an epoch boundary --------------------------------------------

EPOCHS = {
    "max_steps": None,
    "num_epochs": 2,
    "micro_batch_size": 6,  # 64 rows: 11 micro-batches an epoch
    "gradient_accumulation_steps": 2,  # so each epoch ends on a partial step
    "lora_dropout": 0.05,
    "save_strategy": "steps",
    "save_steps": 8,
    **QUIET,
}


def test_resume_after_an_epoch_boundary_continues_both_streams(llama_world, tmp_path):
    """2 epochs of 6 optimizer steps, the last of each with one micro-batch: the
    preference stream's position is not step x GA after it, so checkpoints keep
    it (and the preference dropout stream) and a resumed run is the same run."""
    gaps = resume_gaps(llama_world, tmp_path, EPOCHS, "checkpoint-8")
    assert (tmp_path / "full" / "checkpoint-8" / "paft_state_0.pth").exists()
    assert max(gaps.values()) < 1e-6


# --- after training: the same YAML keeps working ---------------------------------


def fresh_command():
    """Each Axolotl command is a new process: a new plugin instance."""
    import collections

    from axolotl.integrations.base import PluginManager

    PluginManager.get_instance().plugins = collections.OrderedDict()


@pytest.fixture(scope="module")
def trained(llama_world, tmp_path_factory) -> dict:
    """`axolotl preprocess` then `axolotl train` on one parallel-mode YAML."""
    from axolotl.cli.args import PreprocessCliArgs
    from axolotl.cli.config import load_cfg
    from axolotl.cli.preprocess import do_preprocess

    root = tmp_path_factory.mktemp("commands")
    out = root / "out"
    config = parallel_config(
        llama_world, out, max_steps=6, val_set_size=0.2, eval_steps=6
    )
    config["paft_merge_methods"] = ["ties"]
    path = root / "paft.yml"
    path.write_text(yaml.safe_dump(config))
    fresh_command()
    do_preprocess(load_cfg(str(path), is_preprocess=True), PreprocessCliArgs())
    cache = out / "prepared" / "paft_preference"

    def prepared():  # one folder per prepared dataset (beside a lock file)
        return sorted(p.name for p in cache.iterdir() if p.is_dir())

    after_preprocess = prepared()
    messages = logged_run(config)
    history = last_trainer().state.log_history
    return {
        "messages": messages,
        "out": out,
        "path": path,
        "cache": (after_preprocess, prepared()),
        "eval_loss": logged(history, "eval_loss")[-1],
    }


def test_preprocess_prepares_the_preference_cache_training_reuses(trained):
    after_preprocess, after_training = trained["cache"]
    assert len(after_preprocess) == 1  # one prepared preference dataset
    assert after_training == after_preprocess


def test_the_run_ends_with_where_results_are_and_what_to_run(trained):
    (summary,) = [m for m in trained["messages"] if "results of this run" in m]
    out = trained["out"]
    for expected in (
        f"sft adapter: {out / 'sft'}",
        f"preference adapter: {out / 'dpo'}",
        f"paft_report.md: {out / 'paft_report.md'}",
        f"mergekit-yaml {(out / 'mergekit' / 'ties.yml').resolve()}",
        f"axolotl merge-lora CONFIG --lora-model-dir {out / 'sft'}",
    ):
        assert expected in summary, expected


def test_training_refuses_another_runs_output_dir(llama_world, trained, tmp_path):
    """Refused when training starts (before any model loads), not in the commands
    that use the run's outputs; nothing is overwritten."""
    from conftest import validate

    config = parallel_config(llama_world, trained["out"], **QUIET)
    validate(config)  # the YAML stays valid for merge-lora, inference, evaluate
    before = weights(trained["out"] / "dpo")
    with pytest.raises(ValueError, match="output_dir.*earlier run"):
        run_axolotl_train(config)
    assert max_gap(before, weights(trained["out"] / "dpo")) == 0


def test_merge_lora_merges_the_named_adapter_or_names_the_folders(llama_world, trained):
    from axolotl.cli.merge_lora import do_cli as merge_lora
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out, path = trained["out"], str(trained["path"])
    fresh_command()
    with pytest.raises(Exception, match=f"--lora-model-dir {out / 'sft'}"):
        merge_lora(config=path)
    fresh_command()
    merge_lora(config=path, lora_model_dir=str(out / "sft"))
    merged = AutoModelForCausalLM.from_pretrained(out / "merged").state_dict()
    base = AutoModelForCausalLM.from_pretrained(llama_world.model_dir)
    expected = PeftModel.from_pretrained(base, out / "sft").merge_and_unload()
    gap = max(
        float((merged[k] - v).abs().max()) for k, v in expected.state_dict().items()
    )
    assert gap < 1e-5
    fresh_command()
    with pytest.raises(Exception, match="already holds a merged model"):
        merge_lora(config=path, lora_model_dir=str(out / "dpo"))


def test_inference_and_evaluate_use_the_named_adapter(trained):
    from axolotl.cli.args import TrainerCliArgs
    from axolotl.cli.config import load_cfg
    from axolotl.cli.utils import load_model_and_tokenizer
    from axolotl.common.datasets import load_datasets
    from axolotl.evaluate import evaluate

    out, path = trained["out"], str(trained["path"])
    fresh_command()
    with pytest.raises(ValueError, match=f"--lora-model-dir {out / 'dpo'}"):
        load_model_and_tokenizer(cfg=load_cfg(path, inference=True), inference=True)
    fresh_command()
    cfg = load_cfg(path, inference=True, lora_model_dir=str(out / "dpo"))
    model, _, _ = load_model_and_tokenizer(cfg=cfg, inference=True)
    assert list(model.peft_config) == ["default"]
    saved = weights(out / "dpo")
    live = {
        k.replace(".default", ""): v
        for k, v in model.state_dict().items()
        if ".lora_" in k
    }
    assert max_gap(saved, live) == 0

    fresh_command()
    cfg = load_cfg(path, lora_model_dir=str(out / "sft"))
    metrics = evaluate(
        cfg=cfg, dataset_meta=load_datasets(cfg=cfg, cli_args=TrainerCliArgs())
    )
    print(
        f"axolotl evaluate eval_loss {metrics['eval_loss']} vs training's last "
        f"{trained['eval_loss']}"
    )
    assert metrics["eval_loss"] == pytest.approx(trained["eval_loss"], abs=1e-6)


# --- bf16: Axolotl refuses it on CPU, so the plugin's own tensors directly -------


def test_preference_step_and_measures_in_bf16(llama_world):
    """`bf16: true` needs a GPU in Axolotl (transformers refuses bf16 on CPU), so
    the plugin's own computations run here on a bf16 model: the two adapters, the
    preference loss and its backward, and the sparsity measures, against fp32."""
    from axolotl.utils.dict import DictDefault
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from axolotl_paft.lab.toy import preference_rows
    from axolotl_paft.training.adapters import (
        AdapterRouter,
        add_parallel_adapters,
        factor_parameters,
    )
    from axolotl_paft.training.data import (
        preference_collator,
        tokenize_preference_dataset,
    )
    from axolotl_paft.training.losses import batch_preference_loss
    from axolotl_paft.training.sparsity import live_lora_factors, measure, summarize

    tokenizer = AutoTokenizer.from_pretrained(llama_world.model_dir)
    rows = [
        {"prompt": r["question"], "chosen": r["chosen"], "rejected": r["rejected"]}
        for r in preference_rows(8)
    ]
    tokens = tokenize_preference_dataset(Dataset.from_list(rows), tokenizer, 128)
    collate = preference_collator(tokenizer, DictDefault(sequence_len=128))
    batch = collate(list(tokens))
    lora = LoraConfig(r=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    results = []
    for dtype in (torch.float32, torch.bfloat16):
        base = AutoModelForCausalLM.from_pretrained(llama_world.model_dir, dtype=dtype)
        torch.manual_seed(0)
        model = get_peft_model(base, lora)
        add_parallel_adapters(model, "sft", "dpo", seed=0)
        router = AdapterRouter(model)
        with router.through("dpo"):
            loss, metrics = batch_preference_loss(
                model,
                batch,
                "dpo",
                0.1,
                reference_context=lambda r=router: r.through(None),
            )
        loss.backward()
        assert model.base_model.model.lm_head.weight.dtype == dtype
        for p in factor_parameters(model, "dpo"):  # PEFT keeps LoRA in fp32
            assert p.grad.dtype == p.dtype and torch.isfinite(p.grad).all()
        summary = summarize(measure(live_lora_factors(model, "sft"), 0.01))
        results.append((float(loss), float(metrics["logps/chosen"]), summary))
    (loss32, logp32, s32), (loss16, logp16, s16) = results
    print(f"bf16 vs fp32: loss {loss16:.4f} / {loss32:.4f}, logp {logp16} / {logp32}")
    assert loss16 == pytest.approx(loss32, rel=2e-2)
    assert logp16 == pytest.approx(logp32, rel=2e-2)
    assert s16["l1_norm"] == pytest.approx(s32["l1_norm"], rel=1e-2)
