"""L1 sparsity through real `axolotl train` runs on tiny local models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from axolotl_paft.lab.toy import axolotl_config, run_axolotl_train
from axolotl_paft.training.sparsity import SUMMARY_MEASURES

L1_LAMBDA = 1e-3  # loss mode: the README's measured sweet spot on the toy

pytestmark = pytest.mark.slow

SGD_STEP = {
    "optimizer": "sgd",
    "learning_rate": 0.1,
    "weight_decay": 0.0,
    "max_steps": 1,
    "paft_merge_methods": [],
}


def adapter_weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(output_dir / "adapter_model.safetensors")


def one_sgd_step(world, out: Path, **overrides) -> dict[str, torch.Tensor]:
    run_axolotl_train(axolotl_config(world, out, **SGD_STEP, **overrides))
    return adapter_weights(out)


@pytest.mark.parametrize(
    "batching",
    [
        {"micro_batch_size": 4, "gradient_accumulation_steps": 1},
        {
            "micro_batch_size": 1,
            "gradient_accumulation_steps": 4,
            "gradient_checkpointing": True,
        },
    ],
    ids=["no-accumulation", "accumulation-4+checkpointing"],
)
def test_loss_mode_adds_lambda_sign_once_per_optimizer_step(
    llama_world, tmp_path, batching
):
    """One SGD step: w(lambda) - w(0) = -lr * lambda * sign(w0), whatever the
    accumulation: the penalty counts once per optimizer step."""
    lam = 0.01
    plain = one_sgd_step(llama_world, tmp_path / "plain", paft_l1_lambda=0, **batching)
    l1 = one_sgd_step(llama_world, tmp_path / "l1", paft_l1_lambda=lam, **batching)
    for key, w in plain.items():
        diff = l1[key] - w
        if ".lora_A." in key:  # A starts random: every entry moves by lr*lambda
            torch.testing.assert_close(
                diff.abs(), torch.full_like(diff, 0.1 * lam), rtol=1e-3, atol=1e-7
            )
        else:  # B starts at 0, where the subgradient of |w| is 0
            assert torch.equal(diff, torch.zeros_like(diff))


def test_proximal_mode_soft_thresholds_to_exact_zeros(llama_world, tmp_path):
    lam = 0.5
    plain = one_sgd_step(llama_world, tmp_path / "plain", paft_l1_lambda=0)
    prox = one_sgd_step(
        llama_world, tmp_path / "prox", paft_l1_lambda=lam, paft_l1_mode="proximal"
    )
    zeros = 0
    for key, w in plain.items():
        expected = torch.sign(w) * (w.abs() - 0.1 * lam).clamp(min=0)
        torch.testing.assert_close(prox[key], expected, rtol=1e-5, atol=1e-7)
        zeros += int((prox[key] == 0).sum())
    assert zeros > 0


def scalars_per_writer(output_dir: Path) -> list[dict[str, list[float]]]:
    """TensorBoard scalars of each event file under `output_dir` (one per process
    that logged)."""
    from tensorboard.backend.event_processing.event_accumulator import (
        EventAccumulator,
    )

    writers = []
    for events in sorted(output_dir.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        scalars = acc.Tags()["scalars"]
        writers.append({t: [e.value for e in acc.Scalars(t)] for t in scalars})
    return writers


def tensorboard_scalars(output_dir: Path) -> dict[str, list[float]]:
    (scalars,) = scalars_per_writer(output_dir)
    return scalars


@pytest.fixture(scope="module")
def l1_vs_off(llama_world, tmp_path_factory):
    """120 steps at lambda L1_LAMBDA and at lambda = 0 (same seed and data)."""
    from transformers import AutoTokenizer

    from axolotl_paft.lab.toy import sft_rows
    from axolotl_paft.merging.scoring import assistant_loss, load_model

    root = tmp_path_factory.mktemp("l1")
    rows, results = sft_rows(64), {}
    tokenizer = AutoTokenizer.from_pretrained(llama_world.model_dir)
    base_loss = assistant_loss(load_model(llama_world.model_dir), tokenizer, rows)
    for name, lam in (("off", 0.0), ("l1", L1_LAMBDA)):
        overrides = {"max_steps": 120, "use_tensorboard": True}
        if lam is not None:
            overrides["paft_l1_lambda"] = lam
        out = root / name
        run_axolotl_train(axolotl_config(llama_world, out, **overrides))
        model = load_model(llama_world.model_dir, out)
        results[name] = {
            "out": out,
            "gain": base_loss - assistant_loss(model, tokenizer, rows),
            "report": json.loads((out / "paft_report.json").read_text()),
        }
    return results


def test_l1_is_sparser_and_keeps_the_skill(l1_vs_off):
    off, l1 = l1_vs_off["off"], l1_vs_off["l1"]
    sparsity_off = off["report"]["adapters"]["sft"]["overall"]["sparsity"]
    sparsity = l1["report"]["adapters"]["sft"]["overall"]["sparsity"]
    kept = l1["gain"] / off["gain"]
    print(f"sparsity {sparsity_off:.3f} -> {sparsity:.3f}, skill kept {kept:.3f}")
    assert off["gain"] > 2.0  # the SFT skill is real: nats per answer token
    assert sparsity > sparsity_off + 0.25
    assert kept > 0.9


def test_metrics_reach_the_trainer_logs(l1_vs_off):
    scalars = tensorboard_scalars(l1_vs_off["l1"]["out"])
    for key in ("l1_penalty", *SUMMARY_MEASURES):
        assert len(scalars[f"train/sft/{key}"]) == 120 // 5
    sparsity = scalars["train/sft/sparsity"]
    assert sparsity[-1] > sparsity[0]
    report = l1_vs_off["l1"]["report"]["adapters"]["sft"]["overall"]
    assert sparsity[-1] == pytest.approx(report["sparsity"], abs=1e-4)
    penalty = scalars["train/sft/l1_penalty"][-1]
    assert penalty == pytest.approx(
        L1_LAMBDA * scalars["train/sft/l1_norm"][-1], rel=1e-3
    )
    # lambda 0: nothing steers the delta, so by default nothing measures it
    logged = tensorboard_scalars(l1_vs_off["off"]["out"])
    assert "train/loss" in logged
    assert not [key for key in logged if key.startswith("train/sft/")]


def test_outputs_written_once_after_the_final_save(l1_vs_off):
    out = l1_vs_off["l1"]["out"]
    adapter_time = (out / "adapter_model.safetensors").stat().st_mtime
    for name in ("paft_report.json", "paft_report.md", "paft_report.png"):
        assert (out / name).stat().st_mtime >= adapter_time
    written = sorted(p.stem for p in (out / "mergekit").glob("*.yml"))
    assert written == sorted(
        ["ties", "dare_ties", "dare_linear", "task_arithmetic", "breadcrumbs_ties",
         "della"]
    )  # fmt: skip
    assert len(list((out / "mergekit").glob("*.yml"))) == len(written)


def test_proximal_shrink_follows_the_optimizer_skipping_a_step(llama_world, tmp_path):
    """fp16 loss scaling skips the optimizer step on overflow: the proximal shrink
    of that step is skipped too. (No fp16 scaler on CPU: the overflow flag that
    accelerate's scaler sets is set by hand on a real prepared optimizer.)"""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from axolotl_paft.training.l1 import L1SparsityCallback

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(llama_world.model_dir),
        LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False),
    )
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    trainer = Trainer(model=model, args=args)
    optimizer = trainer.accelerator.prepare(torch.optim.SGD(model.parameters(), lr=0.1))
    callback = L1SparsityCallback(
        trainer,
        "default",
        l1_lambda=0.5,
        mode="proximal",
        threshold=0.01,
        prefix="sft",
        log_metrics=False,
    )
    callback.on_train_begin(args, None, None, model=model)
    before = [p.detach().clone() for p in callback._params]

    optimizer._is_overflow = True
    callback.on_optimizer_step(args, None, None, optimizer=optimizer)
    assert all(torch.equal(b, p) for b, p in zip(before, callback._params, strict=True))

    optimizer._is_overflow = False
    callback.on_optimizer_step(args, None, None, optimizer=optimizer)
    for b, p in zip(before, callback._params, strict=True):
        expected = torch.sign(b) * (b.abs() - 0.1 * 0.5).clamp(min=0)
        torch.testing.assert_close(p.detach(), expected)
