"""mergekit configs that fuse the SFT (and preference) LoRA deltas on their base.

We never merge tensors ourselves: we write YAML for `mergekit-yaml` and check it
with mergekit's own config model and method registry when mergekit is importable.
Model references use mergekit's `base+adapter_dir` syntax, so each file runs as

    mergekit-yaml <file> <out_dir> --lora-merge-cache <cache dir> --random-seed 0

(`mergekit_command`, which explains the seed and the cache).

Traps of mergekit 0.1.5 handled here: method-level parameters (`t`, `lambda`,
`normalize`) only count at the top level, misspelled parameter names are silently
ignored (we check names against the method's spec), SLERP's two endpoints are the
SFT model (as `base_model`) and the preference model, `linear` must not name a
`base_model`, and the LoRA merge cache is keyed by folder name (so every run gets a
cache folder of its own).

The merged model carries the run's chat template: mergekit copies the tokenizer of
its base model, whose own template (or none) a run with `chat_template: llama3`
or `mistral_v1` replaced. Every config names the template of the tokenizer Axolotl
saved in output_dir (`run_chat_template`) in mergekit's top-level `chat_template`,
which `mergekit-yaml` itself writes into the merged model's tokenizer.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import yaml

LOG = logging.getLogger(f"axolotl.{__name__}")  # shown by axolotl's log config

MERGE_SEED = 0  # mergekit's --random-seed for every merge we run or print


def mergekit_command(config: Path | str, out: Path | str, cache: Path | str) -> str:
    """The `mergekit-yaml` line that rebuilds a merge we run (`run_merge_config`).

    DARE and DELLA drop delta entries at random and mergekit leaves its seed
    unset, hence `--random-seed`. The seed alone is not enough: mergekit seeds
    *before* it merges the LoRAs into the cache folder, and PEFT's adapter loading
    draws from the same generator, so a merge from an empty cache differs from one
    from a filled cache. `run_merge_config` fills the cache first; the same
    folder, filled, rebuilds its merge bit for bit (tests/test_merge.py)."""
    return (
        f"mergekit-yaml {config} {out} --lora-merge-cache {cache} "
        f"--random-seed {MERGE_SEED}"
    )


@dataclass(frozen=True)
class MethodLayout:
    """How one mergekit method takes deltas on a shared base."""

    base: str  # "pretrained", "sft" (SLERP endpoint) or "none"
    per_model: tuple[str, ...]
    shared: tuple[str, ...]
    paper: str  # the method's paper (mergekit's `reference_url`)
    default: bool = True  # in `paft_merge_methods` unless the user picks
    search: bool = True  # searched by `paft_merge_search` / axolotl-paft-sweep --search
    min_deltas: int = 1
    why_two: str = ""


_TASK_VECTOR = ("weight", "density")
_SCALED = ("lambda", "normalize")
_TIES = "https://arxiv.org/abs/2306.01708"
_DARE = "https://arxiv.org/abs/2311.03099"
_BREADCRUMBS = "https://arxiv.org/abs/2312.06795"
_DELLA = "https://arxiv.org/abs/2406.11617"

# The merge methods we emit configs for: the one place to add one (args.py's
# allowed values and defaults read this table; see docs/architecture.md). Order
# matters: the first default is the method the report's merge command names and
# the search tries first. Ordered by the mean score at default parameters on the
# miniature world (docs/evidence.md, world v3, 3 seeds): breadcrumbs-TIES 0.93
# (94% of the skill, 0.92 preference accuracy), DELLA 0.86, DARE-TIES 0.70, TIES
# 0.67 (it drops the preference delta), task arithmetic 0.50 (it drops the SFT
# delta); linear and SLERP keep the preference side only.
METHOD_LAYOUTS: dict[str, MethodLayout] = {
    "breadcrumbs_ties": MethodLayout(
        base="pretrained",
        per_model=(*_TASK_VECTOR, "gamma"),
        shared=_SCALED,
        paper=_BREADCRUMBS,
    ),
    "della": MethodLayout(
        base="pretrained",
        per_model=(*_TASK_VECTOR, "epsilon"),
        shared=_SCALED,
        paper=_DELLA,
    ),
    "dare_ties": MethodLayout(
        base="pretrained", per_model=_TASK_VECTOR, shared=_SCALED, paper=_DARE
    ),
    "ties": MethodLayout(
        base="pretrained", per_model=_TASK_VECTOR, shared=_SCALED, paper=_TIES
    ),
    "task_arithmetic": MethodLayout(
        base="pretrained",
        per_model=("weight",),
        shared=_SCALED,
        paper="https://arxiv.org/abs/2212.04089",
    ),
    "dare_linear": MethodLayout(
        base="pretrained",
        per_model=_TASK_VECTOR,
        shared=_SCALED,
        paper=_DARE,
        search=False,
    ),
    "linear": MethodLayout(
        base="none",
        per_model=("weight",),
        shared=("normalize",),
        paper="https://arxiv.org/abs/2203.05482",
        min_deltas=2,
        why_two="averages whole models",
    ),
    "slerp": MethodLayout(
        base="sft",
        per_model=(),
        shared=("t",),
        paper="https://en.wikipedia.org/wiki/Slerp",
        min_deltas=2,
        why_two="interpolates between two endpoints",
    ),
    "nuslerp": MethodLayout(
        base="pretrained",
        per_model=("weight",),
        shared=(),
        paper="https://github.com/arcee-ai/mergekit/blob/main/docs/merge_methods.md",
        default=False,
        search=False,
        min_deltas=2,
        why_two="interpolates between two task vectors",
    ),
    "breadcrumbs": MethodLayout(
        base="pretrained",
        per_model=(*_TASK_VECTOR, "gamma"),
        shared=_SCALED,
        paper=_BREADCRUMBS,
        default=False,
        search=False,
    ),
    "della_linear": MethodLayout(
        base="pretrained",
        per_model=(*_TASK_VECTOR, "epsilon"),
        shared=_SCALED,
        paper=_DELLA,
        default=False,
        search=False,
    ),
}
SUPPORTED_MERGE_METHODS = tuple(METHOD_LAYOUTS)
DEFAULT_MERGE_METHODS = tuple(m for m, lay in METHOD_LAYOUTS.items() if lay.default)
DEFAULT_SEARCH_METHODS = tuple(m for m, lay in METHOD_LAYOUTS.items() if lay.search)


def check_della_bounds(methods, density: float, epsilon: float) -> None:
    """mergekit only finds a bad DELLA epsilon while merging; find it before. (The
    DELLA family: the methods whose layout takes `epsilon`.)"""
    della = [m for m in methods if "epsilon" in METHOD_LAYOUTS[m].per_model]
    if della and not (density - epsilon > 0 and density + epsilon < 1):
        raise ValueError(
            "paft_merge_epsilon: DELLA needs 0 < density - epsilon and "
            f"density + epsilon < 1 (density {density}, epsilon {epsilon})"
        )


@dataclass(frozen=True)
class MergeSettings:
    """What the merge configs need: the `paft_merge_*` keys without the plugin
    (`PAFTArgs.merge_settings()` builds one from a config; the defaults here are
    the keys' defaults)."""

    methods: tuple[str, ...] = DEFAULT_MERGE_METHODS
    sft_weight: float = 1.0
    preference_weight: float = 1.0
    density: float = 0.5
    epsilon: float = 0.1
    gamma: float = 0.01
    lambda_: float = 1.0  # mergekit's `lambda` (a Python keyword)
    normalize: bool | None = None  # None keeps each method's own default
    slerp_t: float = 0.5
    dtype: str = "bfloat16"

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in METHOD_LAYOUTS]
        if unknown:
            raise ValueError(f"unknown merge method(s) {unknown}")
        if not 0 < self.density <= 1:
            raise ValueError(f"paft_merge_density: {self.density} not in (0, 1]")
        check_della_bounds(self.methods, self.density, self.epsilon)


