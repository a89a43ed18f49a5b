"""The user path on the real model (SmolLM2-135M-Instruct, named by its hub id):
parallel mode with LoRA and with QLoRA 4-bit, the model's own chat template with
its default system prompt, an eval split on both sides, tied embeddings through
PEFT save, `mergekit-yaml` on an emitted config and reload, `axolotl merge-lora`
and `axolotl inference` with `--lora-model-dir`; and the run's chat template
reaching the merged model (toy: a run whose template differs from its base's).

Sized to stay cheap: a handful of rows, sequence_len 256, micro-batch 1, two
steps; one trained run shared by the assertions that read it."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import last_trainer

from axolotl_paft.lab.toy import (
    ToySetup,
    parallel_config,
    run_axolotl_train,
    write_jsonl,
)

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
NUMBERS = ["two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def chat_rows(n: int) -> list[dict]:
    """Chat rows without a system turn: the template adds its default one."""
    return [
        {
            "messages": [
                {"role": "user", "content": f"What comes after {NUMBERS[i]}?"},
                {"role": "assistant", "content": f"After {NUMBERS[i]} comes "
                 f"{NUMBERS[i + 1]}."},
            ]
        }
        for i in range(n)
    ]  # fmt: skip


def preference_rows(n: int) -> list[dict]:
    """Rows of Axolotl's `chat_template.default` DPO loader."""
    return [
        {
            "messages": [{"role": "user", "content": f"Is {NUMBERS[i]} a number?"}],
            "chosen": {"role": "assistant", "content": f"Yes, {NUMBERS[i]} is."},
            "rejected": {"role": "assistant", "content": "No idea, go away."},
        }
        for i in range(n)
    ]


def real_setup(hub_id: str, root: Path) -> ToySetup:
    return ToySetup(
        model_dir=hub_id,
        sft_path=write_jsonl(root / "data" / "sft.jsonl", chat_rows(8)),
        preference_path=write_jsonl(root / "data" / "pref.jsonl", preference_rows(8)),
    )


def real_config(setup: ToySetup, out: Path, **overrides) -> dict:
    """A parallel-mode config on the real model with its own chat template."""
    return parallel_config(
        setup,
        out,
        **{
            "paft_preference_datasets": [
                {"path": str(setup.preference_path), "type": "chat_template.default"}
            ],
            "sequence_len": 256,
            "micro_batch_size": 1,
            "max_steps": 2,
            "learning_rate": 1e-3,  # two steps must move the deltas visibly
            "paft_preference_learning_rate": 1e-4,
            "val_set_size": 0.25,
            "paft_preference_val_set_size": 0.25,
            "eval_steps": 2,
            "logging_steps": 1,
            "paft_merge_methods": ["task_arithmetic"],
            "paft_merge_dtype": "float32",  # compared with PEFT's merge in fp32
            **overrides,
        },
    )


def run(command: str, **kwargs) -> str:
    """A user's shell command (the venv's executables first), its output."""
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "PYTHONPATH": os.pathsep.join(sys.path),
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        shlex.split(command),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        **kwargs,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def logits(model, tokenizer) -> torch.Tensor:
    batch = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What comes after five?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        return model(**batch).logits


def is_tied(model) -> bool:
    return (
        model.get_output_embeddings().weight.data_ptr()
        == model.get_input_embeddings().weight.data_ptr()
    )


