"""Sparse probing at SAEBench's sizes on documents run through the model (`evals.probe_corpus`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evals import probe_corpus
from evals.probe_corpus import accuracy_intervals, corpus_probing, label_set_documents
from evals.provenance import TrainingDocuments
from workbench.errors import WorkbenchError

from .conftest import make_sae


@pytest.fixture(autouse=True)
def one_blas_thread():
    """scikit-learn's small L-BFGS fits slow down several-fold when OpenBLAS spreads them over busy cores."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def _records(per_class: dict[str, int], source: str = "wordnet") -> list[dict[str, str]]:
    """Fake corpus records whose text says its class, so that a probe can find it."""
    words = {"cats": "the cat purrs and the kitten sleeps", "math": "two plus three equals five and seven",
             "rivers": "the river flows to the sea past the hills", "birds": "a bird sings in the tree"}
    recs = []
    for c, n in per_class.items():
        recs += [{"title": f"{c}{i}", "text": f"{words[c]} {i}", "topic": c, "source": source} for i in range(n)]
    return recs


@pytest.fixture()
def fake_corpus(monkeypatch):
    def install(recs):
        monkeypatch.setattr("harvesting.corpus.offline_records", lambda corpus: recs)
        monkeypatch.setattr(probe_corpus, "_RECORDS", {})  # records are read once per process
        return recs
    return install


def test_label_sets_and_bad_name(fake_corpus):
    recs = _records({"cats": 3, "math": 2})
    recs += [{"title": "admin-guide/x", "text": "t", "topic": "admin-guide", "source": "linux-doc"}] * 4
    recs += [{"title": "library/y", "text": "t", "topic": "library", "source": "python-doc"}] * 2
    fake_corpus(recs)
    corpus, labels, texts = label_set_documents("debian-text:source")
    assert corpus == "debian-text" and sorted(set(labels.values())) == ["linux-doc", "python-doc", "wordnet"]
    _, sections, _ = label_set_documents("debian-text:section", min_section=3)
    assert set(sections.values()) == {"linux-doc/admin-guide"}  # python-doc/library has 2 < 3 files
    _, topics, _ = label_set_documents("wiki-vital:topic")
    assert len(topics) == len(recs) and len(texts) == len(recs)  # every record has a topic here
    with pytest.raises(WorkbenchError, match="wiki-vital:topic, debian-text:source, debian-text:section"):
        label_set_documents("wiki-vital:title")


def test_saebench_sizes_where_the_corpus_allows(fake_corpus, monkeypatch):
    """SAEBench's 2500 positives per class are 4000 train / 1000 test examples per task (here 200 ->
    320 / 80, same split, to stay fast); a class with fewer unseen documents says so."""
    from evals import EvalConfig

    assert probe_corpus.SAEBENCH_PER_CLASS == 2500 == EvalConfig().probe_per_class
    fake_corpus(_records({"cats": 240, "math": 240, "rivers": 240, "birds": 30}))
    seen: list[list[int]] = []

    def fake_pool(lm, sae, hook, pool, texts, **kw):  # pooled activations without a model: class + noise
        seen.append(list(pool.chosen))
        g = torch.Generator().manual_seed(0)
        x = torch.randn(len(pool.chosen), sae.d_in, generator=g)
        for j, d in enumerate(pool.chosen):
            x[j, ["cats", "math", "rivers", "birds"].index(pool.doc_labels[d])] += 3.0
        pool.update(x, sae.encode(x), torch.tensor(pool.chosen))

    monkeypatch.setattr(probe_corpus, "pool_documents", fake_pool)
    trained = torch.arange(0, 240, 2)  # every other "cats" document was in the SAE's training data
    training = TrainingDocuments(trained, ("wiki-vital", None, None, None), "cacheX")
    out = corpus_probing(make_sae(), None, "h", ["wiki-vital:topic"], training=training, max_per_class=200,
                         progress=False)
    r = out["wiki-vital:topic"]
    assert not set(seen[0]) & set(trained.tolist())  # no document the SAE trained on is probed
    math = r["per_class"]["math"]
    assert (math["n_train"], math["n_test"]) == (320, 80)
    assert r["documents"]["available_per_class"] == {"birds": 30, "cats": 120, "math": 240, "rivers": 240}
    assert set(r["documents"]["short_of"]) == {"birds", "cats"}
    assert (r["per_class"]["birds"]["n_train"], r["per_class"]["birds"]["n_test"]) == (48, 12)
    assert (r["per_class"]["cats"]["n_train"], r["per_class"]["cats"]["n_test"]) == (192, 48)
    iv = r["intervals"]["mean"]["raw_full"]
    assert iv["low"] <= r["mean"]["raw_full"] <= iv["high"] and iv["n"] == r["test_documents"]


