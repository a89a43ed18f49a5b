"""`axolotl_paft.training.losses` against hand-computed numbers and against TRL's own
`DPOTrainer` (sigmoid, IPO) and experimental `ORPOTrainer` on one real batch."""

from __future__ import annotations

import contextlib
import json
import math

import pytest
import torch

from axolotl_paft.training.losses import (
    LOSS_SPECS,
    PREFERENCE_LOSSES,
    LossSpec,
    batch_preference_loss,
    completion_logps,
    preference_loss,
)

TOL = 1e-5
PAIRS = 6
TARGETS = ["q_proj", "v_proj", "down_proj"]


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


# Pure tensors, hand-computed numbers.


def test_completion_logps_sums_shifted_completion_tokens():
    vocab = 5
    logits = torch.zeros(2, 4, vocab)  # uniform: every token has log-prob -log 5
    logits[1, 2, 3] = math.log(4.0)  # position 2 of row 1 predicts token 3: p = 1/2
    input_ids = torch.tensor([[1, 2, 3, 4], [1, 2, 0, 3]])
    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 1, 1]])  # position 0 is never scored
    logps, counts = completion_logps(logits, input_ids, mask)
    assert counts.tolist() == [2, 2]
    expected = t(-2 * math.log(5), -math.log(5) + math.log(0.5))
    torch.testing.assert_close(logps, expected)


def test_dpo_is_minus_logsigmoid_of_beta_times_margin():
    loss, m = preference_loss(
        "dpo", t(-10.0, -5.0), t(-12.0, -4.0), t(-11.0, -5.0), t(-11.0, -5.0), 0.1
    )
    # pair 0: logratios +1 / -1, margin 2; pair 1: 0 / +1, margin -1
    expected = (math.log1p(math.exp(-0.2)) + math.log1p(math.exp(0.1))) / 2
    assert float(loss) == pytest.approx(expected, abs=1e-6)
    assert float(m["rewards/chosen"]) == pytest.approx(0.05)
    assert float(m["rewards/rejected"]) == pytest.approx(0.0)
    assert float(m["rewards/margins"]) == pytest.approx(0.05)
    assert float(m["rewards/accuracies"]) == 0.5
    assert float(m["logps/chosen"]) == pytest.approx(-7.5)
    assert float(m["logps/rejected"]) == pytest.approx(-8.0)


def test_ipo_averages_log_ratios_per_completion_token():
    loss, m = preference_loss(
        "ipo",
        t(-10.0),
        t(-12.0),
        t(-11.0),
        t(-11.0),
        0.5,
        chosen_lengths=torch.tensor([2]),
        rejected_lengths=torch.tensor([4]),
    )
    # (1/2 - (-1/4) - 1/(2*0.5))^2 = (0.75 - 1)^2; rewards stay summed
    assert float(loss) == pytest.approx(0.0625, abs=1e-7)
    assert float(m["rewards/margins"]) == pytest.approx(0.5 * 2)


def test_orpo_odds_ratio_on_average_log_probs():
    # average log-probs log(1/2) and log(1/5): odds 1 and 1/4, log odds ratio log 4
    loss, m = preference_loss(
        "orpo",
        t(3 * math.log(0.5)),
        t(2 * math.log(0.2)),
        None,
        None,
        0.1,
        chosen_lengths=torch.tensor([3]),
        rejected_lengths=torch.tensor([2]),
        chosen_nll=torch.tensor(2.0),
    )
    assert float(loss) == pytest.approx(2.0 - 0.1 * math.log(0.8), abs=1e-6)
    assert float(m["log_odds_chosen"]) == pytest.approx(math.log(4), abs=1e-6)
    assert float(m["log_odds_ratio"]) == pytest.approx(math.log(0.8), abs=1e-6)
    assert float(m["nll_loss"]) == 2.0
    assert float(m["logps/chosen"]) == pytest.approx(math.log(0.5), abs=1e-6)
    assert float(m["rewards/rejected"]) == pytest.approx(0.1 * math.log(0.2))


