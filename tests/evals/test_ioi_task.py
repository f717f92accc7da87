"""The IOI task's prompts: templates kept apart, one length, positions that hold what they name,
counterfactuals that change one attribute, the LD metric, and the one-line refusals."""

from __future__ import annotations

import pytest
import torch

from workbench.errors import WorkbenchError


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


@pytest.fixture(scope="module")
def task(tokenizer):
    from evals.tasks import IOITask

    return IOITask(tokenizer, prefix=(tokenizer.cls_token_id,))


def tok_id(tokenizer, word: str) -> int:
    ids = tokenizer.encode(" " + word, add_special_tokens=False)
    assert len(ids) == 1
    return ids[0]


def test_splits_use_disjoint_templates_and_one_length(task):
    desc = task.describe()
    assert set(desc["templates"]["train"]).isdisjoint(desc["templates"]["test"])
    assert desc["templates"]["train"] and desc["templates"]["test"]
    train, test = task.prompts(40, "train"), task.prompts(40, "test")
    assert train.tokens.shape == test.tokens.shape == (40, task.length)
    assert not set(train.texts) & set(test.texts)
    for t in test.texts:  # test templates speak of places and objects, train templates do not
        assert any(f" {o} " in t + " " for o in task.objects)


def test_positions_hold_the_names_they_name(task, tokenizer):
    b = task.prompts(60, "test", seed=3)
    n = torch.arange(len(b))
    io = torch.tensor([tok_id(tokenizer, v) for v in b.attributes["IO"]])
    s = torch.tensor([tok_id(tokenizer, v) for v in b.attributes["S"]])
    assert torch.equal(b.tokens[n, b.positions["IO"]], io)
    assert torch.equal(b.tokens[n, b.positions["S1"]], s)
    assert torch.equal(b.tokens[n, b.positions["S2"]], s)
    assert (b.positions["END"] == task.length - 1).all()
    abb = torch.tensor([p == "ABB" for p in b.attributes["Pos"]])
    assert ((b.positions["IO"] < b.positions["S1"]) == abb).all()
    assert 0 < int(abb.sum()) < len(b)
    assert torch.equal(b.answers, torch.stack([io, s], 1))
    assert all(i != j for i, j in zip(b.attributes["IO"], b.attributes["S"]))


def test_counterfactuals_change_one_attribute(task):
    b = task.prompts(30, "test", seed=1)
    n = torch.arange(len(b))
    for attr in ("IO", "S", "Pos"):
        cf = task.counterfactual(b, attr)
        for other in {"IO", "S", "Pos"} - {attr}:
            assert cf.attributes[other] == b.attributes[other], (attr, other)
        assert all(x != y for x, y in zip(cf.attributes[attr], b.attributes[attr]))
        changed = (cf.tokens != b.tokens).sum(1)
        if attr == "IO":  # the one IO token
            assert (changed == 1).all() and torch.equal(cf.positions["IO"], b.positions["IO"])
        elif attr == "S":  # both S tokens
            assert (changed == 2).all()
        else:  # the first two names swap places; everything after them stays
            assert (changed == 2).all()
            assert torch.equal(cf.tokens[n, cf.positions["IO"]], b.tokens[n, b.positions["IO"]])
            assert torch.equal(cf.positions["IO"], b.positions["S1"])
        assert torch.equal(cf.tokens[:, -1], b.tokens[:, -1])


def test_ld_metric_is_logit_io_minus_logit_s(task):
    b = task.prompts(8, "test")
    logits = torch.randn(8, int(b.answers.max()) + 1)
    ld = task.metric(logits, b)
    for i in range(8):
        assert ld[i] == pytest.approx(float(logits[i, b.answers[i, 0]] - logits[i, b.answers[i, 1]]))


class CharTokenizer:
    """A tokenizer that spells every word letter by letter: no name is one token."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ord(c) for c in text]


def test_no_single_token_names_is_one_clear_error():
    from evals.tasks import IOITask

    with pytest.raises(WorkbenchError, match=r"makes 0 of \d+ names one token"):
        IOITask(CharTokenizer())


def test_unknown_task_lists_choices(tiny_lm):
    from evals.tasks import make_task

    with pytest.raises(WorkbenchError, match="unknown task 'iio'; valid choices: ioi"):
        make_task("iio", tiny_lm)
