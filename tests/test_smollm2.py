"""The real model's builder: the saved folder is the GGUF model, loadable by hub id."""

from __future__ import annotations

import os

import pytest
import torch

from axolotl_paft.lab import smollm2 as smollm2_lab


@pytest.mark.slow
def test_saved_model_equals_the_gguf_model_and_keeps_its_chat_template():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2_lab.build()
    gguf = smollm2_lab.fetch_gguf(folder.parent)
    quantized, gguf_tokenizer = smollm2_lab.load_gguf(gguf)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert smollm2_lab.check_logits(quantized, model, tokenizer) == 0.0
    assert tokenizer.chat_template == gguf_tokenizer.chat_template
    assert "You are a helpful AI assistant named SmolLM" in tokenizer.chat_template
    assert tokenizer.eos_token == "<|im_end|>"
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_hub_id_resolves_offline_from_the_cache_layout(smollm2):
    from huggingface_hub import snapshot_download
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert snapshot_download(smollm2).endswith(smollm2_lab.REVISION)
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2).eval()
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Name the capital of France."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        ids = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(ids[0, prompt["input_ids"].shape[1] :])
    assert "Paris" in answer
