"""The merge search: every candidate built by mergekit, outputs a user can run."""

from __future__ import annotations

import json
import math
import shlex

import pytest
import torch
import yaml
from test_merge import assert_same_weights, run_printed_command

from axolotl_paft.cli.sweep import main
from axolotl_paft.merging.configs import validate_config
from axolotl_paft.merging.leaderboard import progress_text
from axolotl_paft.merging.scoring import balanced_metrics
from axolotl_paft.merging.search import (
    DEFAULT_BUDGET,
    GRID,
    STALL_STEPS,
    _rank,
    explore,
)


def test_search_writes_best_config_leaderboard_and_picture(
    llama_world, adapters, tmp_path
):
    out = tmp_path / "search"
    main(
        [
            "--base", str(llama_world.model_dir),
            "--sft", str(adapters["sft"]),
            "--preference", str(adapters["preference"]),
            "--search", "--budget", "4",
            "--methods", "ties,task_arithmetic",
            "--sft-data", str(llama_world.sft_path),
            "--preference-data", str(llama_world.preference_path),
            "--limit", "4",
            "--out", str(out),
        ]
    )  # fmt: skip
    board = json.loads((out / "leaderboard.json").read_text())
    entries = board["leaderboard"]
    assert len(entries) == 4  # the budget: two methods at 1/1, then neighbours
    assert {e["method"] for e in entries[:4]} <= {"ties", "task_arithmetic"}
    ranks = [_rank(e) for e in entries]  # balanced, then score (score alone
    assert ranks == sorted(ranks, reverse=True)  # where a reference gains nothing)
    assert set(board["references"]) == {"base", "sft", "preference"}
    assert board["objective"] == "balanced"
    assert board["best"] == entries[0]["name"]
    best = yaml.safe_load((out / "mergekit" / "best.yml").read_text())
    validate_config(best)
    assert best["merge_method"] == entries[0]["method"]
    assert (out / "merged" / "best" / "model.safetensors").is_file()
    assert not (out / "candidates" / entries[-1]["name"]).exists()  # not kept
    assert (out / "search.png").stat().st_size > 0
    board_md = (out / "leaderboard.md").read_text()
    assert entries[0]["name"] in board_md
    # the toy's answers are a few tokens: exact match ranks them, said so
    assert board["measures"] == {"skill": "exact_match", "preference": "margin"}
    assert "Skill measure `exact_match`" in board_md
    assert set(board["reference_gains"]) == {"skill", "preference"}
    for entry in entries:  # every kept share comes with its interval
        m = entry["metrics"]
        assert not m["preference_kept_low"] > m["preference_kept_high"]
        assert "skill_kept_low" in m


def test_a_dare_winner_rebuilds_bit_for_bit_from_best_yml(
    llama_world, adapters, tmp_path
):
    """The searched merge's numbers belong to `merged/best`; the command printed
    in `mergekit/best.yml` must rebuild exactly that model, also for DARE's
    random drop (seeded, from the search's filled LoRA cache)."""
    out = tmp_path / "search"
    main(
        [
            "--base", str(llama_world.model_dir),
            "--sft", str(adapters["sft"]),
            "--preference", str(adapters["preference"]),
            "--search", "--budget", "2", "--methods", "dare_ties",
            "--sft-data", str(llama_world.sft_path),
            "--preference-data", str(llama_world.preference_path),
            "--limit", "4", "--out", str(out),
        ]
    )  # fmt: skip
    rebuilt = run_printed_command(out / "mergekit" / "best.yml", tmp_path / "rebuilt")
    assert_same_weights(out / "merged" / "best", rebuilt)


