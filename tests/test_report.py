"""The report: its numbers equal an independent recomputation through PEFT."""

from __future__ import annotations

import json

import pytest
import torch
from peft.tuners.lora import LoraLayer

from axolotl_paft.merging.report import build_report, write_report
from axolotl_paft.merging.scoring import load_model

THRESHOLD = 0.01


def peft_deltas(base_dir, adapter_dir) -> dict[str, torch.Tensor]:
    """Deltas as PEFT itself computes them (get_delta_weight), by module name."""
    model = load_model(base_dir, adapter_dir)
    return {
        name.removeprefix("base_model.model."): module.get_delta_weight("default")
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer)
    }


def test_report_matches_peft_recomputation(llama_world, adapters, tmp_path):
    report = build_report(adapters, THRESHOLD)
    paths = write_report(report, tmp_path)
    assert [p.name for p in paths] == [
        "paft_report.json",
        "paft_report.md",
        "paft_report.png",
    ]
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads(paths[0].read_text())
    for role in ("sft", "preference"):
        deltas = peft_deltas(llama_world.model_dir, adapters[role])
        modules = {m["name"]: m for m in saved["adapters"][role]["modules"]}
        assert modules.keys() == deltas.keys()
        near, total = 0, 0
        for name, delta in deltas.items():
            count = int((delta.abs() <= THRESHOLD * delta.abs().max()).sum())
            assert modules[name]["near_zero"] == count
            assert modules[name]["max_abs"] == pytest.approx(float(delta.abs().max()))
            near, total = near + count, total + delta.numel()
        overall = saved["adapters"][role]["overall"]
        assert overall["sparsity"] == pytest.approx(near / total)


def test_interference_matches_recomputation(llama_world, adapters):
    report = build_report(adapters, THRESHOLD)
    sft = peft_deltas(llama_world.model_dir, adapters["sft"])
    pref = peft_deltas(llama_world.model_dir, adapters["preference"])
    union = both = conflicts = 0
    for name in sft:
        ks = sft[name].abs() > THRESHOLD * sft[name].abs().max()
        kp = pref[name].abs() > THRESHOLD * pref[name].abs().max()
        union += int((ks | kp).sum())
        both += int((ks & kp).sum())
        conflicts += int((ks & kp & (sft[name].sign() != pref[name].sign())).sum())
    overall = report["interference"]["overall"]
    assert overall["overlap"] == pytest.approx(both / union)
    assert overall["sign_conflicts"] == pytest.approx(conflicts / both)
    # independent random deltas disagree in sign about half the time
    assert 0.35 < overall["sign_conflicts"] < 0.65


def test_markdown_has_every_table(adapters, tmp_path):
    markdown = (
        write_report(build_report(adapters, THRESHOLD), tmp_path)[1]
    ).read_text()
    for heading in ("## sft delta", "## preference delta", "Per layer", "Interference"):
        assert heading in markdown
