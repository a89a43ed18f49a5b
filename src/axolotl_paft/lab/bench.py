"""What the benchmark scripts (`benchmarks/<question>/*.py`) share; nothing else
imports it.

- how a run is recorded: `provenance` (cost and real-model scripts),
  `world_provenance` (the miniature world's grids, whose reports read its keys),
  `measured_line`; `export_tree`, an earlier commit's `src/`;
- timed `axolotl train` processes: `timed_run`, `plain_runs` (the two runs
  parallel mode replaces), `step_times`, `rounds_table`, and `step_world`, the
  20M-parameter world with a 32k vocabulary of the per-step cost;
- synthetic adapters on real shapes: `SMOLLM2`, `LINEAR_MODULES`, `MISTRAL`,
  `make_adapter`, `mistral_stack`, `copy_smollm2_tokenizer`;
- the miniature world's SFT recipe of the evidence grid (`sft_settings`,
  `sft_run`, ...), `merge_and_score`, and the mean over seeds with its 95%
  interval (`mean_ci`, `ci_cell`) of the grids' reports.

Heavy imports (torch, transformers, Axolotl) happen inside the functions.
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

from axolotl_paft.lab.smollm2 import default_root

HERE = Path(__file__).resolve().parent

# --- how a run is recorded ---


def git(*args: str) -> str:
    """`git ARGS` in the repository this module is in (stdout, stripped)."""
    return subprocess.run(
        ["git", *args], cwd=HERE, capture_output=True, text=True
    ).stdout.strip()


def provenance(command: str) -> dict:
    """The code (commit, uncommitted changes), packages and machine of a run."""
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "commit": git("rev-parse", "HEAD"),
        "dirty": bool(git("status", "--porcelain")),
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "versions": {
            p: version(p) for p in ("torch", "transformers", "axolotl", "peft", "trl")
        },
        "python": platform.python_version(),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }


def offline_real_model(out: Path, seeds: list[int]) -> None:
    """The environment of a real-model benchmark in this process: offline, the
    first seed's HF cache (every seed's holds the same model; huggingface_hub
    reads HF_HOME once, so call this before anything imports it), the
    machine's cores for torch."""
    from axolotl_paft.const import OFFLINE_ENV

    os.environ.update(
        OFFLINE_ENV, HF_HOME=str(Path(out) / f"seed{seeds[0]}" / "hf_home")
    )
    os.environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0))))


def write_results(folder: Path, stem: str, record: dict, markdown: str) -> None:
    """A benchmark's results beside its script: `<stem>.json` (the record,
    provenance included) and `<stem>.md`."""
    (Path(folder) / f"{stem}.json").write_text(json.dumps(record, indent=1))
    (Path(folder) / f"{stem}.md").write_text(markdown.rstrip("\n") + "\n")


def measured_line(prov: dict, command: bool = False) -> str:
    """`provenance` as one sentence for a results file (with its command)."""
    versions = ", ".join(f"{k} {v}" for k, v in prov["versions"].items())
    said = f": `{prov['command']}`" if command else ""
    return (
        f"Measured {prov['date_utc']} at commit {prov['commit'][:7]}"
        f"{' (uncommitted changes)' if prov['dirty'] else ''}{said}; "
        f"{versions}; Python {prov['python']}; {prov['nproc']} x {prov['cpu']}, "
        f"OMP_NUM_THREADS={prov['omp_num_threads']}."
    )


def world_provenance(argv: list[str], script: str) -> dict:
    """The record of a miniature-world run (`python SCRIPT ARGV`): the keys the
    seed files and reports of the evidence grid and the search frontier read."""
    packages = ("axolotl", "torch", "transformers", "peft", "trl", "mergekit")
    return {
        "commit": git("rev-parse", "HEAD"),
        "packages": {p: version(p) for p in packages},
        "machine": f"{platform.machine()} {platform.processor()} "
        f"{os.cpu_count()} cores, {platform.platform()}",
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "command": " ".join(["python", script, *argv]),
    }


