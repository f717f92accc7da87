"""Concepts and neutral text: the text steering's cost is measured on never built a steering vector."""

from __future__ import annotations

import json

import pytest

import harvesting.corpus
from steering import BUILTIN, load_concept, neutral_texts
from workbench.errors import WorkbenchError


def _vector_sentences() -> set[str]:
    """Every sentence any built-in concept builds a direction from (positives and negatives) or judges with."""
    out: set[str] = set()
    for name in BUILTIN:
        c = load_concept(name)
        assert c.positive and c.negative and c.judge_positive and c.judge_negative
        out |= set(c.positive) | set(c.negative) | set(c.judge_positive) | set(c.judge_negative)
    return out


def _no_wiki(monkeypatch) -> None:
    def missing():
        raise WorkbenchError("wiki-vital is not installed")

    monkeypatch.setattr(harvesting.corpus, "wiki_vital_records", missing)


def _assert_apart(neutral: list[str], sentences: set[str]) -> None:
    assert neutral
    for t in neutral:
        for s in sentences:
            assert s.strip().lower() not in t.lower(), f"neutral text {t[:60]!r} contains concept sentence {s!r}"


def test_neutral_text_is_not_the_concepts_text(monkeypatch):
    _assert_apart(neutral_texts(16), _vector_sentences())  # the corpus path (when installed)
    _no_wiki(monkeypatch)
    fallback = neutral_texts(16)  # the built-in sentences
    _assert_apart(fallback, _vector_sentences())
    assert len(fallback) == len(set(fallback)) >= 8


def test_builtin_neutral_sentences_name_no_concept(monkeypatch):
    """Neutral means about none of the concepts: no built-in concept's target word appears in them."""
    import re

    _no_wiki(monkeypatch)
    words = {w for c in BUILTIN.values() for w in c["target_words"]}
    for t in neutral_texts(100):
        found = [w for w in words if re.search(rf"\b{w}(s|es)?\b", t, re.I)]
        assert not found, f"{t!r} names {found}"


def test_neutral_text_leaves_out_a_users_concept_sentences(monkeypatch, tmp_path):
    """A user concept may bring any sentences (here, the built-in neutral ones as its negatives): the
    neutral text given for it must still be disjoint from them, on both paths."""
    _no_wiki(monkeypatch)
    builtin_neutral = neutral_texts(100)
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"name": "c", "positive": ["the sea"], "negative": builtin_neutral[:5]}))
    c = load_concept(str(p))
    got = neutral_texts(100, exclude=c.positive + c.negative)
    _assert_apart(got, set(c.positive) | set(c.negative))
    assert len(got) == len(builtin_neutral) - 5
    with pytest.raises(WorkbenchError, match="no neutral text"):
        neutral_texts(4, exclude=builtin_neutral)
