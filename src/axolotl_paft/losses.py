"""Preference losses (DPO sigmoid, IPO, ORPO) and their metrics, matching TRL.

Pure tensor functions, checked against TRL 1.14 in `tests/test_losses.py`:

- `dpo` is `DPOTrainer` with `loss_type="sigmoid"` (reverse KL, no label
  smoothing: TRL's sigmoid loss ignores `label_smoothing`, only `robust`/`exo_pair`
  and the `aot*` losses read it);
- `ipo` is `loss_type="ipo"`: TRL divides each log-ratio by its number of
  completion tokens before the squared loss; its reward metrics stay summed;
- `orpo` is `trl.experimental.orpo.ORPOTrainer`: odds from per-token *average*
  completion log-probs, plus the NLL of the chosen rows over prompt *and*
  completion tokens (token mean over the batch); no reference model.

Sequence log-probs are summed over completion tokens, shifted like TRL (the logit
at position t scores token t + 1). DPO and IPO take the reference from the base
model with every adapter disabled, as TRL does when it wraps a `peft_config`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
import torch.nn.functional as F
from torch import Tensor
from trl.trainer.utils import selective_log_softmax

PREFERENCE_LOSSES = ("dpo", "ipo", "orpo")


def completion_logps(
    logits: Tensor, input_ids: Tensor, completion_mask: Tensor
) -> tuple[Tensor, Tensor]:
    """Per-row sum of the log-probs of masked tokens, and how many were scored.

    `logits` is `[N, L, V]`, `input_ids` and `completion_mask` are `[N, L]`; token
    `t` is scored by the logits at `t - 1`, so a mask entry at position 0 is never
    counted. Returns `(logps [N], counts [N])`.
    """
    mask = completion_mask[:, 1:]
    per_token = selective_log_softmax(logits[:, :-1], input_ids[:, 1:])
    per_token = per_token.masked_fill(mask == 0, 0.0)
    return per_token.sum(dim=-1), mask.sum(dim=-1)


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0, stable on both sides of -ln 2 (as TRL's ORPO)."""
    return torch.where(
        x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x))
    )


def _reward_metrics(
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    chosen_logps: Tensor,
    rejected_logps: Tensor,
) -> dict[str, Tensor]:
    chosen_rewards, rejected_rewards = (
        chosen_rewards.detach(),
        rejected_rewards.detach(),
    )
    return {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "logps/chosen": chosen_logps.detach().mean(),
        "logps/rejected": rejected_logps.detach().mean(),
    }