def export_tree(rev: str, dest: Path) -> Path:
    """`src/` of commit `rev` under `dest` (replaced if present)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", rev, "src"],
        cwd=git("rev-parse", "--show-toplevel"),
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest / "src"


# --- timed `axolotl train` processes ---


def timed_run(
    config: dict, path: Path, argv: list[str] | None = None, env: dict | None = None
) -> dict:
    """One `axolotl train` process: wall seconds and the child's peak RSS.

    `argv` replaces the command (`axolotl train PATH --launcher python`); `env` adds
    environment variables."""
    import yaml

    shutil.rmtree(config["output_dir"], ignore_errors=True)
    path.write_text(yaml.safe_dump(config))
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        **(env or {}),
    }
    argv = argv or [
        str(bin_dir / "axolotl"),
        "train",
        str(path),
        "--launcher",
        "python",
    ]
    start = time.perf_counter()
    child = subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(child.pid, 0)  # this child's own peak RSS
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"axolotl train {path} failed")
    return {"wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024}


def plain_runs(world, out: Path, common: dict) -> tuple[dict, dict]:
    """The two runs parallel mode replaces: a plain Axolotl SFT LoRA run and a
    plain `rl: dpo` LoRA run on the preference data (no plugin in either)."""
    from axolotl_paft.lab.toy import axolotl_config

    sft = axolotl_config(world, out / "sft", **common)
    del sft["plugins"]
    dpo = axolotl_config(
        world,
        out / "dpo",
        rl="dpo",
        rl_beta=0.1,
        datasets=[{"path": str(world.preference_path), "type": "chatml.intel"}],
        **common,
    )
    del dpo["plugins"]
    return sft, dpo


def step_times(path: Path, warmup: int) -> list[float]:
    """Seconds per optimizer step after `warmup` steps (gaps between step ends)."""
    import json

    ends = json.loads(path.read_text())["step_end"]
    return [b - a for a, b in zip(ends[warmup - 1 : -1], ends[warmup:], strict=True)]


def rounds_table(results: dict, med: dict, label: str = "run") -> list[str]:
    """Markdown rows: per run its median step, each round's median step and its
    median peak RSS."""
    return [
        f"| {label} | median step (s) | per-round medians (s) | "
        "median peak RSS (MiB) |",
        "|---|---|---|---|",
        *(
            f"| {n} | {m['median_step_s']:.3f} | "
            + ", ".join(f"{r['median_step_s']:.3f}" for r in results[n])
            + f" | {m['peak_rss_mib']:.0f} |"
            for n, m in med.items()
        ),
    ]


STEP_VOCAB = 32768
STEP_DIMS = {
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
STEP_FIELD_TOKENS = 240  # each text field; a sequence is about 2 * 240 + template


def _words(rng: random.Random, n: int) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choices(letters, k=rng.randint(3, 9))) for _ in range(n)]


def step_world(
    root: Path,
    n_sft: int,
    n_preference: int,
    seed: int = 0,
    dims: dict | None = None,
    field_tokens: int = STEP_FIELD_TOKENS,
):
    """32k tokenizer, random-init model and rows of 2 * `field_tokens` under
    `root`; returns the `ToySetup` and the vocabulary size."""
    from axolotl_paft.lab.toy import ToySetup, build_model, build_tokenizer, write_jsonl

    rng = random.Random(seed)
    lexicon = _words(rng, 40000)
    corpus = [" ".join(rng.choices(lexicon, k=400)) for _ in range(1500)]
    model_dir = root / "model"
    tokenizer = build_tokenizer(model_dir, corpus, vocab_size=STEP_VOCAB)

    def text() -> str:  # exactly field_tokens tokens of random words
        ids = tokenizer(" ".join(rng.choices(lexicon, k=field_tokens)))["input_ids"]
        return tokenizer.decode(ids[:field_tokens])

    sft = [
        {
            "messages": [
                {"role": "user", "content": text()},
                {"role": "assistant", "content": text()},
            ]
        }
        for _ in range(n_sft)
    ]
    preference = [
        {"system": "", "question": text(), "chosen": text(), "rejected": text()}
        for _ in range(n_preference)
    ]
    build_model(model_dir, tokenizer, dims=dims or STEP_DIMS, pretrain_steps=0)
    return ToySetup(
        model_dir=model_dir,
        sft_path=write_jsonl(root / "data" / "sft.jsonl", sft),
        preference_path=write_jsonl(root / "data" / "preference.jsonl", preference),
    ), len(tokenizer)


# --- synthetic adapters on real shapes ---

SMOLLM2 = default_root() / "model"  # the fp32 folder `smollm2.build()` writes
LINEAR_MODULES = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
]
MISTRAL = dict(  # Mistral-7B's layer shapes, a small vocabulary
    hidden_size=4096,
    intermediate_size=14336,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=1024,
    max_position_embeddings=4096,
)


def make_adapter(base: Path, out: Path, seed: int, rank: int = 16) -> Path:
    """A rank-`rank` LoRA on every linear layer with small non-zero A and B."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=LINEAR_MODULES,
        init_lora_weights=False,
    )
    model = get_peft_model(model, config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(0.01)
    model.save_pretrained(out)
    return out


WIDE_VOCAB = 262144  # Gemma-3's vocabulary


def wide_vocab_model(out: Path | None = None, hidden: int = 16, layers: int = 1):
    """A random-init Gemma3ForCausalLM with Gemma-3's 262,144-token vocabulary
    and tiny layers (`hidden`, 2 heads, tied embedding): the vocabulary's share
    of a cost at Gemma-3's scale, at a few million parameters (hidden 16).
    Saved to `out` (fp32, no tokenizer) when given; returns the model."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        vocab_size=WIDE_VOCAB,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=hidden // 2,
        max_position_embeddings=2048,
    )
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(config).eval()
    if out is not None:
        model.save_pretrained(out, safe_serialization=True)
    return model


def copy_smollm2_tokenizer(out: Path) -> None:
    """SmolLM2's tokenizer into `out` (mergekit reads one) when it is built."""
    from transformers import AutoTokenizer

    if SMOLLM2.exists():
        AutoTokenizer.from_pretrained(SMOLLM2).save_pretrained(out)


def mistral_stack(out: Path, layers: int) -> Path:
    """`layers` random Mistral-7B-shaped layers, saved in bf16 as Mistral-7B is,
    with SmolLM2's tokenizer when it is built."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    config = MistralConfig(num_hidden_layers=layers, **MISTRAL)
    MistralForCausalLM(config).to(torch.bfloat16).save_pretrained(out)
    copy_smollm2_tokenizer(out)
    return out


# --- the miniature world's evidence grid ---

LAMBDAS = {"loss": [1e-4, 3e-4, 1e-3, 3e-3], "proximal": [0.03, 0.1, 0.3, 1.0]}
SFT_RATE = 1e-3


def sft_settings() -> list[tuple[str, float]]:
    """Lambda 0, then both modes in turn from the middle of their ranges out (so
    that a run cut short still covers both modes)."""
    order = (2, 1, 0, 3)
    return [("loss", 0.0)] + [
        (mode, LAMBDAS[mode][i]) for i in order for mode in ("loss", "proximal")
    ]


def sft_tag(mode: str, lam: float) -> str:
    return "l0" if lam == 0 else f"{mode}{lam:g}"


def sft_tag_order(tag: str) -> tuple:
    """l0, then loss mode by lambda, then proximal mode by lambda."""
    if tag == "l0":
        return (0, 0.0)
    mode = "loss" if tag.startswith("loss") else "proximal"
    return (1 + (mode == "proximal"), float(tag.removeprefix(mode)))


def sft_dir(out: Path, seed: int, tag: str) -> Path:
    return out / f"s{seed}-sft-{tag}"


def sft_run(world, out: Path, seed: int, opts, mode: str, lam: float) -> dict:
    """The grid's SFT config at one L1 setting (`opts.steps` steps)."""
    from axolotl_paft.lab.world import sft_config

    return sft_config(
        world, sft_dir(out, seed, sft_tag(mode, lam)), l1_lambda=lam, l1_mode=mode,
        learning_rate=SFT_RATE, seed=seed, steps=opts.steps,
    )  # fmt: skip


def merge_and_score(
    scorer, world, sft: Path, pref: Path, candidate, out: Path, cache: Path
):
    """`candidate` (a `search.Candidate`) of one pair built by mergekit's engine,
    as the search builds it, scored by `scorer`, deleted."""
    from axolotl_paft.merging.candidates import build_candidate

    merged = build_candidate(world.model_dir, sft, pref, candidate, out, cache)
    metrics = scorer(merged)
    shutil.rmtree(merged)
    return metrics


T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447}


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean over seeds and the half-width of its 95% Student-t interval (nan
    with one value; nan values left out)."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    sem = statistics.stdev(values) / math.sqrt(len(values))
    return mean, T975[len(values) - 1] * sem


def ci_cell(pair: tuple[float, float], percent: bool = False) -> str:
    """`mean_ci`'s pair as a table cell: `mean +- half` (2 decimals)."""
    mean, half = pair
    scale, unit = (100, "%") if percent else (1, "")
    if math.isnan(half):
        return f"{scale * mean:.2f}{unit}"
    return f"{scale * mean:.2f}{unit} +- {scale * half:.2f}"
