"""lm-eval tasks as the search's objective: local task YAMLs over JSONL files this
test writes, scored offline by lm-evaluation-harness on in-memory models."""

from __future__ import annotations

import copy
import json
import random

import pytest
import torch
from conftest import validate

from axolotl_paft.config.args import PAFTArgs
from axolotl_paft.lab.toy import parallel_config
from axolotl_paft.merging.lm_eval_objective import LmEvalObjective, task_manager
from axolotl_paft.merging.outputs import run_merge_search
from axolotl_paft.merging.scoring import TextPairs, TextSkill, read_jsonl
from axolotl_paft.merging.search import _rank, search

ROWS = 24


def write_task(folder, name: str, rows: list[dict]) -> str:
    """A multiple-choice lm-eval task `name` over `rows` (question, choices,
    answer), scored by `acc` and `acc_norm`, which lm-eval computes itself."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        "doc_to_target: answer\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
    )
    return str(folder)


def sums(n: int, right: bool = True, seed: int = 0) -> list[dict]:
    """What the toy base was pre-trained on: "What is a plus b?" answered by a
    bare number; `right=False` marks a wrong choice as the answer."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 20), rng.randint(0, 20)
        choices = [str(a + b), str(a + b + 3), str(abs(a - b) + 30)]
        rng.shuffle(choices)
        target = str(a + b) if right else str(a + b + 3)
        rows.append(
            {
                "question": f"What is {a} plus {b}?",
                "choices": choices,
                "answer": choices.index(target),
            }
        )
    return rows


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("lm-eval-tasks")
    write_task(folder, "toy_sums", sums(ROWS))
    return write_task(folder, "toy_sums_wrong", sums(ROWS, right=False, seed=1))


@pytest.fixture(scope="module")
def toy(llama_world):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = llama_world.model_dir
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path)


def test_score_is_what_lm_eval_reports_for_the_model_loaded_by_lm_eval(
    llama_world, toy, tasks
):
    """The in-memory score equals lm-eval's own run of the saved model (its `hf`
    model, as `lm_eval --model hf --model_args pretrained=...` loads it)."""
    import lm_eval

    objective = LmEvalObjective(["toy_sums"], include_path=tasks, limit=20)
    score = objective.score(*toy)
    direct = lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": str(llama_world.model_dir), "device": "cpu"},
        tasks=["toy_sums"],
        task_manager=task_manager(tasks),
        limit=20,
        apply_chat_template=True,
    )["results"]["toy_sums"]["acc,none"]
    assert score == {"lm_eval": direct, "lm_eval/toy_sums/acc,none": direct}
    assert direct >= 0.8  # the toy base was pre-trained on exactly these sums


def test_a_model_that_cannot_add_scores_lower(toy, tasks):
    """The same architecture, randomly initialised, picks the sum by chance."""
    from transformers import AutoModelForCausalLM

    model, tokenizer = toy
    torch.manual_seed(0)
    untrained = AutoModelForCausalLM.from_config(model.config).eval()
    objective = LmEvalObjective(["toy_sums"], include_path=tasks)
    trained, random_init = (
        objective.score(model, tokenizer),
        objective.score(untrained, tokenizer),
    )
    assert trained["lm_eval"] >= 0.8
    assert random_init["lm_eval"] <= 0.6


def test_weights_and_metrics_combine_as_mergekit_evolve_sums_them(toy, tasks):
    """mergekit-evolve's task list: a bare name (weight 1, `acc,none`) or {name,
    weight, metric}; one task may count twice under two metrics; the score is
    the plain weighted sum (no normalisation)."""
    alone = {
        name: LmEvalObjective([name], include_path=tasks).score(*toy)["lm_eval"]
        for name in ("toy_sums", "toy_sums_wrong")
    }
    objective = LmEvalObjective(
        [
            "toy_sums",
            {"name": "toy_sums_wrong", "weight": -0.5},
            {"name": "toy_sums", "weight": 2, "metric": "acc_norm,none"},
        ],
        include_path=tasks,
    )
    score = objective.score(*toy)
    norm = score["lm_eval/toy_sums/acc_norm,none"]
    assert score["lm_eval/toy_sums/acc,none"] == alone["toy_sums"]
    assert score["lm_eval/toy_sums_wrong/acc,none"] == alone["toy_sums_wrong"]
    assert alone["toy_sums"] > alone["toy_sums_wrong"]  # the tasks differ
    expected = alone["toy_sums"] - 0.5 * alone["toy_sums_wrong"] + 2 * norm
    assert score["lm_eval"] == pytest.approx(expected)
    with pytest.raises(ValueError, match=r"no metric 'f1,none'.*'acc,none'"):
        LmEvalObjective(
            [{"name": "toy_sums", "metric": "f1,none"}], include_path=tasks
        ).score(*toy)


