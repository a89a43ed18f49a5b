"""Tiny local models, tokenizers and datasets for the demo, tests and benchmarks.

Nothing here touches a model hub: the tokenizer is a byte-level BPE trained on the
generated text, the model is a randomly initialised Llama/Mistral/Qwen2 of a few
hundred thousand parameters, and the data sets are synthetic JSONL files.

The base is briefly pre-trained to answer sums with a bare number ("19"); the SFT
skill is a fixed answer format ("12 plus 7 is 19."); the preference is stylistic:
the chosen answer is polite and correct, the rejected one curt and wrong.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from axolotl_paft.const import DEFAULT_SEED

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
    "+ '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]
ARCHITECTURES = ("llama", "mistral", "qwen2")


@dataclass(frozen=True)
class ToySetup:
    """Paths of one locally built toy world."""

    model_dir: Path
    sft_path: Path
    preference_path: Path
    preference_type: str = "chatml.intel"  # Axolotl's DPO loader of the file


def _arithmetic_pair(rng: random.Random) -> tuple[str, int, int]:
    a, b = rng.randint(0, 20), rng.randint(0, 20)
    return f"What is {a} plus {b}?", a, b


def _chat_rows(n: int, seed: int, answer: Callable[[int, int], str]) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        question, a, b = _arithmetic_pair(rng)
        messages = [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer(a, b)},
        ]
        rows.append({"messages": messages})
    return rows


def sft_rows(n: int, seed: int = 0) -> list[dict]:
    """Chat rows (`messages`) teaching `a plus b is c.` answers."""
    return _chat_rows(n, seed, lambda a, b: f"{a} plus {b} is {a + b}.")


def preference_rows(n: int, seed: int = 1) -> list[dict]:
    """Preference rows in Axolotl's `chatml.intel` shape: question/chosen/rejected."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        question, a, b = _arithmetic_pair(rng)
        rows.append(
            {
                "system": "You are a helpful assistant.",
                "question": question,
                "chosen": f"Sure! {a} plus {b} is {a + b}. Glad to help.",
                "rejected": f"no. {a + b + rng.randint(1, 5)}",
            }
        )
    return rows


def pretraining_rows(n: int, seed: int = 2) -> list[dict]:
    """What the toy base learns before any adapter: bare-number answers."""
    return _chat_rows(n, seed, lambda a, b: str(a + b))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    """Write rows as JSON lines, creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _corpus(rows: list[dict]) -> list[str]:
    texts = []
    for row in rows:
        texts.extend(m["content"] for m in row.get("messages", []))
        fields = ("system", "question", "chosen", "rejected")
        texts.extend(str(row[k]) for k in fields if k in row)
    texts.extend(["user", "assistant", "system", "Below is an instruction."])
    return texts


def build_tokenizer(out_dir: Path, texts: list[str], vocab_size: int = 400):
    """Train a byte-level BPE on `texts` and save it with a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def build_model(
    out_dir: Path,
    tokenizer,
    arch: str = "llama",
    seed: int = 0,
    pretrain_steps=300,
    dims: dict | None = None,
    pretrain_rows: list[dict] | None = None,
    pretrain_lr: float = 3e-3,
) -> Path:
    """Save a tiny causal LM of `arch`, briefly pre-trained, next to the tokenizer.

    `dims` overrides the config's sizes (hidden_size, num_hidden_layers, ...);
    `pretrain_rows` replaces the bare-number sums the base learns by default."""
    import torch
    from transformers import (
        AutoModelForCausalLM,
        LlamaConfig,
        MistralConfig,
        Qwen2Config,
    )

    config_cls = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}
    if arch not in config_cls:
        raise ValueError(f"unknown toy architecture {arch!r}; use {ARCHITECTURES}")
    sizes = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        **(dims or {}),
    }
    config = config_cls[arch](
        vocab_size=len(tokenizer),
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **sizes,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    if pretrain_steps:
        rows = pretraining_rows(512) if pretrain_rows is None else pretrain_rows
        _pretrain(model, tokenizer, rows, pretrain_steps, pretrain_lr)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def _pretrain(model, tokenizer, rows: list[dict], steps: int, lr: float) -> None:
    """A few hundred full-model AdamW steps so adapters start from a real base."""
    import torch

    texts = [tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in rows]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(texts), (32,), generator=generator)
        loss = model(
            input_ids=batch["input_ids"][idx],
            attention_mask=batch["attention_mask"][idx],
            labels=labels[idx],
        ).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def build_toy_setup(
    root: Path, arch: str = "llama", n_sft: int = 64, n_preference: int = 64
) -> ToySetup:
    """Build tokenizer, model and both data sets under `root`."""
    root = Path(root)
    sft = sft_rows(n_sft)
    preference = preference_rows(n_preference)
    model_dir = root / f"tiny-{arch}"
    tokenizer = build_tokenizer(
        model_dir, _corpus(sft + preference + pretraining_rows(64))
    )
    build_model(model_dir, tokenizer, arch=arch)
    return ToySetup(
        model_dir=model_dir,
        sft_path=write_jsonl(root / "data" / "sft.jsonl", sft),
        preference_path=write_jsonl(root / "data" / "preference.jsonl", preference),
    )