MERGE_DEFAULTS = MergeSettings()


@dataclass(frozen=True)
class MergeDeltas:
    """The base model and the LoRA adapter folders to fuse on it."""

    base_model: str
    sft_adapter: Path
    preference_adapter: Path | None = None
    chat_template: str | None = None  # the run's (`run_chat_template`)


def run_tokenizer(output_dir: Path):
    """The tokenizer Axolotl saved in `output_dir` before training (the run's
    `chat_template` applied, the tokens its rows were rendered with), or None
    without one."""
    from transformers import AutoTokenizer

    if not (Path(output_dir) / "tokenizer_config.json").is_file():
        return None
    return AutoTokenizer.from_pretrained(output_dir)


def run_chat_template(output_dir: Path) -> str | None:
    """The chat template of the run's tokenizer (`run_tokenizer`), or None."""
    tokenizer = run_tokenizer(output_dir)
    return None if tokenizer is None else tokenizer.chat_template


@dataclass(frozen=True)
class EmittedConfigs:
    """What `write_merge_configs` wrote and what it skipped (method -> reason)."""

    written: dict[str, Path]
    skipped: dict[str, str]
    cache_dir: Path


def model_reference(base_model: str, adapter: Path | str) -> str:
    """mergekit's `base+adapter` reference."""
    return f"{base_model}+{adapter}"


