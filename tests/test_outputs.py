"""What a run leaves after training (`merging.outputs`): every step guarded,
nothing of another run's taken for this run's."""

from __future__ import annotations

import shlex
import shutil

import pytest

from axolotl_paft.config.args import PAFTArgs
from axolotl_paft.merging.outputs import RunOutputsFailed, write_run_outputs


def test_a_failing_report_loses_nothing_and_names_its_command(
    llama_world, adapters, tmp_path
):
    """The report was not behind the search's guard: an adapter it cannot read
    raised out of the run's outputs with a raw error, after the configs and
    before the `paft_merge_run` merge. Now every other step is written, and the
    error names the step and the command that writes the report alone."""
    from axolotl_paft.merging import report

    broken = tmp_path / "preference"
    shutil.copytree(adapters["preference"], broken)
    weights = broken / "adapter_model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:100])  # cut short, as by a full disk
    out = tmp_path / "out"
    args = PAFTArgs(
        paft_merge_methods=["task_arithmetic"], paft_merge_run="task_arithmetic"
    )
    roles = {"sft": adapters["sft"], "preference": broken}
    with pytest.raises(RunOutputsFailed) as failed:
        write_run_outputs(out, str(llama_world.model_dir), roles, args)
    message = str(failed.value)
    assert message.startswith("paft_report failed (SafetensorError")
    assert "paft_merge_run failed (SafetensorError" in message  # each step named
    assert (out / "mergekit" / "task_arithmetic.yml").is_file()
    assert not (out / "paft_report.json").exists()
    assert "Rerun only the merge: mergekit-yaml " in message
    command = message.split("Rerun only the report: ")[1].split(" Rerun only")[0]
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "axolotl_paft.merging.report"]
    weights.write_bytes(good)
    report.main(words[3:])
    assert (out / "paft_report.json").is_file()


def test_a_second_run_holding_an_output_dir_is_refused_naming_the_first(tmp_path):
    """Two runs into one output_dir at the same time overwrite each other's
    adapters and results: the second is refused, naming output_dir and the run
    that holds it; a lock left by a process that is gone is taken over."""
    import subprocess
    import sys

    from axolotl_paft.merging.runs import (
        LOCK,
        OutputDirInUse,
        hold_output_dir,
        release_output_dir,
    )

    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys, time; from axolotl_paft.merging.runs import "
            "hold_output_dir; print(hold_output_dir(sys.argv[1]), flush=True); "
            "time.sleep(120)"
        ), str(out)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        other = holder.stdout.readline().strip()
        with pytest.raises(OutputDirInUse) as refused:
            hold_output_dir(out)
        message = str(refused.value)
        assert str(out) in message and other in message
        assert f"pid {holder.pid}" in message
    finally:
        holder.kill()
        holder.wait()
    mine = hold_output_dir(out)  # the holder is gone: its lock is taken over
    assert mine != other and hold_output_dir(out) == mine  # held: the same id
    release_output_dir(out)
    assert not (out / LOCK).exists()


def test_a_reused_output_dir_exports_only_this_runs_merges(
    llama_world, adapters, tmp_path
):
    """A second run into a reused output_dir with `paft_merge_export: adapter`
    and the search off exported the previous run's best.yml merge (found by
    existence), and took an earlier run's merged/<method> folder as this run's
    merge. Now only this run's search result is exported; a merged folder is
    reused only where its record says this config and these adapters built it
    (else the adapter comes from a fresh merge and the earlier folder is left
    as it was); every paft_export.json and leaderboard.json names the run and
    the adapters' digests; an export replacing an earlier one is moved into
    place complete."""
    import json

    from conftest import make_adapter

    from axolotl_paft.merging.configs import run_merge_config
    from axolotl_paft.merging.export import delta_gap
    from axolotl_paft.merging.runs import adapter_digest

    base = str(llama_world.model_dir)
    out = tmp_path / "out"
    first = PAFTArgs(
        paft_merge_methods=["ties"], paft_merge_run="ties",
        paft_merge_export="adapter", paft_merge_search=True,
        paft_merge_search_budget=1, paft_merge_search_methods=["task_arithmetic"],
        paft_merge_search_sft_data=str(llama_world.sft_path),
        paft_merge_search_preference_data=str(llama_world.preference_path),
        paft_merge_search_rows=4,
    )  # fmt: skip
    from axolotl_paft.merging.outputs import search_rows

    class Trainer:  # what search_rows reads: the run's tokenizer
        from transformers import AutoTokenizer

        processing_class = AutoTokenizer.from_pretrained(base)

    write_run_outputs(
        out, base, adapters, first, lambda: search_rows(base, first, Trainer)
    )
    best = json.loads((out / "adapter/best/paft_export.json").read_text())
    board = json.loads((out / "search/leaderboard.json").read_text())
    digests = {r: adapter_digest(f) for r, f in adapters.items()}
    assert {r: a["sha256"] for r, a in best["run"]["adapters"].items()} == digests
    assert board["run"]["adapters"] == best["run"]["adapters"]
    stale = (out / "paft_merged/ties/model.safetensors").read_bytes()

    other = make_adapter(llama_world.model_dir, tmp_path / "other", 3)
    # an adapter is exported only for the search or the method named: the
    # second run names ties, whose merge it runs into paft_merged/ties itself
    second = PAFTArgs(
        paft_merge_methods=["ties"], paft_merge_run="ties",
        paft_merge_export="adapter",
    )  # fmt: skip
    roles = {"sft": adapters["sft"], "preference": other}
    run = write_run_outputs(out, base, roles, second)
    exported = [p for p in run.written if p.parent.name == "adapter"]
    assert exported == [out / "adapter" / "ties"]  # not the first run's best
    assert json.loads((out / "adapter/best/paft_export.json").read_text()) == best
    ties = json.loads((out / "adapter/ties/paft_export.json").read_text())
    assert ties["run"]["adapters"]["preference"]["sha256"] == adapter_digest(other)
    # the earlier run's merge is replaced by this run's (paft_merge_run), which
    # the adapter is extracted from
    assert (out / "paft_merged/ties/model.safetensors").read_bytes() != stale
    assert not list((out / "adapter").glob(".*")) and not list(
        (out / "paft_merged").glob(".*")
    )  # nothing left aside
    fresh = run_merge_config(
        out / "mergekit/ties.yml", tmp_path / "fresh", tmp_path / "cache"
    )
    to_fresh = delta_gap(base, fresh, out / "adapter/ties")["relative_frobenius"]
    assert to_fresh == pytest.approx(ties["gap"]["relative_frobenius"])


