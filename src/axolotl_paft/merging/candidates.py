"""Merge-search candidates: one point of the search space (`Candidate`) and its
checked mergekit config, written by `configs.write_config` and built in memory
(`inmemory`) or on disk by mergekit (`build_candidate`).

A candidate's weights can depend on the layer (`PROFILES`): each delta's weight
times a profile of multipliers, written as mergekit's own per-layer parameter
list (a gradient: the values spread evenly over the layers and interpolated
between them), so that `mergekit-yaml` builds the same merge from the config.
"""

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
class LayerProfile:
    """Multipliers of the SFT and the preference weight over the layers, first
    layer to last (one value: the same for every layer)."""

    sft: tuple[float, ...]
    preference: tuple[float, ...]
    description: str
    paper: str | None = None


LINES = "https://arxiv.org/abs/2410.17146"
BLOCKS = "https://arxiv.org/abs/2309.06256"
PROFILES = {
    "flat": LayerProfile(
        sft=(1.0,), preference=(1.0,), description="one weight per delta"
    ),
    "lines": LayerProfile(
        sft=(0.2, 1.0),
        preference=(0.2, 1.0),
        description="both deltas ramp from a fifth of their weight in the first "
        "layer to all of it in the last: shallow layers stay near the base",
        paper=LINES,
    ),
    "preference_deep": LayerProfile(
        sft=(1.5, 1.0, 0.5),
        preference=(0.5, 1.0, 1.5),
        description="early / middle / late blocks weighted apart: the SFT delta "
        "leads in the early layers, the preference delta in the late ones",
        paper=BLOCKS,
    ),
    "preference_shallow": LayerProfile(
        sft=(0.5, 1.0, 1.5),
        preference=(1.5, 1.0, 0.5),
        description="the other way round: the preference delta leads early, the "
        "SFT delta late",
        paper=BLOCKS,
    ),
}


@dataclass(frozen=True)
class Candidate:
    """One point of the search space."""

    method: str
    sft_weight: float = 1.0
    preference_weight: float = 1.0
    density: float = 0.5
    profile: str = "flat"  # a `PROFILES` entry

    @property
    def name(self) -> str:
        name = f"{self.method}-s{self.sft_weight:g}-p{self.preference_weight:g}"
        if "density" in METHOD_LAYOUTS[self.method].per_model:
            name += f"-d{self.density:g}"
        if self.profile != "flat":
            name += f"-{self.profile}"
        return name

    def varies(self, field: str) -> bool:
        """Whether `field` changes this method's merge at all."""
        if field in ("density", "profile"):  # SLERP's position t has no layers
            per_model = METHOD_LAYOUTS[self.method].per_model
            return ("density" if field == "density" else "weight") in per_model
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
    if candidate.profile != "flat":
        _layer_weights(config, candidate)
    validate_config(config)
    return config


def _layer_weights(config: dict, candidate: Candidate) -> None:
    """Each delta's `weight` as mergekit's per-layer list: the candidate's weight
    times its profile's multipliers (the SFT delta is the first model)."""
    if not candidate.varies("profile"):
        raise ValueError(f"{candidate.method} has no per-model weight to profile")
    profile = PROFILES[candidate.profile]
    scales = (
        (candidate.sft_weight, profile.sft),
        (candidate.preference_weight, profile.preference),
    )
    for model, (weight, multipliers) in zip(config["models"], scales, strict=True):
        model["parameters"]["weight"] = [weight * m for m in multipliers]


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