def base_model_reference(base_model: str | Path, revision: str | None = None) -> str:
    """How everything after training names the base (merge configs, the search,
    the sweep): a local folder by its absolute path; a hub id (`ORG/NAME`, never a
    path under the working directory) by its snapshot folder in the local HF cache
    at `revision` (Axolotl's `revision_of_model`; else the cached `main`), which
    is what training loaded; a hub id not in the cache as itself.

    Not the hub id itself when cached: mergekit 0.1.5 lists a bare hub id's files
    on the hub before reading it (`ModelReference.local_path`), so a config whose
    `base_model:` is a hub id fails under `HF_HUB_OFFLINE=1` even with the model
    cached (`hub_id+adapter` references do load offline); and a pinned revision
    would be lost. The snapshot folder names the hub id and revision in its path."""
    path = Path(base_model)
    if path.exists():
        return str(path.resolve())
    from huggingface_hub import try_to_load_from_cache

    try:
        config = try_to_load_from_cache(
            str(base_model), "config.json", revision=revision
        )
    except ValueError:  # not a hub id either: the loader names the problem
        return str(base_model)
    return str(Path(config).parent) if isinstance(config, str) else str(base_model)


def _parameter_values(settings: MergeSettings) -> dict:
    values = {
        "density": settings.density,
        "gamma": settings.gamma,
        "epsilon": settings.epsilon,
        "lambda": settings.lambda_,
        "t": settings.slerp_t,
    }
    if settings.normalize is not None:
        values["normalize"] = settings.normalize
    return values


def build_config(
    method: str, deltas: MergeDeltas, settings: MergeSettings
) -> dict | str:
    """The mergekit config dict for `method`, or the reason it does not fit."""
    layout = METHOD_LAYOUTS[method]
    n_deltas = 1 + (deltas.preference_adapter is not None)
    if n_deltas < layout.min_deltas:
        return (
            f"{method} {layout.why_two} and needs two deltas; set "
            "paft_preference_adapter (or use parallel mode) to merge SFT with a "
            "preference adapter"
        )
    values = _parameter_values(settings)
    roles = [("sft", deltas.sft_adapter, settings.sft_weight)]
    if deltas.preference_adapter is not None:
        roles.append(
            ("preference", deltas.preference_adapter, settings.preference_weight)
        )
    models = []
    for _, adapter, weight in roles:
        model = {"model": model_reference(deltas.base_model, adapter)}
        if layout.per_model:
            params = {"weight": weight, **values}
            model["parameters"] = {k: params[k] for k in layout.per_model}
        models.append(model)
    config: dict = {"merge_method": method}
    if layout.base == "pretrained":
        config["base_model"] = deltas.base_model
    elif layout.base == "sft":
        config["base_model"] = models.pop(0)["model"]
    config["models"] = models
    shared = {k: values[k] for k in layout.shared if k in values}
    if shared:
        config["parameters"] = shared
    config["dtype"] = settings.dtype
    if deltas.chat_template:
        config["chat_template"] = deltas.chat_template
    return config


