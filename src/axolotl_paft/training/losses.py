"""Preference losses (DPO sigmoid, IPO, ORPO) and their metrics, matching TRL.

Pure tensor functions, checked against TRL 1.14 in `tests/test_losses.py`:

- `dpo` is `DPOTrainer` with `loss_type="sigmoid"` (reverse KL, no label
  smoothing: TRL's sigmoid loss ignores `label_smoothing`, only `robust`/`exo_pair`
  and the `aot*` losses read it);
- `ipo` is `loss_type="ipo"`: TRL divides each log-ratio by its number of
  completion tokens before the squared loss; its reward metrics stay summed;
- `rpo` is `loss_type=["sigmoid", "sft"]` at weights 1 and 1 (Axolotl's
  `dpo_loss_type: [sigmoid, sft]`): DPO plus the token-mean NLL of the chosen
  completions. Why offer it: DPO alone can win its pairs by pushing the
  rejected answers down while the chosen one never becomes what the model says
  (measured on SmolLM2, docs/evidence.md); the NLL term trains the chosen;
- `orpo` is `trl.experimental.orpo.ORPOTrainer`: odds from per-token *average*
  completion log-probs, plus the NLL of the chosen rows over prompt *and*
  completion tokens (token mean over the batch); no reference model.

Sequence log-probs are summed over completion tokens, shifted like TRL (the logit
at position t scores token t + 1). DPO and IPO take the reference from the base
model with every adapter disabled, as TRL does when it wraps a `peft_config`.

`LOSS_SPECS` is the one table of losses: each entry says what its loss needs (a
reference, which completion lengths, the chosen rows' NLL) and computes it;
`preference_loss` and `batch_preference_loss` read these specs, never names, and
`paft_preference_loss` accepts exactly its keys. Adding a loss is adding an entry
(docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from trl.trainer.utils import selective_log_softmax


def token_logps(logits: Tensor, input_ids: Tensor) -> Tensor:
    """Log-prob of each token given the ones before (`[N, L - 1]`): token `t` is
    scored by the logits at `t - 1`."""
    return selective_log_softmax(logits[:, :-1], input_ids[:, 1:])


def masked_sums(per_token: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per-row sum of `token_logps` over the tokens `mask` (`[N, L]`) selects, and
    how many were scored (a mask entry at position 0 never is)."""
    mask = mask[:, 1:]
    return per_token.masked_fill(mask == 0, 0.0).sum(dim=-1), mask.sum(dim=-1)


def completion_logps(
    logits: Tensor, input_ids: Tensor, completion_mask: Tensor
) -> tuple[Tensor, Tensor]:
    """Per-row sum of the log-probs of masked tokens, and how many were scored.

    `logits` is `[N, L, V]`, `input_ids` and `completion_mask` are `[N, L]`; token
    `t` is scored by the logits at `t - 1`, so a mask entry at position 0 is never
    counted. Returns `(logps [N], counts [N])`.
    """
    return masked_sums(token_logps(logits, input_ids), completion_mask)


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


@dataclass(frozen=True)
class PairLogps:
    """A loss's inputs, per pair (`[B]`): policy (and reference) log-probs summed
    over completion tokens, completion lengths, and the chosen rows' NLL (0-d)."""

    chosen: Tensor
    rejected: Tensor
    ref_chosen: Tensor | None = None
    ref_rejected: Tensor | None = None
    chosen_lengths: Tensor | None = None
    rejected_lengths: Tensor | None = None
    chosen_nll: Tensor | None = None

    def logratios(self) -> tuple[Tensor, Tensor]:
        """Policy minus reference log-probs of chosen and rejected."""
        return self.chosen - self.ref_chosen, self.rejected - self.ref_rejected


LossFn = Callable[[PairLogps, float], tuple[Tensor, dict[str, Tensor]]]