@pytest.mark.slow
@pytest.mark.parametrize("split_keys", ["none", "test_datasets+packing"])
def test_training_run_searches_on_its_own_held_out_splits(
    llama_world, split_keys, tmp_path
):
    """`paft_merge_search` with no held-out files: the search scores exactly the
    run's held-out rows, as the run tokenized them (the SFT ones in the text
    scorer's own tokens). With no split keys, 5% of each side is held out of
    training; Axolotl's `test_datasets` is the SFT split as it is, with
    `sample_packing` too (packing happens in the sampler, the split keeps its
    rows)."""
    from conftest import last_trainer
    from transformers import AutoTokenizer

    from axolotl_paft.lab.toy import (
        parallel_config,
        run_axolotl_train,
        sft_rows,
        write_jsonl,
    )
    from axolotl_paft.merging.scoring import last_labelled_span

    out = tmp_path / "out"
    config = parallel_config(
        llama_world,
        out,
        max_steps=20,
        paft_merge_methods=[],
        paft_merge_search=True,
        paft_merge_search_budget=2,
        paft_merge_search_methods=["task_arithmetic", "ties"],
        # the answer stage on the run's own tokenized rows (prompt_ids, spans)
        paft_merge_search_answer_checks={
            "skill": [{"min_chars": 0}],
            "preference": [{"max_chars": 10**6}],
        },
        paft_merge_search_finalists=1,
        paft_merge_search_answer_tokens=4,
    )
    del config["val_set_size"]  # as in a user's config without one
    held_out_rows, trained = sft_rows(64), 60
    if split_keys != "none":
        held_out_rows, trained = sft_rows(6, seed=7), 64
        held_out = write_jsonl(tmp_path / "sft-test.jsonl", held_out_rows)
        config["test_datasets"] = [
            {**config["datasets"][0], "path": str(held_out), "split": "train"}
        ]
        config["sample_packing"] = True
    run_axolotl_train(config)
    trainer = last_trainer()
    board = json.loads((out / "search" / "leaderboard.json").read_text())
    sft_split, preference_split = trainer.eval_dataset, trainer.preference_held_out
    assert board["held_out"] == {
        "sft_rows": len(sft_split),
        "preference_pairs": len(preference_split),
    }
    assert len(sft_split) == (4 if trained == 60 else 6)  # 5% of 64, up; the file
    assert len(preference_split) == 4
    assert len(trainer.train_dataset) == trained
    said = board["answers"]  # every held-out prompt of both sides answered
    assert set(said["references"]) == {"base", "sft", "preference"}
    finalist = board["leaderboard"][0]["answers"]
    assert finalist["skill_pass_rate"] == finalist["preference_pass_rate"] == 1.0
    assert len(finalist["samples"]["preference"]) == 2
    assert trainer.args.sample_packing == (split_keys != "none")
    assert len(board["leaderboard"]) == 2
    for entry in board["leaderboard"]:
        matched = entry["metrics"]["sft_exact_match"] * len(sft_split)
        assert matched == pytest.approx(round(matched))  # a share of these rows
    # the skill is the same prompt and answer tokens the text scorer builds
    tokenizer = AutoTokenizer.from_pretrained(llama_world.model_dir)
    texts = {}
    for row in held_out_rows:
        *turns, answer = row["messages"]
        prompt = tokenizer.apply_chat_template(
            turns, add_generation_prompt=True, tokenize=False
        )
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(
            answer["content"].strip() + tokenizer.eos_token, add_special_tokens=False
        )["input_ids"]
        texts[tuple(prompt_ids + answer_ids)] = len(prompt_ids)
    for row in sft_split:
        start, end = last_labelled_span(torch.as_tensor(row["labels"]))
        assert texts[tuple(row["input_ids"][:end])] == start


def landscape(table: dict, references: dict):
    """A `measure` for `search.explore` read from a table instead of mergekit and
    the scorer: candidate name -> (skill exact match, preference accuracy),
    `default(candidate)` for the others; the kept shares against `references`
    as `search` computes them."""

    def measure(candidate):
        skill, accuracy = table.get(candidate.name) or table["default"](candidate)
        metrics = {
            "sft_exact_match": skill,
            "preference_accuracy": accuracy,
            "preference_margin": 0.0,
            "score": (skill + accuracy) / 2,
        }
        return metrics | balanced_metrics(metrics, references)

    return measure


REFERENCES = {
    name: {"sft_exact_match": skill, "preference_accuracy": accuracy}
    for name, skill, accuracy in (
        ("base", 0.0, 0.0),
        ("sft", 1.0, 0.0),
        ("preference", 0.0, 1.0),
    )
}