def test_unknown_training_documents_refuse_the_same_corpus(fake_corpus):
    fake_corpus(_records({"cats": 30, "math": 30}))
    out = corpus_probing(make_sae(), None, "h", ["wiki-vital:topic"], training=None, sae_corpus=None, progress=False)
    assert "unknown" in out["wiki-vital:topic"]["skipped"]


def test_accuracy_intervals_cover_at_the_stated_rate():
    """Per-class accuracy intervals on synthetic draws contain the true accuracy about 95% of the time."""
    rng = np.random.default_rng(0)
    p, n, hits, trials = 0.8, 400, 0, 100
    for t in range(trials):
        acc = rng.binomial(n, p) / n
        res = {"mean": {"a": acc}, "per_class": {"c": {"a": acc, "n_test": n}}}
        iv = accuracy_intervals(res, n_resamples=300, seed=t)["per_class"]["c"]["a"]
        hits += iv["low"] <= p <= iv["high"]
    assert 0.88 <= hits / trials <= 1.0


def test_through_the_tiny_model(tiny_lm, fake_corpus):
    fake_corpus(_records({"cats": 40, "math": 40}))
    out = corpus_probing(make_sae(), tiny_lm, "blocks.1.hook_resid_post", ["debian-text:source", "wiki-vital:topic"],
                         training=TrainingDocuments(torch.arange(5), ("wiki-vital", None, None, None), "c"),
                         max_per_class=30, context_length=12, progress=False)
    src = out["debian-text:source"]
    assert "skipped" in src  # a single class (wordnet): no one-vs-rest task
    topic = out["wiki-vital:topic"]
    assert topic["documents"]["pooled"] == 60  # 30 per class: a task needs 30 positives and topic["mean"]["raw_full"] > 0.9


def test_evaluate_refuses_a_bad_label_set_before_any_pass(tiny_cache):
    from evals import evaluate

    with pytest.raises(WorkbenchError, match="debian-text:section"):
        evaluate(make_sae(), tiny_cache, "none", probe_label_sets="wiki-vital:nope")


def test_evaluate_writes_label_sets_to_eval_json_and_the_table(tiny_cache, tiny_lm, fake_corpus, tmp_path):
    import json

    from evals import evaluate

    recs = _records({"cats": 24}, source="gcide") + _records({"math": 24}, source="wordnet")
    fake_corpus(recs)
    sae = make_sae()
    sae.cfg.train["cache"] = str(tiny_cache)  # its training cache is known: its documents can be left out
    r = evaluate(sae, tiny_cache, tiny_lm, probing=False, ce_contexts=2, probe_label_sets="debian-text:source",
                 probe_per_class=20, probe_context=12, progress=False)
    src = r.probing["label_sets"]["debian-text:source"]
    assert "not debian-text" in src["documents"]["rule"] and src["classes"] == 2
    saved = json.loads(r.save(tmp_path).read_text())
    assert saved["probing"]["label_sets"]["debian-text:source"]["intervals"]["mean"]["sae_top1"]["n"] == 16
    labels = dict(r.rows())
    assert labels["probe debian-text:source: classes, train / test"] == "2, 64 / 16"
    assert "[" in labels["probe debian-text:source top-1 (SAE / raw)"]
