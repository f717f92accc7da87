"""The interface a task with labelled attributes offers the supervised evaluation.

A task makes prompts whose variables are known (the attributes of each prompt), names the
token positions that line up across prompts (`positions`: one index per prompt), makes
counterfactual prompts that change exactly one attribute, and scores the model's last-position
logits with its metric (for IOI, the logit difference). Everything the supervised dictionaries
and their tests need is here, so a new task is one module that fills a `TaskBatch`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor


@dataclass
class TaskBatch:
    """N prompts of one length, their attributes and named positions, and the metric's answer tokens."""

    tokens: Tensor  # [N, T] token ids, the model's prefix (BOS) included
    attributes: dict[str, list[str]]  # attribute -> its value in each prompt
    positions: dict[str, Tensor]  # named position -> [N] index into dim 1 of tokens
    answers: Tensor  # [N, 2]: the right and the wrong answer token (metric = logit(right) - logit(wrong))
    templates: Tensor  # [N] which template made each prompt
    split: str = "test"
    texts: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def subset(self, idx: Tensor | slice) -> TaskBatch:
        """The prompts at `idx` (a slice or index tensor), everything else carried along."""
        if isinstance(idx, slice):
            idx = torch.arange(len(self))[idx]
        ids = idx.tolist()
        return TaskBatch(self.tokens[idx], {a: [v[i] for i in ids] for a, v in self.attributes.items()},
                         {p: t[idx] for p, t in self.positions.items()}, self.answers[idx], self.templates[idx],
                         self.split, [self.texts[i] for i in ids] if self.texts else [])


class Task(Protocol):
    """A task with labelled attributes: prompts, attributes per prompt, counterfactuals, metric."""

    name: str
    attributes: tuple[str, ...]  # e.g. ("IO", "S", "Pos")
    positions: tuple[str, ...]  # named positions, e.g. ("IO", "S1", "S2", "END")
    chance_accuracy: float  # share of prompts with metric > 0 a model without the skill gets

    def prompts(self, n: int, split: str = "test", seed: int = 0) -> TaskBatch:
        """`n` prompts from the split's templates (train and test templates never overlap)."""
        ...

    def counterfactual(self, batch: TaskBatch, attribute: str, seed: int = 0) -> TaskBatch:
        """The same prompts with `attribute` changed to another value in each (everything else kept)."""
        ...

    def metric(self, last_logits: Tensor, batch: TaskBatch) -> Tensor:
        """[N] score from the last position's logits [N, vocab]; > 0 means the model got the prompt right."""
        ...


def answer_metric(last_logits: Tensor, batch: TaskBatch) -> Tensor:
    """logit(right answer) - logit(wrong answer), per prompt: the IOI logit difference."""
    lg = last_logits.float()
    return lg.gather(1, batch.answers[:, :1].to(lg.device)).squeeze(1) - lg.gather(1, batch.answers[:, 1:].to(lg.device)).squeeze(1)
