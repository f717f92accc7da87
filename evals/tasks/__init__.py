"""Tasks whose variables are known, for the supervised evaluation (`evals.supervised`).

    from evals.tasks import make_task
    task = make_task("ioi", lm)                 # names/places/objects filtered to lm's tokenizer
    batch = task.prompts(200, split="test")     # TaskBatch: tokens, attributes, positions, answers
    cf = task.counterfactual(batch, "IO")       # the same prompts with another IO name

A task is any object with the `Task` interface (`evals.tasks.base`); `TASKS` names them.
"""

from __future__ import annotations

from typing import Any

from evals.tasks.base import Task, TaskBatch, answer_metric
from evals.tasks.ioi import IOITask, single_tokens
from workbench.errors import choices_error

TASKS = {"ioi": IOITask}


def make_task(name: str, lm: Any) -> Task:
    """The task `name` for the loaded model `lm` (its tokenizer and its prefix, e.g. BOS)."""
    if name not in TASKS:
        raise choices_error("task", name, tuple(TASKS))
    return TASKS[name](getattr(lm, "tokenizer", None), tuple(getattr(lm, "prefix_ids", ()) or ()))


__all__ = ["IOITask", "TASKS", "Task", "TaskBatch", "answer_metric", "make_task", "single_tokens"]