def test_a_candidates_log_line_shows_what_ranks_it_with_its_intervals():
    """The trainer's log shows each candidate's kept shares with their 95%
    intervals (before: the raw metrics dict, cut off by the demo before the
    kept shares); a side whose reference gains nothing (nan) is left out."""
    metrics = {"score": 0.5, "sft_loss": 0.51, "preference_margin": 89.5}
    for key, (low, value, high) in {
        "balanced": (0.79, 0.847, 0.91),
        "skill_kept": (0.977, 0.981, 0.985),
        "preference_kept": (0.79, 0.847, 0.91),
    }.items():
        metrics |= {f"{key}_low": low, key: value, f"{key}_high": high}
    assert progress_text(metrics) == (
        "balanced 0.847 [0.790, 0.910], skill_kept 0.981 [0.977, 0.985], "
        "preference_kept 0.847 [0.790, 0.910]"
    )
    nan = {"score": 0.25, "balanced": math.nan, "skill_kept": math.nan}
    assert progress_text(nan) == "score 0.250"


def test_search_prefers_the_balanced_merge_over_a_lopsided_higher_score():
    """The goal is both sides kept: a merge that keeps all of the skill and
    60% of the preference (score 0.80) must lose to one that keeps 75% of each
    (score 0.75), measured against the SFT-only and preference-only adapters."""
    measure = landscape(
        {
            "ties-s1-p1-d0.5": (1.0, 0.6),
            "task_arithmetic-s1-p1": (0.75, 0.75),
            "default": lambda candidate: (0.5, 0.5),
        },
        REFERENCES,
    )
    board = explore(measure, ("ties", "task_arithmetic"), budget=4)
    assert board[0]["name"] == "task_arithmetic-s1-p1"
    best = board[0]["metrics"]
    assert best["skill_kept"] == best["preference_kept"] == best["balanced"] == 0.75
    assert board[1]["name"] == "ties-s1-p1-d0.5"  # score 0.80, second
    # the old ranking is still there, named
    board = explore(measure, ("ties", "task_arithmetic"), budget=4, objective="score")
    assert board[0]["name"] == "ties-s1-p1-d0.5"


def test_search_bisects_the_preference_weight_to_where_both_sides_cross():
    """A trade-off between the grid's values: skill kept falls as the preference
    weight rises, preference kept rises; they cross at 1.2 (0.8 each). The grid
    has 1.0 (100% / 60%) and 1.5 (50% / 100%) only; the balance phase bisects
    the preference weight between them."""

    def trade_off(candidate):
        w = candidate.preference_weight
        penalty = abs(candidate.sft_weight - 1)
        return (max(0.0, min(1.0, 2 - w) - penalty), max(0.0, min(1.0, w - 0.4)))

    board = explore(
        landscape({"default": trade_off}, REFERENCES), ("task_arithmetic",), budget=10
    )
    best = board[0]
    assert 1.0 < best["preference_weight"] < 1.5
    assert best["metrics"]["balanced"] >= 0.78
    assert len(board) == 10


def test_search_gives_up_a_balance_line_where_the_lagging_side_does_not_move():
    """Measured on an L1-sparse SFT delta (proximal 0.3): every default merge keeps
    none of the skill, breadcrumbs-TIES and DELLA keep none at any preference
    weight, DARE-TIES keeps it below 0.5. The balance phase went to the first
    two methods in order and spent 12 candidates halving their weights; the
    search must give a line up when its lagging side (the skill) does not move,
    and find DARE-TIES."""

    def sparse_sft(candidate):
        w = candidate.preference_weight
        if candidate.method == "dare_ties" and w <= 0.5:
            return 1.0, min(1.0, 2 * w)
        return 0.0, min(1.0, w)

    methods = ("breadcrumbs_ties", "della", "dare_ties", "ties")
    board = explore(
        landscape({"default": sparse_sft}, REFERENCES), methods, DEFAULT_BUDGET
    )
    assert board[0]["name"] == "dare_ties-s1-p0.5-d0.5"
    assert board[0]["metrics"]["balanced"] == 1.0
    given_up = [e for e in board if e["method"] in methods[:2]]
    assert len(given_up) == 2 + 2 * STALL_STEPS  # their defaults, two steps each