def axolotl_config(setup: ToySetup, output_dir: Path, **overrides) -> dict:
    """A CPU-friendly Axolotl LoRA SFT config with the PAFT plugin on the toy world."""
    output_dir = Path(output_dir)
    config = {
        "base_model": str(setup.model_dir),
        "plugins": ["axolotl_paft.PAFTPlugin"],
        "datasets": [
            {
                "path": str(setup.sft_path),
                "type": "chat_template",
                "field_messages": "messages",
            }
        ],
        "chat_template": "tokenizer_default",
        "dataset_prepared_path": str(output_dir / "prepared"),
        "dataset_num_proc": 1,
        "val_set_size": 0,
        "sequence_len": 512,
        "adapter": "lora",
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "lora_target_linear": True,
        "lora_mlp_kernel": False,
        "lora_qkv_kernel": False,
        "lora_o_kernel": False,
        "micro_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "max_steps": 30,
        "learning_rate": 3e-3,
        "optimizer": "adamw_torch",
        "lr_scheduler": "constant",
        "bf16": False,
        "fp16": False,
        "tf32": False,
        "seed": 0,
        "logging_steps": 5,
        "save_strategy": "no",
        "output_dir": str(output_dir),
    }
    config.update(overrides)
    return config


def parallel_config(setup: ToySetup, output_dir: Path, **overrides) -> dict:
    """`axolotl_config` in parallel mode: SFT and DPO LoRAs in one run."""
    parallel = {
        "paft_parallel": True,
        "paft_preference_datasets": [
            {"path": str(setup.preference_path), "type": setup.preference_type}
        ],
    }
    config = axolotl_config(setup, output_dir, **{**parallel, **overrides})
    # the toy recipe trains both adapters at one rate (the measurements in
    # docs/evidence.md were made so); real recipes set a far lower one
    config.setdefault("paft_preference_learning_rate", config["learning_rate"])
    return config


def run_axolotl_train(config: dict):
    """Run `axolotl train` on a config dict in this process; returns the config.

    Same path as the CLI's `--launcher python` (config validation, plugin hooks,
    `post_train_unload`), with Axolotl's plugin registry emptied and the random
    streams seeded from `seed` first, so that several runs can share one process
    and each starts as a fresh process would (Axolotl < 0.21 draws the LoRA init
    from whatever state the process is in).
    """
    import collections

    from axolotl.cli.args import TrainerCliArgs
    from axolotl.cli.config import load_cfg
    from axolotl.cli.train import do_train
    from axolotl.integrations.base import PluginManager
    from axolotl.utils.dict import DictDefault
    from transformers import set_seed

    PluginManager.get_instance().plugins = collections.OrderedDict()
    set_seed(config.get("seed", DEFAULT_SEED))
    cfg = load_cfg(DictDefault(config))
    do_train(cfg, TrainerCliArgs())
    return cfg
