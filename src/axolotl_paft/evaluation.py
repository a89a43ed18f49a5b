"""Held-out style measurements of a base model with or without an adapter."""

from __future__ import annotations

from pathlib import Path

import torch


def load_model(base_model: str | Path, adapter: str | Path | None = None):
    """The base model in float32 on CPU, with `adapter` applied (not merged)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    return model.eval()


@torch.no_grad()
def assistant_loss(model, tokenizer, rows: list[dict]) -> float:
    """Mean NLL per assistant token of chat rows (`messages`, last turn answered)."""
    total, count = 0.0, 0
    for row in rows:
        messages = row["messages"]
        prompt = tokenizer.apply_chat_template(
            messages[:-1], add_generation_prompt=True, tokenize=False
        )
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        prompt_len = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        ids = torch.tensor([tokenizer(full, add_special_tokens=False)["input_ids"]])
        labels = ids.clone()
        labels[:, :prompt_len] = -100
        logits = model(input_ids=ids).logits[:, :-1].float()
        targets = labels[:, 1:]
        losses = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            targets.reshape(-1),
            ignore_index=-100,
            reduction="sum",
        )
        total += float(losses)
        count += int((targets != -100).sum())
    return total / count


def _completion_logp(model, tokenizer, prompt: str, completion: str) -> float:
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = tokenizer(prompt + completion, add_special_tokens=False)["input_ids"]
    logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
    logps = torch.log_softmax(logits, -1)
    targets = torch.tensor(ids[1:])
    picked = logps.gather(-1, targets[:, None])[:, 0]
    return float(picked[len(prompt_ids) - 1 :].sum())


@torch.no_grad()
def preference_margins(policy, reference, tokenizer, rows: list[dict]) -> torch.Tensor:
    """Implicit reward margins (DPO's, beta = 1) of `policy` against `reference`:
    (log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected)),
    or log pi(chosen) - log pi(rejected) when `reference` is None.

    Rows hold `question` (and optionally `system`), `chosen` and `rejected`; the
    prompt is rendered with the tokenizer's chat template."""
    margins = []
    for row in rows:
        messages = (
            [{"role": "system", "content": row["system"]}] if row.get("system") else []
        )
        messages.append({"role": "user", "content": row["question"]})
        prompt = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        margin = 0.0
        for sign, key in ((1, "chosen"), (-1, "rejected")):
            completion = row[key] + tokenizer.eos_token
            margin += sign * _completion_logp(policy, tokenizer, prompt, completion)
            if reference is not None:
                margin -= sign * _completion_logp(
                    reference, tokenizer, prompt, completion
                )
        margins.append(margin)
    return torch.tensor(margins)