def test_missing_inputs_are_errors():
    one = t(-1.0)
    with pytest.raises(ValueError, match="unknown"):
        preference_loss("kto", one, one, one, one, 0.1)
    with pytest.raises(ValueError, match="reference"):
        preference_loss("dpo", one, one, None, None, 0.1)
    with pytest.raises(ValueError, match="lengths"):
        preference_loss("ipo", one, one, one, one, 0.1)
    lengths = {"chosen_lengths": one, "rejected_lengths": one}
    with pytest.raises(ValueError, match="chosen_nll"):
        preference_loss("orpo", one, one, None, None, 0.1, **lengths)
    assert PREFERENCE_LOSSES == ("dpo", "ipo", "rpo", "orpo")


# Parity with TRL on the toy llama.


@pytest.fixture(scope="module")
def toy(llama_world):
    from datasets import Dataset
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(llama_world.model_dir)
    lines = llama_world.preference_path.read_text().splitlines()[:PAIRS]
    rows = []
    for row in map(json.loads, lines):
        messages = [
            {"role": "system", "content": row["system"]},
            {"role": "user", "content": row["question"]},
        ]
        prompt = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        rows.append(
            {"prompt": prompt, "chosen": row["chosen"], "rejected": row["rejected"]}
        )
    return llama_world, tokenizer, Dataset.from_list(rows)


def lora_config():
    from peft import LoraConfig

    return LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=TARGETS,
        init_lora_weights=False,  # B != 0: the policy differs from the base
    )


def base_model(world):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(world.model_dir)


def lora_grads(model) -> dict[str, torch.Tensor]:
    grads = {
        n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
    }
    model.zero_grad(set_to_none=True)
    return grads


def gaps(ours_loss, ours, trl_loss, trl, ours_grads, trl_grads) -> dict[str, float]:
    out = {"loss": abs(float(ours_loss.detach()) - float(trl_loss.detach()))}
    out.update({k: abs(float(ours[k]) - trl[k]) for k in ours})
    assert ours_grads.keys() == trl_grads.keys() and trl_grads
    out["max_grad"] = max(
        float((ours_grads[k] - trl_grads[k]).abs().max()) for k in trl_grads
    )
    return out


def trl_trainer(trainer_cls, config_cls, toy, tmp_path, **config):
    """A TRL trainer on the toy pairs with a fresh LoRA `peft_config` on the base."""
    world, tokenizer, dataset = toy
    args = config_cls(
        output_dir=str(tmp_path),
        per_device_train_batch_size=PAIRS,
        max_length=128,
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        **config,
    )
    return trainer_cls(
        model=base_model(world),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(),
    )


@pytest.mark.parametrize(
    ("kind", "loss_type", "beta"),
    [
        ("dpo", ["sigmoid"], 0.1),
        ("ipo", ["ipo"], 0.5),
        ("rpo", ["sigmoid", "sft"], 0.1),
    ],
)
def test_matches_trl_dpo_trainer(toy, tmp_path, kind, loss_type, beta):
    from trl import DPOConfig, DPOTrainer

    # A `peft_config` (not a ready PeftModel, for which TRL would add a "ref" copy
    # of the adapter): TRL's reference is then the base with adapters disabled.
    trainer = trl_trainer(
        DPOTrainer, DPOConfig, toy, tmp_path, beta=beta, loss_type=loss_type
    )
    model = trainer.model
    assert list(model.peft_config) == ["default"]
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    assert batch["input_ids"].shape[0] == 2 * PAIRS

    trl_loss = trainer.compute_loss(model, batch)
    trl_loss.backward()
    trl_loss = trl_loss.detach()
    trl_grads = lora_grads(model)
    mode = "train" if model.training else "eval"
    trl_metrics = {k: v[-1] for k, v in trainer._metrics[mode].items()}

    loss, metrics = batch_preference_loss(model, batch, kind, beta)
    loss.backward()
    ours_grads = lora_grads(model)

    diff = gaps(loss, metrics, trl_loss, trl_metrics, ours_grads, trl_grads)
    print(f"{kind} vs TRL DPOTrainer({loss_type}), loss {trl_loss.item():.5f}: {diff}")
    assert max(diff.values()) < TOL
    assert float(metrics["rewards/margins"]) != 0.0  # the reference is not the policy