def test_search_keeps_a_balance_line_whose_first_steps_overshoot():
    """Measured at lambda 0 (seed 2): breadcrumbs-TIES' default keeps 96% / 94%,
    preference weights 2 and 1.5 drop the skill to 0, the crossing is near 1.03.
    The lagging side (preference) moved, so the line is bisected on, not given
    up after two steps for a worse method."""

    def narrow(candidate):
        w = candidate.preference_weight
        if candidate.method == "ties":
            return 1.0, 0.3
        return (0.96, 0.94) if w <= 1.0 else (0.96, 0.96) if w < 1.05 else (0.0, 1.0)

    board = explore(
        landscape({"default": narrow}, REFERENCES), ("breadcrumbs_ties", "ties"), 12
    )
    assert board[0]["method"] == "breadcrumbs_ties"
    assert 1.0 < board[0]["preference_weight"] < 1.05
    assert board[0]["metrics"]["balanced"] == 0.96


def test_search_stops_a_balance_line_at_a_merge_that_keeps_both_sides_whole():
    """Measured in the demo: the skill is whole up to preference weight 1.375
    and gone from 1.406 on. Both sides whole (balanced 1) cannot be beaten, so
    the line stops at the first such weight, 1.25, instead of bisecting on to
    the cliff's edge; the budget left goes to the other method."""

    def plateau(candidate):
        w = candidate.preference_weight
        if candidate.method == "ties":
            return 1.0, 0.2
        return (1.0 if w <= 1.39 else 0.0), min(1.0, w / 1.2)

    board = explore(
        landscape({"default": plateau}, REFERENCES),
        ("breadcrumbs_ties", "ties"),
        budget=12,
    )
    line = [e["preference_weight"] for e in board if e["method"] == "breadcrumbs_ties"]
    assert board[0]["name"] == "breadcrumbs_ties-s1-p1.25-d0.5"
    assert board[0]["metrics"]["balanced"] == 1.0
    assert not any(1.25 < w < 1.5 for w in line)  # no step towards the edge


def test_search_jumps_further_while_the_lagging_side_does_not_move():
    """Measured at rate ratio 1 on an L1-sparse SFT delta: every method keeps
    none of the skill at preference weights 1, 0.5 and 0.25; DARE-TIES keeps it
    below 0.2. Two halvings per line (0.5, 0.25) never got there; the second
    step goes to 0.125 instead, where DARE-TIES keeps both sides."""

    def deep(candidate):
        w = candidate.preference_weight
        if candidate.method == "dare_ties" and w <= 0.2:
            return 1.0, min(1.0, 10 * w)
        return 0.0, 1.0

    methods = ("breadcrumbs_ties", "della", "dare_ties", "ties")
    board = explore(landscape({"default": deep}, REFERENCES), methods, DEFAULT_BUDGET)
    assert board[0]["name"] == "dare_ties-s1-p0.125-d0.5"
    assert board[0]["metrics"]["balanced"] == 1.0


def test_a_side_whose_reference_gains_nothing_neither_ranks_nor_spends_the_budget():
    """Greedy reproduction of a long answer is 0 for the base, the
    SFT-only adapter and every merge, so skill kept is 0/0. `min(1, nan, p)`
    dropped the nan without a word, and the balance phase counted `nan != nan`
    as movement and halved the preference weight of the first two methods
    (0.25, 0.125, ...). Now the skill side does not rank by rule (balanced is
    the preference kept) and no balance line is walked: there is no crossing."""
    references = REFERENCES | {"sft": REFERENCES["base"]}
    measure = landscape(
        {"default": lambda c: (0.0, min(1.0, c.preference_weight / 2))}, references
    )
    board = explore(measure, ("ties", "task_arithmetic", "dare_ties"), DEFAULT_BUDGET)
    best = board[0]["metrics"]
    assert math.isnan(best["skill_kept"])
    assert best["balanced"] == best["preference_kept"] == 0.75  # weight 1.5
    assert {e["preference_weight"] for e in board} <= set(GRID["preference_weight"])