@pytest.fixture(scope="module")
def lora_run(smollm2, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("smollm2")
    out = root / "out"
    config = real_config(real_setup(smollm2, root), out)
    path = root / "paft.yml"
    path.write_text(yaml.safe_dump(config))
    run_axolotl_train(config)
    trainer = last_trainer()
    return {
        "out": out,
        "path": path,
        "history": trainer.state.log_history,
        "sft_row": trainer.processing_class.decode(
            trainer.train_dataset[0]["input_ids"]
        ),
        "pref_row": trainer.processing_class.decode(
            trainer.preference.dataset[0]["prompt_ids"]
        ),
        "eval_rows": len(trainer.eval_dataset),
        "held_out_pairs": len(trainer.preference_held_out),
    }


def test_both_sides_use_the_models_template_and_its_default_system_prompt(lora_run):
    for row in (lora_run["sft_row"], lora_run["pref_row"]):
        assert row.startswith(f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>"), row


def test_eval_split_is_evaluated_on_both_adapters(lora_run):
    last = [e for e in lora_run["history"] if "eval_loss" in e][-1]
    print(f"eval at step 2: {last}")
    assert lora_run["eval_rows"] == 2 and lora_run["held_out_pairs"] == 2
    assert last["step"] == 2 and torch.isfinite(torch.tensor(last["eval_loss"]))
    assert 0 <= last["eval_dpo/rewards/accuracies"] <= 1


def test_peft_save_keeps_the_tied_head_out_of_the_adapters(smollm2, lora_run):
    """SmolLM2 ties lm_head to embed_tokens: no adapter trains or saves a copy of
    either, and base + adapter reloads with the head still tied."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    for name in ("sft", "dpo"):
        keys = load_file(lora_run["out"] / name / "adapter_model.safetensors")
        assert not [k for k in keys if "lm_head" in k or "embed_tokens" in k]
    base = AutoModelForCausalLM.from_pretrained(smollm2)
    model = PeftModel.from_pretrained(base, lora_run["out"] / "sft")
    assert is_tied(model.base_model.model)


@pytest.fixture(scope="module")
def mergekit_merged(smollm2, lora_run) -> dict:
    """The user's `mergekit-yaml` line, as the run printed it in the config."""
    config = lora_run["out"] / "mergekit" / "task_arithmetic.yml"
    command = config.read_text().splitlines()[1].removeprefix("#").strip()
    assert command.startswith("mergekit-yaml")
    run(command)
    return {"dir": Path(shlex.split(command)[2]), "config": config}


def test_mergekit_merge_keeps_the_head_tied_and_equals_peft_merge(
    smollm2, lora_run, mergekit_merged
):
    """The merged model reloads tied, and its logits are base + both deltas as
    PEFT merges them (task arithmetic at weights 1, lambda 1), in fp32."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = AutoModelForCausalLM.from_pretrained(mergekit_merged["dir"])
    assert merged.config.tie_word_embeddings and is_tied(merged)
    tokenizer = AutoTokenizer.from_pretrained(mergekit_merged["dir"])
    expected = AutoModelForCausalLM.from_pretrained(smollm2)
    base = logits(expected, tokenizer)
    for name in ("sft", "dpo"):
        peft = PeftModel.from_pretrained(expected, lora_run["out"] / name)
        expected = peft.merge_and_unload()
    assert is_tied(expected)
    ours, theirs = logits(merged, tokenizer), logits(expected, tokenizer)
    gap, moved = (ours - theirs).abs().max(), (theirs - base).abs().max()
    print(f"mergekit vs PEFT merge: max logit gap {gap:.3g} (deltas moved {moved:.3g})")
    assert moved > 1e-2
    assert gap < 1e-3


def test_merged_model_carries_the_runs_tokenizer_and_generates(
    lora_run, mergekit_merged
):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_tokenizer = AutoTokenizer.from_pretrained(lora_run["out"])
    tokenizer = AutoTokenizer.from_pretrained(mergekit_merged["dir"])
    assert tokenizer.chat_template == run_tokenizer.chat_template
    assert tokenizer.eos_token == run_tokenizer.eos_token == "<|im_end|>"
    model = AutoModelForCausalLM.from_pretrained(mergekit_merged["dir"])
    batch = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What comes after five?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    new = model.generate(**batch, max_new_tokens=12, do_sample=False)
    text = tokenizer.decode(new[0, batch["input_ids"].shape[1] :])
    print(f"merged model answers: {text!r}")
    assert text.strip()


def test_axolotl_merge_lora_and_inference_with_lora_model_dir(smollm2, lora_run):
    """`axolotl merge-lora` (in process, as its CLI calls it) and `axolotl
    inference` (the command, a prompt on stdin) on the run's YAML with
    --lora-model-dir naming the SFT adapter."""
    from axolotl.cli.merge_lora import do_cli as merge_lora
    from peft import PeftModel
    from test_user_paths import fresh_command
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, path = lora_run["out"], lora_run["path"]
    fresh_command()
    merge_lora(config=str(path), lora_model_dir=str(out / "sft"))
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    assert is_tied(merged)
    tokenizer = AutoTokenizer.from_pretrained(out / "merged")
    base = AutoModelForCausalLM.from_pretrained(smollm2)
    expected = PeftModel.from_pretrained(base, out / "sft").merge_and_unload()
    gap = (logits(merged, tokenizer) - logits(expected, tokenizer)).abs().max()
    assert gap < 1e-4

    printed = run(
        f"axolotl inference {path} --lora-model-dir {out / 'sft'}",
        input="What comes after five?\n",
    )
    answer = printed.split("<|im_start|>assistant\n")[-1]
    print(f"axolotl inference answers: {answer[:200]!r}")
    assert f"<|im_start|>system\n{DEFAULT_SYSTEM}" in printed
    assert answer.strip()


def test_qlora_parallel_run_trains_both_adapters_on_the_4bit_base(smollm2, tmp_path):
    """QLoRA 4-bit (bitsandbytes' CPU backend): both adapters train, are saved,
    and load on the base and generate."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "qlora"
    config = real_config(
        real_setup(smollm2, tmp_path),
        out,
        adapter="qlora",
        load_in_4bit=True,
        max_steps=1,
        val_set_size=0,
        paft_preference_val_set_size=0,
        eval_steps=None,
        paft_merge_methods=[],
    )
    run_axolotl_train(config)
    history = last_trainer().state.log_history
    (step,) = [e for e in history if "loss" in e]
    print(f"QLoRA step: {step}")
    assert torch.isfinite(torch.tensor([step["loss"], step["dpo/loss"]])).all()
    for name in ("sft", "dpo"):
        weights = load_file(out / name / "adapter_model.safetensors")
        assert max(float(w.abs().max()) for k, w in weights.items() if "lora_B" in k)
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(smollm2), out / "sft"
    )
    new = model.generate(
        **tokenizer("After five comes", return_tensors="pt"), max_new_tokens=4
    )
    assert new.shape[1] > 3


# --- the run's chat template reaches the merged model (toy: fast) ---------------


def test_merged_model_carries_a_chat_template_its_base_lacks(llama_world, tmp_path):
    """A run with `chat_template: mistral_v1` on a ChatML base: every emitted
    config and the search's best.yml name the run's template, and mergekit writes
    it into the merged models' tokenizers (before: the base's ChatML template
    came back)."""
    from transformers import AutoTokenizer

    out = tmp_path / "out"
    run_axolotl_train(
        parallel_config(
            llama_world,
            out,
            chat_template="mistral_v1",
            max_steps=2,
            paft_merge_methods=["ties", "slerp"],
            paft_merge_run="ties",
            paft_report=False,
            val_set_size=0.25,
            paft_merge_search=True,
            paft_merge_search_budget=1,
            paft_merge_search_methods=["ties"],
        )
    )
    run_template = AutoTokenizer.from_pretrained(out).chat_template
    base_template = AutoTokenizer.from_pretrained(llama_world.model_dir).chat_template
    assert "[INST]" in run_template and run_template != base_template
    for method in ("ties", "slerp"):
        config = yaml.safe_load((out / "mergekit" / f"{method}.yml").read_text())
        assert config["chat_template"] == run_template
    best = yaml.safe_load((out / "mergekit" / "best.yml").read_text())
    assert best["chat_template"] == run_template
    for merged in (out / "paft_merged" / "ties", out / "search" / "merged" / "best"):
        assert AutoTokenizer.from_pretrained(merged).chat_template == run_template