def validate_config(config: dict) -> None:
    """Check `config` with mergekit's config model and the method's own spec.

    Raises ValueError naming the problem; does nothing when mergekit is absent.
    """
    try:
        from mergekit.config import MergeConfiguration
        from mergekit.merge_methods import get as get_method
        from mergekit.merge_methods.base import BasePolicy, ParameterScope
    except ImportError:
        return
    method = config["merge_method"]
    try:
        MergeConfiguration.model_validate(config)
        spec = get_method(method).spec
    except Exception as err:
        raise ValueError(f"mergekit rejects the {method} config: {err}") from err
    scopes = {p.name: p.scope for p in spec.parameters}
    for name in config.get("parameters", {}):
        if scopes.get(name) != ParameterScope.SHARED:
            raise ValueError(f"{method}: {name!r} is not a method-level parameter")
    for model in config["models"]:
        for name, value in model.get("parameters", {}).items():
            if name not in scopes or scopes[name] == ParameterScope.SHARED:
                raise ValueError(f"{method}: {name!r} is not a per-model parameter")
            spec_param = next(p for p in spec.parameters if p.name == name)
            for setting in value if isinstance(value, list) else [value]:
                spec_param.validate(setting)  # a list: per layer (a gradient)
    missing = [
        p.name
        for p in spec.parameters
        if p.required
        and p.name not in config.get("parameters", {})
        and not all(p.name in m.get("parameters", {}) for m in config["models"])
    ]
    if missing:
        raise ValueError(f"{method}: required parameter(s) {missing} not set")
    has_base = "base_model" in config
    if spec.contract.base == BasePolicy.REQUIRED and not has_base:
        raise ValueError(f"{method} requires base_model")
    n_inputs = len(config["models"]) + (
        has_base and spec.contract.base != BasePolicy.IGNORED
    )
    contract = spec.contract
    if n_inputs < contract.min_inputs or (
        contract.max_inputs is not None and n_inputs > contract.max_inputs
    ):
        raise ValueError(f"{method}: {n_inputs} inputs break its contract {contract}")


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (a chat template) as YAML literal blocks, readable."""


_Dumper.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar(
        "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None
    ),
)


# Where the plugin's merges go in output_dir: apart from `merged/`, which is
# `axolotl merge-lora`'s (it writes its model into that folder itself).
MERGED_DIR = "paft_merged"


def merged_dir(output_dir: Path, name: str) -> Path:
    """output_dir/paft_merged/<name>: a merge the plugin builds after training."""
    return Path(output_dir) / MERGED_DIR / name


def lora_cache_dir(root: Path) -> Path:
    """A LoRA merge cache folder new to this call, under `root/lora-cache`: mergekit
    keys its cache by the adapter folder's name and would otherwise reuse another
    run's merges (the one place a cache is named)."""
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    return Path(root) / "lora-cache" / f"run-{run_id}"


def write_config(path: Path, config: dict, header: str = "") -> Path:
    """The one mergekit YAML writer: `header` (comment lines), then `config` with
    a multi-line string (the chat template) as a readable literal block."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + yaml.dump(config, Dumper=_Dumper, sort_keys=False))
    return path


def run_header(title: str, path: Path, merged_dir: Path, cache_dir: Path) -> str:
    """A config's comment header: what it is and the command that builds it."""
    return (
        f"# {title}. Run:\n"
        f"#   {mergekit_command(path, merged_dir, cache_dir)}\n"
        "# The cache folder is new for every training run: mergekit keys its\n"
        "# LoRA cache by folder name and would otherwise reuse stale merges.\n"
    )


def write_merge_configs(
    out_dir: Path, deltas: MergeDeltas, settings: MergeSettings
) -> EmittedConfigs:
    """Write one `<method>.yml` per fitting method into `out_dir`."""
    cache_dir = lora_cache_dir(out_dir)
    written, skipped = {}, {}
    for method in settings.methods:
        config = build_config(method, deltas, settings)
        if isinstance(config, str):
            skipped[method] = config
            LOG.info("paft: no %s config: %s", method, config)
            continue
        validate_config(config)
        path = out_dir / f"{method}.yml"
        title = f"PAFT merge ({method}) written by axolotl-paft"
        header = run_header(title, path, merged_dir(out_dir.parent, method), cache_dir)
        written[method] = write_config(path, config, header)
    out_dir.mkdir(parents=True, exist_ok=True)
    return EmittedConfigs(written=written, skipped=skipped, cache_dir=cache_dir)


def run_merge_config(config_path: Path, out_path: Path, cache_dir: Path) -> Path:
    """Run one emitted config through mergekit's Python API, as
    `mergekit_command` does: the LoRA references merged into `cache_dir` first,
    then the merge seeded with `MERGE_SEED`, the base's tokenizer copied with
    the config's `chat_template` (the run's) set."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    text = config_path.read_text()
    config = MergeConfiguration.model_validate(yaml.safe_load(text))
    for model in config.referenced_models():
        model.merged(cache_dir=str(cache_dir))
    run_merge(
        config,
        str(out_path),
        options=MergeOptions(
            lora_merge_cache=str(cache_dir),
            copy_tokenizer=True,
            random_seed=MERGE_SEED,
        ),
        config_source=text,
    )
    return out_path
