"""Constants shared by several modules, each defined once."""

from __future__ import annotations

# The adapter name PEFT (and so Axolotl) gives a model's single LoRA.
PEFT_DEFAULT_ADAPTER = "default"

# Axolotl's seed when `seed` is unset (its schema's default).
DEFAULT_SEED = 42

# Merge candidates a search builds and scores unless told otherwise: every method
# once, then about two balance phases (`merging.search`, `paft_merge_search_budget`).
DEFAULT_BUDGET = 24

# What a merge is exported as (`merging.export`, `paft_merge_export`).
EXPORTS = ("model", "adapter", "both")
# the largest relative Frobenius error of an extracted adapter taken as the merge
DEFAULT_EXPORT_MAX_ERROR = 0.05

# Environment of every process we start: no hub access, no telemetry, no W&B.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "WANDB_MODE": "disabled",
    "DO_NOT_TRACK": "1",
    "AXOLOTL_DO_NOT_TRACK": "1",
}


def run_seed(cfg) -> int:
    """The seed of a validated Axolotl config, Axolotl's default when unset."""
    seed = cfg.get("seed")
    return DEFAULT_SEED if seed is None else seed
