"""A base model named by its hub id, offline from the HF cache, on every path that
takes one: training and what it writes (report, mergekit configs and their printed
commands, the merge search), `axolotl-paft-sweep` (with and without `--search`),
`axolotl-paft-eval`. The toy model sits under a made-up hub id (`llama_hub_id`);
the real model (`smollm2`) goes through one whole run."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml
from conftest import HF_HOME, logged_run
from test_merge import assert_same_weights, run_printed_command

from axolotl_paft.cli import eval as evaluate
from axolotl_paft.cli import sweep
from axolotl_paft.lab.toy import parallel_config, write_jsonl
from axolotl_paft.merging.configs import base_model_reference


def held_out_files(world, root: Path, rows: int = 4) -> dict:
    """The search's held-out keys, the first `rows` rows of the world's data."""
    sft = [json.loads(x) for x in world.sft_path.read_text().splitlines()][:rows]
    pref = [json.loads(x) for x in world.preference_path.read_text().splitlines()]
    return {
        "paft_merge_search_sft_data": str(write_jsonl(root / "sft.jsonl", sft)),
        "paft_merge_search_preference_data": str(
            write_jsonl(root / "pref.jsonl", pref[:rows])
        ),
        "paft_merge_search_rows": rows,
    }


def test_a_hub_id_resolves_to_its_cached_snapshot(llama_world, llama_hub_id):
    """mergekit 0.1.5 lists a bare hub id's files on the hub even when cached, so
    configs name the snapshot; a local folder stays itself, absolute."""
    snapshot = Path(base_model_reference(llama_hub_id))
    assert snapshot.is_relative_to(HF_HOME / "hub")
    assert (snapshot / "config.json").resolve() == (
        llama_world.model_dir / "config.json"
    ).resolve()
    assert base_model_reference(str(llama_world.model_dir)) == str(
        llama_world.model_dir.resolve()
    )
    assert base_model_reference("nobody/not-cached") == "nobody/not-cached"


def test_training_with_a_hub_id_writes_configs_that_run_and_searches(
    llama_world, llama_hub_id, tmp_path
):
    """`base_model: ORG/NAME`: the run's configs, their printed `mergekit-yaml`
    commands and the search's best.yml all run offline (the old code crashed at
    the first search candidate, `$CWD/ORG/NAME`)."""
    out = tmp_path / "out"
    config = parallel_config(
        llama_world,
        out,
        base_model=llama_hub_id,
        max_steps=2,
        paft_merge_methods=["ties", "slerp"],
        paft_merge_search=True,
        paft_merge_search_budget=1,
        paft_merge_search_methods=["ties"],
        **held_out_files(llama_world, tmp_path),
    )
    messages = logged_run(config)
    assert (out / "paft_report.json").is_file()
    snapshot = base_model_reference(llama_hub_id)
    ties = yaml.safe_load((out / "mergekit" / "ties.yml").read_text())
    assert ties["base_model"] == snapshot
    for method in ("ties", "slerp"):
        merged = run_printed_command(
            out / "mergekit" / f"{method}.yml", tmp_path / method
        )
        assert (merged / "model.safetensors").is_file()
    (summary,) = [m for m in messages if "results of this run" in m]
    assert f"--base {snapshot}" in summary
    board = json.loads((out / "search" / "leaderboard.json").read_text())
    assert len(board["leaderboard"]) == 1
    rebuilt = run_printed_command(out / "mergekit" / "best.yml", tmp_path / "best")
    assert_same_weights(out / "search" / "merged" / "best", rebuilt)


def sweep_args(base: str, adapters: dict, world, out: Path) -> list[str]:
    return [
        "--base", base,
        "--sft", str(adapters["sft"]),
        "--preference", str(adapters["preference"]),
        "--methods", "ties",
        "--sft-data", str(world.sft_path),
        "--preference-data", str(world.preference_path),
        "--limit", "2",
        "--out", str(out),
    ]  # fmt: skip


def test_sweep_search_takes_a_hub_id(llama_world, llama_hub_id, adapters, tmp_path):
    out = tmp_path / "search"
    args = sweep_args(llama_hub_id, adapters, llama_world, out)
    sweep.main([*args, "--search", "--budget", "1"])
    board = json.loads((out / "leaderboard.json").read_text())
    assert board["leaderboard"][0]["method"] == "ties"
    rebuilt = run_printed_command(out / "mergekit" / "best.yml", tmp_path / "best")
    assert_same_weights(out / "merged" / "best", rebuilt)


def test_sweep_and_eval_by_hub_id_score_what_the_folder_scores(
    llama_world, llama_hub_id, adapters, tmp_path
):
    """The same numbers by hub id as by folder: the same model, not another."""
    results = {}
    for name, base in (("hub", llama_hub_id), ("folder", str(llama_world.model_dir))):
        out = tmp_path / name
        sweep.main([*sweep_args(base, adapters, llama_world, out), "--densities", "1"])
        results[name] = json.loads((out / "eval.json").read_text())["results"]
    assert list(results["hub"]) == ["base", "sft", "preference", "ties-d1"]
    assert results["hub"] == results["folder"]
    out = tmp_path / "eval"
    evaluate.main(
        [
            "--base", llama_hub_id,
            "--candidate", f"sft={adapters['sft']}",
            "--sft-data", str(llama_world.sft_path),
            "--preference-data", str(llama_world.preference_path),
            "--limit", "2", "--out", str(out),
        ]
    )  # fmt: skip
    evaluated = json.loads((out / "eval.json").read_text())["results"]
    assert evaluated["sft"] == results["folder"]["sft"]
    commands = (out / "lm_eval_commands.sh").read_text()
    assert f"pretrained={llama_hub_id},peft={adapters['sft']}" in commands


def test_a_failing_search_keeps_the_run_and_names_the_rerun(
    llama_world, llama_hub_id, tmp_path
):
    """A held-out SFT file rewritten during training into ShareGPT's shape
    (`conversations`, not `messages`; config validation refuses it before
    training: test_bad_inputs) fails only in the search, after training:
    adapters, report and configs are written, the error says what failed, and
    the printed command reruns only the search once the file is fixed."""
    import collections

    from axolotl.cli.args import TrainerCliArgs
    from axolotl.cli.config import load_cfg
    from axolotl.cli.train import do_train
    from axolotl.integrations.base import PluginManager
    from axolotl.utils.dict import DictDefault

    from axolotl_paft.merging.outputs import MergeSearchFailed

    out = tmp_path / "out"
    keys = held_out_files(llama_world, tmp_path)
    good = Path(keys["paft_merge_search_sft_data"]).read_text()
    shared = [
        {"conversations": json.loads(line)["messages"]} for line in good.splitlines()
    ]
    config = parallel_config(
        llama_world,
        out,
        base_model=llama_hub_id,
        max_steps=2,
        paft_merge_methods=["ties"],
        paft_merge_search=True,
        paft_merge_search_budget=1,
        paft_merge_search_methods=["ties"],
        **keys,
    )
    PluginManager.get_instance().plugins = collections.OrderedDict()
    cfg = load_cfg(DictDefault(config))  # as run_axolotl_train, the file edited
    write_jsonl(Path(keys["paft_merge_search_sft_data"]), shared)  # between
    with pytest.raises(MergeSearchFailed) as failed:
        do_train(cfg, TrainerCliArgs())
    message = str(failed.value)
    assert "KeyError: 'messages'" in message
    for written in ("paft_report.json", "mergekit/ties.yml", "sft", "dpo"):
        assert (out / written).exists(), written
    assert (out / "tokenizer_config.json").is_file()  # Axolotl's final save ran
    assert not (out / "mergekit" / "best.yml").exists()
    command = message.split("Rerun only the search: ")[1]
    words = shlex.split(command)
    assert words[:2] == ["axolotl-paft-sweep", "--search"]
    Path(keys["paft_merge_search_sft_data"]).write_text(good)
    sweep.main(words[1:])
    board = json.loads((out / "search" / "leaderboard.json").read_text())
    assert board["held_out"] == {"sft_rows": 4, "preference_pairs": 4}
    assert board["leaderboard"][0]["method"] == "ties"