@dataclass(frozen=True)
class LossSpec:
    """One preference loss: what it needs and how it is computed.

    `lengths` says which completion lengths the loss normalises by: None (not
    length-normalised), `completion_mask` (unshifted mask sum, TRL's IPO) or
    `scored` (tokens that `completion_logps` scored, TRL's ORPO).
    """

    compute: LossFn  # (pairs, beta) -> (mean loss, TRL-named metrics)
    paper: str
    needs_reference: bool = True
    lengths: Literal["completion_mask", "scored"] | None = None
    needs_chosen_nll: bool = False


def _reference_metrics(pairs: PairLogps, beta: float) -> dict[str, Tensor]:
    chosen_logratios, rejected_logratios = pairs.logratios()
    return _reward_metrics(
        beta * chosen_logratios, beta * rejected_logratios, pairs.chosen, pairs.rejected
    )


def _dpo(pairs: PairLogps, beta: float) -> tuple[Tensor, dict[str, Tensor]]:
    chosen_logratios, rejected_logratios = pairs.logratios()
    losses = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))
    return losses.mean(), _reference_metrics(pairs, beta)


def _rpo(pairs: PairLogps, beta: float) -> tuple[Tensor, dict[str, Tensor]]:
    """TRL's `sft` term: cross-entropy over every chosen completion token."""
    loss, metrics = _dpo(pairs, beta)
    return loss - pairs.chosen.sum() / pairs.chosen_lengths.sum(), metrics


def _ipo(pairs: PairLogps, beta: float) -> tuple[Tensor, dict[str, Tensor]]:
    """TRL averages the log-ratios per completion token; rewards stay summed."""
    chosen_logratios, rejected_logratios = pairs.logratios()
    delta = chosen_logratios / pairs.chosen_lengths.clamp(min=1) - (
        rejected_logratios / pairs.rejected_lengths.clamp(min=1)
    )
    losses = (delta - 1 / (2 * beta)) ** 2
    return losses.mean(), _reference_metrics(pairs, beta)


def _orpo(pairs: PairLogps, beta: float) -> tuple[Tensor, dict[str, Tensor]]:
    chosen_avg = (pairs.chosen / pairs.chosen_lengths.clamp(min=1)).float()
    rejected_avg = (pairs.rejected / pairs.rejected_lengths.clamp(min=1)).float()
    log_odds = (chosen_avg - rejected_avg) - (
        _log1mexp(chosen_avg) - _log1mexp(rejected_avg)
    )
    ratio = F.logsigmoid(log_odds)
    loss = pairs.chosen_nll - (beta * ratio).mean()
    metrics = _reward_metrics(
        beta * chosen_avg, beta * rejected_avg, chosen_avg, rejected_avg
    )
    metrics["nll_loss"] = pairs.chosen_nll.detach()
    metrics["log_odds_ratio"] = ratio.detach().mean()
    metrics["log_odds_chosen"] = log_odds.detach().mean()
    return loss, metrics


# The one table of preference losses (`paft_preference_loss` accepts its keys).
LOSS_SPECS: dict[str, LossSpec] = {
    "dpo": LossSpec(compute=_dpo, paper="https://arxiv.org/abs/2305.18290"),
    "ipo": LossSpec(
        compute=_ipo,
        paper="https://arxiv.org/abs/2310.12036",
        lengths="completion_mask",
    ),
    "rpo": LossSpec(
        compute=_rpo, paper="https://arxiv.org/abs/2404.19733", lengths="scored"
    ),
    "orpo": LossSpec(
        compute=_orpo,
        paper="https://arxiv.org/abs/2403.07691",
        needs_reference=False,
        lengths="scored",
        needs_chosen_nll=True,
    ),
}
PREFERENCE_LOSSES = tuple(LOSS_SPECS)