def test_a_tokenizer_without_chat_template_is_refused_unless_turned_off(toy, tasks):
    """mergekit-evolve renders prompts with the chat template by default; a base
    without one is refused, not silently scored on bare prompts."""
    model, tokenizer = toy
    bare = copy.deepcopy(tokenizer)
    bare.chat_template = None
    chat = LmEvalObjective(["toy_sums"], include_path=tasks)
    with pytest.raises(ValueError, match="no chat template; turn it off"):
        chat.score(model, bare)
    plain = LmEvalObjective(["toy_sums"], include_path=tasks, apply_chat_template=False)
    # the toy base learnt its sums inside ChatML: bare prompts score lower
    # (measured 0.5 against 0.875)
    assert plain.score(model, bare)["lm_eval"] < chat.score(model, tokenizer)["lm_eval"]


def test_a_common_benchmark_gets_mergekit_evolves_warning(caplog):
    """mergekit-evolve refuses to search against a common benchmark's test set
    without a flag; named here by the user, it is warned about, not refused."""
    LmEvalObjective(["toy_sums"])
    assert "common benchmark" not in caplog.text
    LmEvalObjective(["hellaswag"])
    assert "Task hellaswag is a common benchmark task" in caplog.text


def test_search_ranks_candidates_by_the_lm_eval_score(
    llama_world, adapters, tasks, tmp_path
):
    """The plugin's search with paft_merge_search_lm_eval_tasks set."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(llama_world.model_dir)
    args = PAFTArgs(
        paft_merge_search=True,
        paft_merge_search_budget=3,
        paft_merge_search_methods=["ties", "task_arithmetic"],
        paft_merge_search_lm_eval_tasks=["toy_sums"],
        paft_merge_search_lm_eval_include_path=tasks,
    )
    held_out = (
        TextSkill(tokenizer, read_jsonl(llama_world.sft_path, 4)),
        TextPairs(tokenizer, read_jsonl(llama_world.preference_path, 4)),
    )
    run_merge_search(tmp_path, str(llama_world.model_dir), adapters, args, held_out)
    out = tmp_path / "search"
    result = json.loads((out / "leaderboard.json").read_text())
    assert result["objective"] == "lm_eval"
    board = result["leaderboard"]
    scores = [e["metrics"]["lm_eval"] for e in board]
    assert len(board) == 3 and scores == sorted(scores, reverse=True)
    # the objective decides: ranked by the held-out score, another merge wins
    # (measured: every candidate scores 0.5 there, lm_eval 0.71-0.79)
    assert result["best"] != max(board, key=lambda e: _rank(e, "score"))["name"]
    # the winner's number belongs to the merge kept in merged/best
    best = AutoModelForCausalLM.from_pretrained(out / "merged" / "best").eval()
    objective = args.lm_eval_objective()
    assert objective.score(best, tokenizer)["lm_eval"] == scores[0]


def test_sweep_search_ranks_by_the_lm_eval_tasks_it_is_given(
    llama_world, adapters, tasks, tmp_path
):
    """`axolotl-paft-sweep --search --lm-eval-tasks`: mergekit-evolve's task list
    as YAML on the command line."""
    from axolotl_paft.cli.sweep import main

    out = tmp_path / "search"
    main(
        [
            "--base", str(llama_world.model_dir),
            "--sft", str(adapters["sft"]),
            "--preference", str(adapters["preference"]),
            "--search", "--budget", "2", "--methods", "ties,task_arithmetic",
            "--sft-data", str(llama_world.sft_path),
            "--preference-data", str(llama_world.preference_path),
            "--limit", "4", "--out", str(out),
            "--lm-eval-tasks", "[toy_sums, {name: toy_sums_wrong, weight: -1}]",
            "--lm-eval-include-path", tasks, "--lm-eval-limit", "8",
        ]
    )  # fmt: skip
    board = json.loads((out / "leaderboard.json").read_text())
    assert board["objective"] == "lm_eval"
    for entry in board["leaderboard"]:
        m = entry["metrics"]
        right, wrong = (
            m["lm_eval/toy_sums/acc,none"],
            m["lm_eval/toy_sums_wrong/acc,none"],
        )
        assert m["lm_eval"] == pytest.approx(right - wrong)
    scores = [e["metrics"]["lm_eval"] for e in board["leaderboard"]]
    assert scores == sorted(scores, reverse=True)


def test_unknown_task_is_refused_before_any_model_loads(llama_world, tasks, tmp_path):
    """In Axolotl's config validation (the plugin's path), and at the search's
    start (the base here does not even exist)."""
    config = parallel_config(
        llama_world,
        tmp_path / "out",
        paft_merge_search=True,
        val_set_size=0.25,
        paft_merge_search_lm_eval_tasks=["toy_sums", {"name": "toy_sumz"}],
        paft_merge_search_lm_eval_include_path=tasks,
    )
    with pytest.raises(ValueError, match=r"paft_merge_search_lm_eval_tasks.*toy_sumz"):
        validate(config)
    with pytest.raises(ValueError, match="toy_sumz"):
        search(
            tmp_path / "no-base", tmp_path / "no-sft", tmp_path / "no-pref", [], [],
            tmp_path / "search", objective="lm_eval",
            lm_eval=LmEvalObjective(["toy_sumz"], include_path=tasks),
        )  # fmt: skip


def test_the_keys_reach_the_search_through_axolotl_config(llama_world, tasks, tmp_path):
    """Axolotl validates the task list (mergekit-evolve's model inside its
    schema) and the plugin reads it back with weights and metrics intact."""
    from axolotl_paft.plugin import paft_args

    entries = ["toy_sums", {"name": "toy_sums_wrong", "weight": 0.5}]
    cfg = validate(
        parallel_config(
            llama_world,
            tmp_path / "out",
            paft_merge_search=True,
            val_set_size=0.25,
            paft_merge_search_lm_eval_tasks=entries,
            paft_merge_search_lm_eval_include_path=tasks,
            paft_merge_search_lm_eval_limit=5,
        )
    )
    objective = paft_args(cfg).lm_eval_objective()
    assert [(t.name, t.weight, t.metric) for t in objective.tasks] == [
        ("toy_sums", 1.0, "acc,none"),
        ("toy_sums_wrong", 0.5, "acc,none"),
    ]
    assert objective.limit == 5 and objective.apply_chat_template
    assert PAFTArgs().lm_eval_objective() is None


# each capital the answer once and a wrong choice twice
CAPITALS = [
    ("France", "Paris"),
    ("Germany", "Berlin"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Japan", "Tokyo"),
    ("the United Kingdom", "London"),
    ("Russia", "Moscow"),
    ("Egypt", "Cairo"),
]


@pytest.mark.slow
def test_the_real_model_scores_through_its_chat_template_as_lm_eval_does(
    smollm2, tmp_path
):
    """SmolLM2-135M-Instruct, named by its hub id, scored through its own chat
    template (ChatML with a default system prompt): the in-memory score is
    lm-eval's own for the hub id, and the model knows the capitals (chance is
    1/3; measured 8 of 8)."""
    import lm_eval
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = []
    for i, (country, capital) in enumerate(CAPITALS):
        others = [CAPITALS[(i + k) % len(CAPITALS)][1] for k in (1, 3)]
        choices = [capital, *others]
        choices = choices[i % 3 :] + choices[: i % 3]  # the answer moves
        rows.append(
            {
                "question": f"What is the capital of {country}?",
                "choices": choices,
                "answer": choices.index(capital),
            }
        )
    tasks = write_task(tmp_path, "capitals", rows)
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    score = LmEvalObjective(["capitals"], include_path=tasks).score(model, tokenizer)
    direct = lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": smollm2, "device": "cpu", "dtype": "float32"},
        tasks=["capitals"],
        task_manager=task_manager(tasks),
        apply_chat_template=True,
    )["results"]["capitals"]["acc,none"]
    assert score["lm_eval"] == direct
    assert direct >= 0.875