def test_the_coordinate_search_tries_layer_profiles_and_keeps_one_that_wins():
    """Where only per-layer weights keep both sides (the `preference_deep`
    profile of task arithmetic, say), the search reaches it from the flat
    default; without profiles it cannot, and it never names a profile."""
    from axolotl_paft.merging.candidates import PROFILES

    def layered(candidate):
        if candidate.profile == "preference_deep":
            return 1.0, 1.0
        return 1.0, 0.5

    measure = landscape({"default": layered}, REFERENCES)
    board = explore(measure, ("task_arithmetic",), 12, profiles=tuple(PROFILES))
    assert board[0]["name"] == "task_arithmetic-s1-p1-preference_deep"
    assert board[0]["metrics"]["balanced"] == 1.0
    flat = explore(measure, ("task_arithmetic",), 12)
    assert {e["profile"] for e in flat} == {"flat"}
    assert flat[0]["metrics"]["balanced"] == 0.5
    with pytest.raises(ValueError, match="slerp has no per-model weight"):
        from axolotl_paft.merging.candidates import Candidate, candidate_config

        candidate_config("/b", "/s", "/p", Candidate("slerp", profile="lines"))


def test_a_broken_candidate_never_wins():
    """A merge whose skill measure is nan (a broken merge: inf weights, a NaN
    loss): `min(1, nan, p)` made its balanced objective the preference kept (or
    1) and it won; nan also compared neither above nor below anything, so the
    order depended on which candidate came first. It ranks last, under every
    objective."""
    measure = landscape(
        {
            "ties-s1-p1-d0.5": (math.nan, 1.0),
            "task_arithmetic-s1-p1": (0.75, 0.75),
            "default": lambda candidate: (0.5, 0.5),
        },
        REFERENCES,
    )
    for objective in ("balanced", "score"):
        for methods in (("ties", "task_arithmetic"), ("task_arithmetic", "ties")):
            board = explore(measure, methods, budget=4, objective=objective)
            assert board[0]["name"] == "task_arithmetic-s1-p1", (objective, methods)
            assert board[-1]["name"] == "ties-s1-p1-d0.5", (objective, methods)


def _sweep_search(llama_world, adapters, out, *extra):
    main(
        [
            "--base", str(llama_world.model_dir),
            "--sft", str(adapters["sft"]),
            "--preference", str(adapters["preference"]),
            "--search", "--methods", "task_arithmetic",
            "--sft-data", str(llama_world.sft_path),
            "--preference-data", str(llama_world.preference_path),
            "--out", str(out), *extra,
        ]
    )  # fmt: skip


def test_a_search_keeps_what_it_computed_and_a_rerun_skips_it(
    llama_world, adapters, tmp_path, caplog
):
    """Each candidate's config and metrics go to candidates.jsonl as it is scored,
    with the fingerprint of what it was scored on; a rerun into the same folder
    (after a failure, or a kill that cut the last line) scores only what is
    new; on other held-out rows nothing is reused and the earlier file is moved
    aside, not appended to."""
    out = tmp_path / "search"
    _sweep_search(llama_world, adapters, out, "--budget", "2", "--limit", "4")
    path = out / "candidates.jsonl"
    first = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(first) == 2
    board = json.loads((out / "leaderboard.json").read_text())
    assert {e["fingerprint"] for e in first} == {board["fingerprint"]}
    for entry in first:
        assert entry["config"]["merge_method"] == "task_arithmetic"
        scored = next(e for e in board["leaderboard"] if e["name"] == entry["name"])
        assert json.dumps(entry["metrics"]) == json.dumps(scored["metrics"])  # nan
    with path.open("a") as handle:
        handle.write('{"name": "task_arithmetic-s1-p0.7')  # killed mid-line
    caplog.set_level("INFO", logger="axolotl.axolotl_paft.merging.search")
    _sweep_search(llama_world, adapters, out, "--budget", "3", "--limit", "4")
    assert "takes 2 candidates scored by an earlier try" in caplog.text
    again = path.read_text().splitlines()
    assert again[:2] == [json.dumps(e) for e in first]  # the cut line dropped
    assert len(again) == 3  # one new candidate scored
    assert len(json.loads((out / "leaderboard.json").read_text())["leaderboard"]) == 3
    caplog.clear()
    _sweep_search(llama_world, adapters, out, "--budget", "1", "--limit", "3")
    assert "not reused" in caplog.text
    assert len(path.read_text().splitlines()) == 1  # scored again on 3 rows
    assert len(list(out.glob("candidates-*.jsonl"))) == 1  # the earlier, aside


