"""lm-evaluation-harness tasks as the merge search's objective.

Users judge merges on benchmarks, and mergekit-evolve, the anchor of the merge
search, scores its candidates with lm-eval tasks: a list of task names, each with
a weight and a metric key (`acc,none`), one score = the weighted sum of the
tasks' metrics as `lm_eval.simple_evaluate` reports them. This module takes the
tasks in mergekit-evolve's own shape (its `TaskConfiguration` pydantic model, so a
`tasks:` list from a mergekit-evolve config reads the same here) and scores the
candidate already loaded in memory (lm-eval's `HFLM(pretrained=<model>)`, as
mergekit-evolve's in-memory evaluator does): no second load, no folder to write.
Local tasks (a task YAML over a JSONL file) are found through `include_path`
(mergekit-evolve's `--task-search-path`), and nothing here reaches a hub that the
tasks themselves do not name. The options not exposed (`fewshot_as_multiturn`)
take mergekit-evolve's defaults, read from its `EvolMergeConfiguration`.
"""

from __future__ import annotations

from functools import cache
from types import SimpleNamespace

from mergekit.evo.config import (
    EvolMergeConfiguration,
    TaskConfiguration,
    check_for_naughty_config,
)

# A candidate's metrics hold the weighted sum under PREFIX, each task's value
# under `metric_key(task)`.
PREFIX = "lm_eval"
# mergekit-evolve's defaults for the options it passes to lm_eval
EVOLVE_DEFAULTS = {
    key: EvolMergeConfiguration.model_fields[key].default
    for key in ("limit", "num_fewshot", "apply_chat_template", "fewshot_as_multiturn")
}


def task_configurations(tasks) -> list[TaskConfiguration]:
    """Tasks as mergekit-evolve reads them: a name, or {name, weight, metric}."""
    return [TaskConfiguration.model_validate(task) for task in tasks]


@cache
def task_manager(include_path: str | None = None):
    """lm-eval's task index, with the tasks under `include_path` added; built
    once per process (it reads every task YAML lm-eval ships: seconds), as
    config validation runs more than once per run."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path)


def unknown_tasks(tasks, include_path: str | None = None) -> list[str]:
    """The task names lm-eval does not know (with `include_path`'s tasks); reads
    task YAMLs only, no data set and no model."""
    known = set(task_manager(include_path).all_tasks)
    return [t.name for t in task_configurations(tasks) if t.name not in known]


class LmEvalObjective:
    """The weighted sum of lm-eval task metrics of an in-memory model.

    `tasks`: names or {name, weight, metric} (mergekit-evolve's
    `TaskConfiguration`); `limit`, `num_fewshot`, `apply_chat_template`:
    `lm_eval.simple_evaluate`'s, defaulting to mergekit-evolve's; `batch_size`:
    the `HFLM` wrapper's."""

    def __init__(
        self,
        tasks,
        limit: int | None = EVOLVE_DEFAULTS["limit"],
        include_path: str | None = None,
        batch_size: int = 8,
        num_fewshot: int | None = EVOLVE_DEFAULTS["num_fewshot"],
        apply_chat_template: bool = EVOLVE_DEFAULTS["apply_chat_template"],
    ):
        self.tasks = task_configurations(tasks)
        if not self.tasks:
            raise ValueError("lm-eval objective: no tasks")
        # mergekit-evolve's warning on searching against a common benchmark's
        # test set (it refuses without a flag; here the user named the tasks)
        check_for_naughty_config(SimpleNamespace(tasks=self.tasks), allow=True)
        self.limit, self.include_path, self.batch_size = limit, include_path, batch_size
        self.num_fewshot = num_fewshot
        self.apply_chat_template = apply_chat_template

    def check(self) -> None:
        """Refuse task names lm-eval does not know, before any model loads."""
        unknown = unknown_tasks(self.tasks, self.include_path)
        if unknown:
            raise ValueError(
                f"lm-eval tasks {unknown} not found (include_path "
                f"{self.include_path!r})"
            )

    def check_tokenizer(self, tokenizer) -> None:
        if self.apply_chat_template and not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "lm-eval objective: apply_chat_template is on (mergekit-evolve's "
                "default) but the tokenizer has no chat template; turn it off"
            )

    def prepare(self, base):
        """Check the tasks, then load `base`'s tokenizer and check it: at the
        search's start, before any model loads. A tokenizer of its own: lm-eval
        sets a pad token on the one it is given."""
        from transformers import AutoTokenizer

        self.check()
        tokenizer = AutoTokenizer.from_pretrained(base)
        self.check_tokenizer(tokenizer)
        return tokenizer

    def results(self, model, tokenizer) -> dict:
        """`lm_eval.simple_evaluate`'s `results` for `model` (an in-memory
        `transformers` model, evaluated where it lies) with `tokenizer`."""
        import lm_eval
        from lm_eval.models.huggingface import HFLM

        self.check()
        self.check_tokenizer(tokenizer)
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=self.batch_size)
        return lm_eval.simple_evaluate(
            model=lm,
            tasks=list(dict.fromkeys(t.name for t in self.tasks)),
            task_manager=task_manager(self.include_path),
            limit=self.limit,
            num_fewshot=self.num_fewshot,
            apply_chat_template=self.apply_chat_template,
            fewshot_as_multiturn=EVOLVE_DEFAULTS["fewshot_as_multiturn"],
            log_samples=False,
            verbosity="WARNING",
        )["results"]

    def score(self, model, tokenizer) -> dict[str, float]:
        """{"lm_eval": sum of weight * metric over the tasks (mergekit-evolve's
        score), "lm_eval/<task>/<metric>": each task's value}."""
        return self.combine(self.results(model, tokenizer))

    def combine(self, results: dict) -> dict[str, float]:
        """`score` from `simple_evaluate`'s `results`; a metric a task does not
        report is refused with the ones it does (a silently missing metric
        would rank every candidate the same)."""
        values = {}
        for task in self.tasks:
            reported = results[task.name]
            if task.metric not in reported:
                metrics = sorted(k for k in reported if k != "alias")
                raise ValueError(
                    f"lm-eval task {task.name!r} reports no metric {task.metric!r}; "
                    f"it reports {metrics}"
                )
            values[metric_key(task)] = float(reported[task.metric])
        total = sum(task.weight * values[metric_key(task)] for task in self.tasks)
        return {PREFIX: total, **values}


def metric_key(task: TaskConfiguration) -> str:
    """Where a candidate's metrics hold `task`'s value."""
    return f"{PREFIX}/{task.name}/{task.metric}"
