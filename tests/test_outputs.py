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