def test_the_winner_as_written_is_rescored_where_its_build_can_differ(
    llama_world, adapters, tmp_path
):
    """On an accelerator, a DARE or DELLA candidate built in memory draws its
    masks from the accelerator's generator and mergekit-yaml's winner from the
    CPU's: the winner as written is scored again and both numbers are kept.
    Forced here on CPU (where the two are the same merge): the record appears,
    equal to the searched numbers."""
    from axolotl_paft.merging.scoring import read_jsonl
    from axolotl_paft.merging.search import _rebuild_differs, search

    out = tmp_path / "search"
    result = search(
        llama_world.model_dir, adapters["sft"], adapters["preference"],
        read_jsonl(llama_world.sft_path, 4), read_jsonl(llama_world.preference_path, 4),
        out, budget=1, methods=("dare_ties",), rescore=True,
    )  # fmt: skip
    best = json.loads((out / "leaderboard.json").read_text())["leaderboard"][0]
    assert best["rescored"]["why"] == "asked for"
    for key in ("sft_exact_match", "preference_margin", "balanced"):
        assert best["rescored"][key] == pytest.approx(best["metrics"][key], abs=1e-5)
    assert json.dumps(result.leaderboard[0]["rescored"]) == json.dumps(best["rescored"])
    dare = {"merge_method": "dare_ties"}
    assert "cuda" in _rebuild_differs(object(), dare, torch.device("cuda"))
    assert _rebuild_differs(object(), dare, torch.device("cpu")) == ""
    assert _rebuild_differs(None, dare, torch.device("cuda")) == ""  # on disk
    assert _rebuild_differs(object(), {"merge_method": "ties"}, "cuda") == ""


def test_the_rerun_command_reproduces_a_runs_search_on_its_own_splits(
    llama_world, tmp_path
):
    """The printed rerun command dropped the run's measures and lm-eval tasks,
    rendered rows with the base's tokenizer and named placeholders for the
    run's own held-out splits. Now the splits are written as JSONL (as scored)
    and the command carries measures, objective, tokenizer and files: run into
    another folder, it scores every candidate as the run's search did. (With
    `train_on_inputs: true`, the skill is the answer, not the conversation.)"""
    from conftest import last_trainer

    from axolotl_paft.lab.toy import parallel_config, run_axolotl_train
    from axolotl_paft.merging.outputs import rerun_search_command, search_rows
    from axolotl_paft.plugin import adapter_folders, paft_args

    out = tmp_path / "out"
    config = parallel_config(
        llama_world, out, max_steps=4, paft_merge_methods=[],
        paft_merge_search=True, paft_merge_search_budget=2,
        paft_merge_search_methods=["task_arithmetic", "ties"],
        paft_merge_search_skill_measure="token_accuracy",
        paft_merge_search_preference_measure="accuracy",
        train_on_inputs=True,
    )  # fmt: skip
    del config["val_set_size"]  # the run's own splits: 5% held out per side
    run_axolotl_train(config)
    board = json.loads((out / "search" / "leaderboard.json").read_text())
    assert board["measures"] == {"skill": "token_accuracy", "preference": "accuracy"}
    held_out = {
        side: out / "search" / "held_out" / f"{side}.jsonl"
        for side in ("sft", "preference")
    }
    assert all(path.is_file() for path in held_out.values())
    from axolotl.utils.dict import DictDefault

    cfg = DictDefault(config)
    args = paft_args(cfg)
    skill, _ = search_rows(str(llama_world.model_dir), args, last_trainer())
    for ids, start, end in skill.spans:  # the answer, not the conversation
        assert start > 1 and ids[start - 1] != ids[end - 1]
    command = rerun_search_command(
        out, str(llama_world.model_dir.resolve()), adapter_folders(cfg, args), args,
        held_out,
    )  # fmt: skip
    words = shlex.split(command)
    for flag in ("--skill-measure", "--preference-measure", "--tokenizer"):
        assert flag in words, flag
    assert "SFT.jsonl" not in words and "PREFERENCE.jsonl" not in words
    again = tmp_path / "again"
    main(words[1 : words.index("--out")] + ["--out", str(again)])
    rerun = json.loads((again / "leaderboard.json").read_text())
    assert rerun["fingerprint"] == board["fingerprint"]
    assert rerun["held_out"] == board["held_out"]
    assert json.dumps(rerun["leaderboard"]) == json.dumps(board["leaderboard"])