def test_nothing_the_search_loaded_is_alive_when_the_export_starts(
    llama_world, adapters, tmp_path
):
    """`paft_merge_search` then `paft_merge_export: adapter`: once the search has
    ended, no model it loaded (the base, the candidates, the references) is
    still in memory, referenced or waiting for the cycle collector, when the
    run's results are logged and the export starts (it loads models of its
    own); the SearchResult it hands on holds no model-sized tensor."""
    import gc
    import logging
    import types

    import torch
    from transformers import PreTrainedModel

    from axolotl_paft.merging.outputs import search_rows

    base = str(llama_world.model_dir)
    args = PAFTArgs(
        paft_merge_methods=["task_arithmetic"], paft_merge_export="adapter",
        paft_merge_search=True, paft_merge_search_budget=1,
        paft_merge_search_methods=["task_arithmetic"],
        paft_merge_search_sft_data=str(llama_world.sft_path),
        paft_merge_search_preference_data=str(llama_world.preference_path),
        paft_merge_search_rows=4,
    )  # fmt: skip

    class Trainer:  # what search_rows reads: the run's tokenizer
        from transformers import AutoTokenizer

        processing_class = AutoTokenizer.from_pretrained(base)

    alive = []  # live models (gc.get_objects holds uncollected cycles too)

    def count(record):
        if record.getMessage().startswith("paft: results of this run"):
            alive.append(sum(isinstance(o, PreTrainedModel) for o in gc.get_objects()))

    handler = logging.Handler()
    handler.emit = count
    logger = logging.getLogger("axolotl.axolotl_paft.merging.outputs")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    gc.collect()
    before = sum(isinstance(o, PreTrainedModel) for o in gc.get_objects())
    try:
        run = write_run_outputs(
            tmp_path / "out", base, adapters, args,
            lambda: search_rows(base, args, Trainer),
        )  # fmt: skip
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert alive == [before]
    assert (tmp_path / "out/adapter/best/paft_export.json").is_file()
    largest = 0
    seen, stack = set(), [run.search]
    while stack:  # what the SearchResult references, transitively
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (type, types.ModuleType)):
            continue
        seen.add(id(obj))
        assert not isinstance(obj, torch.nn.Module), type(obj)
        if isinstance(obj, torch.Tensor):
            largest = max(largest, obj.numel())
        if isinstance(obj, types.FunctionType):  # its closure, not its globals
            stack.extend(c.cell_contents for c in obj.__closure__ or ())
        else:
            stack.extend(gc.get_referents(obj))
    embedding = 64 * Trainer.processing_class.vocab_size  # the toy's hidden size 64
    assert largest < embedding


def test_a_runs_traps_close_its_summary_and_open_its_report(
    llama_world, adapters, tmp_path
):
    """A setting that makes the run's numbers mean little (an end-of-turn token
    that was not trained, `checks.run_traps`) is repeated where the user looks
    after training: the run's last summary lines and paft_report.md / .json."""
    import json

    from conftest import log_messages

    trap = "eot_tokens: unset, so Axolotl trains the tokenizer's eos_token ..."
    with log_messages("axolotl_paft.merging.outputs") as messages:
        write_run_outputs(
            tmp_path, str(llama_world.model_dir), adapters,
            PAFTArgs(paft_merge_methods=["ties"]), traps=(trap,),
        )  # fmt: skip
    (summary,) = [m for m in messages if "results of this run" in m]
    assert summary.endswith(
        f"paft: check this run's setup (also in paft_report.md)\n  {trap}"
    )
    report = (tmp_path / "paft_report.md").read_text()
    assert f"## Check this run's setup\n\n- {trap}" in report
    assert json.loads((tmp_path / "paft_report.json").read_text())["traps"] == [trap]