def test_matches_trl_orpo_trainer(toy, tmp_path):
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    beta = 0.2
    trainer = trl_trainer(ORPOTrainer, ORPOConfig, toy, tmp_path, beta=beta)
    model = trainer.model
    raw = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))

    trl_loss, trl_metrics = trainer.compute_loss(model, raw, return_outputs=True)
    trl_loss.backward()
    trl_loss = trl_loss.detach()
    trl_grads = lora_grads(model)

    # TRL's own chosen/rejected concatenation, as a DataCollatorForPreference batch
    cat = ORPOTrainer.concatenated_inputs(raw, padding_value=trainer.padding_value)
    batch = {
        "input_ids": cat["concatenated_input_ids"],
        "attention_mask": cat["concatenated_attention_mask"],
        "completion_mask": (cat["concatenated_labels"] != -100).long(),
    }
    loss, metrics = batch_preference_loss(model, batch, "orpo", beta)
    loss.backward()
    ours_grads = lora_grads(model)

    assert set(metrics) <= set(trl_metrics)
    diff = gaps(loss, metrics, trl_loss, trl_metrics, ours_grads, trl_grads)
    print(f"orpo vs TRL ORPOTrainer loss {trl_loss.item():.5f}: {diff}")
    assert max(diff.values()) < TOL


def preference_batch(tokenizer, dataset) -> dict[str, torch.Tensor]:
    """The toy pairs as one `DataCollatorForPreference` batch."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    collate = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)
    eos = tokenizer.eos_token
    return collate(
        [
            {
                "prompt_ids": tokenizer(row["prompt"])["input_ids"],
                "chosen_ids": tokenizer(row["chosen"] + eos)["input_ids"],
                "rejected_ids": tokenizer(row["rejected"] + eos)["input_ids"],
            }
            for row in dataset
        ]
    )


def test_reference_defaults_to_the_base_and_can_be_given(toy):
    """The default reference is the base with adapters disabled: passing its
    log-probs gives the same loss, and the base as policy gives loss log 2."""
    from peft import get_peft_model

    world, tokenizer, dataset = toy
    model = get_peft_model(base_model(world), lora_config())
    batch = preference_batch(tokenizer, dataset)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        loss, metrics = batch_preference_loss(model, batch, "dpo", 0.1)
        with model.disable_adapter():
            base_logits = model(**inputs).logits
            base_loss, base_metrics = batch_preference_loss(
                model, batch, "dpo", 0.1, reference_context=contextlib.nullcontext
            )
        reference, _ = completion_logps(
            base_logits, batch["input_ids"], batch["completion_mask"]
        )
        given, _ = batch_preference_loss(
            model, batch, "dpo", 0.1, reference_logps=reference.chunk(2)
        )
    assert float(metrics["rewards/margins"]) != 0.0
    assert float(given) == float(loss)
    assert float(base_loss) == pytest.approx(math.log(2), abs=1e-6)
    assert float(base_metrics["rewards/margins"]) == 0.0


def test_a_loss_added_to_the_registry_trains(toy, monkeypatch):
    """docs/architecture.md's recipe: one `LOSS_SPECS` entry is the whole loss. Its
    spec asks for a reference, the batch loss makes the base's forward for it, and
    one optimizer step moves only the LoRA weights."""
    from peft import get_peft_model

    def hinge(pairs, beta):  # SLiC-style hinge on the reference-relative margin
        chosen_logratios, rejected_logratios = pairs.logratios()
        margin = beta * (chosen_logratios - rejected_logratios)
        return torch.relu(1 - margin).mean(), {"rewards/margins": margin.mean()}

    spec = LossSpec(hinge, "https://arxiv.org/abs/2305.10425")
    monkeypatch.setitem(LOSS_SPECS, "hinge", spec)
    one = t(-1.0)
    with pytest.raises(ValueError, match="reference"):
        preference_loss("hinge", one, one, None, None, 0.1)

    world, tokenizer, dataset = toy
    model = get_peft_model(base_model(world), lora_config())
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in trained.items()}
    optimizer = torch.optim.SGD(trained.values(), lr=0.1)

    loss, metrics = batch_preference_loss(
        model, preference_batch(tokenizer, dataset), "hinge", 0.1
    )
    loss.backward()
    optimizer.step()

    assert math.isfinite(float(loss)) and float(loss) > 0
    assert float(metrics["rewards/margins"]) != 0.0  # the base was the reference
    assert trained and all("lora_" in n for n in trained)
    moved = [n for n, p in trained.items() if not torch.equal(p, before[n])]
    assert moved