def loss_spec(kind: str) -> LossSpec:
    """The spec of `kind`, or a ValueError listing the known losses."""
    if kind not in LOSS_SPECS:
        raise ValueError(f"unknown preference loss {kind!r}; use {tuple(LOSS_SPECS)}")
    return LOSS_SPECS[kind]


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

    All log-probs are per-pair sums over completion tokens (`[B]`). `dpo`, `rpo` and
    `ipo` need the reference log-probs; `ipo`, `rpo` and `orpo` need the
    completion lengths;
    `orpo` needs `chosen_nll` and ignores the reference. Metrics:
    `rewards/{chosen,rejected,accuracies,margins}`, `logps/{chosen,rejected}`, and
    for ORPO also `nll_loss`, `log_odds_ratio` (mean log-sigmoid of the log odds
    ratio) and `log_odds_chosen` (mean log odds ratio), TRL's names. As in TRL,
    ORPO's rewards and `logps/*` use the average per-token log-probs.
    """
    spec = loss_spec(kind)
    if spec.lengths and (chosen_lengths is None or rejected_lengths is None):
        raise ValueError(f"{kind} needs chosen_lengths and rejected_lengths")
    if spec.needs_chosen_nll and chosen_nll is None:
        raise ValueError(f"{kind} needs chosen_nll (NLL of the chosen sequences)")
    if spec.needs_reference and (
        ref_chosen_logps is None or ref_rejected_logps is None
    ):
        raise ValueError(f"{kind} needs the reference log-probs")
    pairs = PairLogps(
        chosen_logps,
        rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        chosen_lengths,
        rejected_lengths,
        chosen_nll,
    )
    return spec.compute(pairs, beta)


def reference_pair_logps(
    model: torch.nn.Module,
    batch: dict[str, Tensor],
    context: Callable[[], AbstractContextManager] | None = None,
) -> tuple[Tensor, Tensor]:
    """Reference log-probs of a preference batch's chosen and rejected
    completions: the batch's own, else a no-grad forward inside `context()`
    (default `model.disable_adapter()`, the base)."""
    if "ref_chosen_logps" in batch:
        return batch["ref_chosen_logps"], batch["ref_rejected_logps"]
    input_ids = batch["input_ids"]
    inputs = {"input_ids": input_ids, "attention_mask": batch["attention_mask"]}
    with torch.no_grad(), (context or model.disable_adapter)():
        ref_logits = model(**inputs, use_cache=False).logits
        ref_logps, _ = completion_logps(ref_logits, input_ids, batch["completion_mask"])
    return ref_logps.chunk(2)


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

    Reference log-probs (for losses whose spec needs them) come from
    `reference_logps`, else from the batch's `ref_chosen_logps`/`ref_rejected_logps`,
    else from a `torch.no_grad()` forward inside `reference_context()` (default:
    `model.disable_adapter()`, the base).
    """
    spec = loss_spec(kind)
    ref_chosen = ref_rejected = None
    if spec.needs_reference:  # before the policy forward: its graph is not alive yet
        ref_chosen, ref_rejected = reference_logps or reference_pair_logps(
            model, batch, reference_context
        )
    input_ids, completion_mask = batch["input_ids"], batch["completion_mask"]
    inputs = {"input_ids": input_ids, "attention_mask": batch["attention_mask"]}
    logits = model(**inputs, use_cache=False).logits
    per_token = token_logps(logits, input_ids)
    del logits  # only the per-token log-probs are needed from here
    logps, counts = masked_sums(per_token, completion_mask)
    chosen_logps, rejected_logps = logps.chunk(2)
    # TRL's IPO counts the unshifted completion mask; ORPO counts scored tokens.
    mask_lengths = spec.lengths == "completion_mask"
    lengths = completion_mask.sum(dim=-1) if mask_lengths else counts
    chosen_lengths, rejected_lengths = lengths.chunk(2)

    chosen_nll = None
    if spec.needs_chosen_nll:  # NLL over prompt + completion of the chosen rows
        n = len(chosen_logps)
        sums, tokens = masked_sums(per_token[:n], batch["attention_mask"][:n])
        chosen_nll = -sums.sum() / tokens.sum()

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
