"""Merge-search candidates: one point of the search space (`Candidate`) and its
checked mergekit config, written by `configs.write_config` and built in memory
(`inmemory`) or on disk by mergekit (`build_candidate`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from axolotl_paft.merging.configs import (
    METHOD_LAYOUTS,
    MergeDeltas,
    MergeSettings,
    base_model_reference,
    build_config,
    run_merge_config,
    validate_config,
    write_config,
)


@dataclass(frozen=True)
class Candidate:
    """One point of the search space."""

    method: str
    sft_weight: float = 1.0
    preference_weight: float = 1.0
    density: float = 0.5

    @property
    def name(self) -> str:
        name = f"{self.method}-s{self.sft_weight:g}-p{self.preference_weight:g}"
        if "density" in METHOD_LAYOUTS[self.method].per_model:
            name += f"-d{self.density:g}"
        return name

    def varies(self, field: str) -> bool:
        """Whether `field` changes this method's merge at all."""
        if field == "density":
            return "density" in METHOD_LAYOUTS[self.method].per_model
        return True  # SLERP reads the weights as its position t


def candidate_config(
    base: str,
    sft: Path,
    preference: Path,
    candidate: Candidate,
    chat_template: str | None = None,
) -> dict:
    """The checked mergekit config of `candidate`. SLERP's `t` is the preference
    share of the two weights; `chat_template`: the run's (`configs.MergeDeltas`),
    which mergekit then writes into the merged model's tokenizer."""
    share = candidate.preference_weight / (
        candidate.sft_weight + candidate.preference_weight
    )
    settings = MergeSettings(
        methods=(candidate.method,),
        sft_weight=candidate.sft_weight,
        preference_weight=candidate.preference_weight,
        density=candidate.density,
        slerp_t=share,
        dtype="float32",
    )
    deltas = MergeDeltas(base, sft, preference, chat_template=chat_template)
    config = build_config(candidate.method, deltas, settings)
    if isinstance(config, str):
        raise ValueError(config)
    validate_config(config)
    return config


def write_candidate_config(
    base: Path,
    sft: Path,
    preference: Path,
    candidate: Candidate,
    out: Path,
    chat_template: str | None = None,
) -> tuple[dict, Path]:
    """Write `candidate`'s config next to `out` (`out`.yml); return it and its
    path."""
    config = candidate_config(
        base_model_reference(base), Path(sft).resolve(), Path(preference).resolve(),
        candidate, chat_template,
    )  # fmt: skip
    path = Path(out).parent / f"{Path(out).name}.yml"
    return config, write_config(path, config)


def build_candidate(
    base: Path,
    sft: Path,
    preference: Path,
    candidate: Candidate,
    out: Path,
    cache,
    chat_template: str | None = None,
) -> Path:
    """Write `candidate`'s config next to `out` and run it through mergekit."""
    _, path = write_candidate_config(
        base, sft, preference, candidate, out, chat_template
    )
    return run_merge_config(path, Path(out), Path(cache))