def preference_loss(
    kind: str,
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    ref_chosen_logps: Tensor | None,
    ref_rejected_logps: Tensor | None,
    beta: float,
    *,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    chosen_nll: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Loss (mean over pairs) and TRL-named metrics (detached 0-d tensors).

    All log-probs are per-pair sums over completion tokens (`[B]`). `dpo` and `ipo`
    need the reference log-probs; `ipo` and `orpo` need the completion lengths;
    `orpo` needs `chosen_nll` and ignores the reference. Metrics:
    `rewards/{chosen,rejected,accuracies,margins}`, `logps/{chosen,rejected}`, and
    for ORPO also `nll_loss`, `log_odds_ratio` (mean log-sigmoid of the log odds
    ratio) and `log_odds_chosen` (mean log odds ratio), TRL's names. As in TRL,
    ORPO's rewards and `logps/*` use the average per-token log-probs.
    """
    if kind not in PREFERENCE_LOSSES:
        raise ValueError(f"unknown preference loss {kind!r}; use {PREFERENCE_LOSSES}")
    if kind in ("ipo", "orpo") and (chosen_lengths is None or rejected_lengths is None):
        raise ValueError(f"{kind} needs chosen_lengths and rejected_lengths")

    if kind == "orpo":
        if chosen_nll is None:
            raise ValueError("orpo needs chosen_nll (NLL of the chosen sequences)")
        chosen_avg = (chosen_logps / chosen_lengths.clamp(min=1)).float()
        rejected_avg = (rejected_logps / rejected_lengths.clamp(min=1)).float()
        log_odds = (chosen_avg - rejected_avg) - (
            _log1mexp(chosen_avg) - _log1mexp(rejected_avg)
        )
        ratio = F.logsigmoid(log_odds)
        loss = chosen_nll - (beta * ratio).mean()
        metrics = _reward_metrics(
            beta * chosen_avg, beta * rejected_avg, chosen_avg, rejected_avg
        )
        metrics["nll_loss"] = chosen_nll.detach()
        metrics["log_odds_ratio"] = ratio.detach().mean()
        metrics["log_odds_chosen"] = log_odds.detach().mean()
        return loss, metrics

    if ref_chosen_logps is None or ref_rejected_logps is None:
        raise ValueError(f"{kind} needs the reference log-probs")
    chosen_logratios = chosen_logps - ref_chosen_logps
    rejected_logratios = rejected_logps - ref_rejected_logps
    if kind == "dpo":
        losses = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))
    else:  # ipo: TRL averages the log-ratios per completion token
        delta = chosen_logratios / chosen_lengths.clamp(min=1) - (
            rejected_logratios / rejected_lengths.clamp(min=1)
        )
        losses = (delta - 1 / (2 * beta)) ** 2
    metrics = _reward_metrics(
        beta * chosen_logratios, beta * rejected_logratios, chosen_logps, rejected_logps
    )
    return losses.mean(), metrics


def batch_preference_loss(
    model: torch.nn.Module,
    batch: dict[str, Tensor],
    kind: str,
    beta: float,
    *,
    reference_logps: tuple[Tensor, Tensor] | None = None,
    reference_context: Callable[[], AbstractContextManager] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """One forward of a `DataCollatorForPreference` batch (chosen rows, then
    rejected): the loss and metrics of `preference_loss`.

    DPO/IPO reference log-probs come from `reference_logps`, else from the batch's
    `ref_chosen_logps`/`ref_rejected_logps`, else from a `torch.no_grad()` forward
    inside `reference_context()` (default: `model.disable_adapter()`, the base).
    """
    if kind not in PREFERENCE_LOSSES:
        raise ValueError(f"unknown preference loss {kind!r}; use {PREFERENCE_LOSSES}")
    input_ids, completion_mask = batch["input_ids"], batch["completion_mask"]
    inputs = {"input_ids": input_ids, "attention_mask": batch["attention_mask"]}
    logits = model(**inputs, use_cache=False).logits
    logps, counts = completion_logps(logits, input_ids, completion_mask)
    chosen_logps, rejected_logps = logps.chunk(2)
    # TRL's IPO counts the unshifted completion mask; ORPO counts scored tokens.
    lengths = completion_mask.sum(dim=-1) if kind == "ipo" else counts
    chosen_lengths, rejected_lengths = lengths.chunk(2)

    chosen_nll = ref_chosen = ref_rejected = None
    if kind == "orpo":  # NLL over prompt + completion of the chosen rows
        n = len(chosen_logps)
        sums, tokens = completion_logps(
            logits[:n], input_ids[:n], batch["attention_mask"][:n]
        )
        chosen_nll = -sums.sum() / tokens.sum()
    elif reference_logps is not None:
        ref_chosen, ref_rejected = reference_logps
    elif "ref_chosen_logps" in batch:
        ref_chosen, ref_rejected = (
            batch["ref_chosen_logps"],
            batch["ref_rejected_logps"],
        )
    else:
        context = reference_context or model.disable_adapter
        with torch.no_grad(), context():
            ref_logits = model(**inputs, use_cache=False).logits
            ref_logps, _ = completion_logps(ref_logits, input_ids, completion_mask)
        ref_chosen, ref_rejected = ref_logps.chunk(2)

    return preference_loss(
        kind,
        chosen_logps,
        rejected_logps,
        ref_chosen,
        ref_rejected,
        beta,
        chosen_lengths=chosen_lengths,
        rejected_lengths=rejected_lengths,
        chosen_nll=chosen_nll,
    )
