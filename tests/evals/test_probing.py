"""Sparse probing: a planted feature is found at k = 1; pooling from the cache matches a direct mean
over each document's text rows; `evaluate` probes only documents the SAE did not train on, end to end."""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from evals import evaluate, pooled_from_cache, sparse_probing, topk_by_mean_diff, wiki_vital_labels
from harvesting import CacheReader, CacheWriter

from .conftest import HOOK, identity_sae, make_sae

D = 16  # width of the synthetic labelled caches
SEP = 3  # their separator token id
TOPICS = ("Mathematics", "Geography", "Arts")


def test_planted_feature_is_found_at_k1() -> None:
    rng = np.random.default_rng(0)
    n, d, f = 600, 16, 64
    labels = rng.choice(["art", "math", "people"], n).tolist()
    raw = rng.normal(size=(n, d)).astype(np.float32)  # carries nothing
    feats = np.abs(rng.normal(size=(n, f))).astype(np.float32)
    is_math = np.array([lab == "math" for lab in labels])
    feats[:, 13] = np.where(is_math, 3.0, 0.0) + 0.3 * np.abs(rng.normal(size=n))  # the planted feature
    r = sparse_probing(raw, feats, labels, ks=(1, 2, 5), min_per_class=20, max_per_class=150)
    math = r["per_class"]["math"]
    assert math["sae_top1_feature"] == 13
    assert math["sae_top1"] >= 0.95
    assert math["raw_full"] < 0.75 and math["raw_top1"] < 0.75  # the raw activations hold no signal
    assert r["per_class"]["art"]["sae_top1"] < 0.8  # no feature was planted for art
    assert r["classes"] == 3 and set(r["mean"]) >= {"raw_full", "raw_top1", "sae_top1", "sae_top5"}


def test_topk_by_mean_difference() -> None:
    x = np.array([[0.0, 5.0, 1.0], [0.0, 5.0, 3.0], [1.0, 0.0, 2.0], [1.0, 0.0, 2.0]])
    y = np.array([1, 1, 0, 0])
    assert topk_by_mean_diff(x, y, 2).tolist() == [1, 0]


def test_pooling_from_the_cache_is_the_mean_over_each_documents_rows(tiny_cache) -> None:
    reader = CacheReader(tiny_cache)
    labels = wiki_vital_labels()
    sae = make_sae(seed=1)
    raw, feats, labs = pooled_from_cache(sae, reader, HOOK, labels, max_per_class=1000, batch_size=700)
    rows = [reader.load_shard(i, [HOOK]) for i in range(len(reader.shards))]
    docs = torch.cat([r["doc_ids"] for r in rows]).long()
    x = torch.cat([r[HOOK] for r in rows])
    tokens = torch.cat([r["token_ids"] for r in rows]).long()
    sep = reader.manifest["tokenizer"]["separator_id"]
    assert (tokens == sep).sum() > 5  # the harvest stored one separator row after each document
    text = tokens != sep  # separator rows (the EOS after each document) are not the document's text
    present = [d for d in torch.unique(docs).tolist() if d in labels]
    assert len(labs) == len(present) == raw.shape[0]
    # rows come out in label order, documents within a label in a seeded order: match each by its raw mean
    ref = {d: x[(docs == d) & text].mean(0) for d in present}
    ref_feat = {d: sae.encode_dense(x[(docs == d) & text]).mean(0) for d in present}
    for i in range(raw.shape[0]):
        d = min(ref, key=lambda dd: float((ref[dd] - torch.from_numpy(raw[i])).abs().max()))
        torch.testing.assert_close(torch.from_numpy(raw[i]), ref[d], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(torch.from_numpy(feats[i]), ref_feat[d], rtol=1e-4, atol=1e-5)
        assert labs[i] == labels[d]


def test_test_sizes_and_standard_errors_per_class_and_k() -> None:
    rng = np.random.default_rng(1)
    n, d, f = 400, 8, 32
    labels = rng.choice(["art", "math"], n).tolist()
    raw = rng.normal(size=(n, d)).astype(np.float32)
    feats = np.abs(rng.normal(size=(n, f))).astype(np.float32)
    feats[:, 5] += np.array([lab == "math" for lab in labels]) * rng.uniform(0, 2, n)  # a noisy signal
    r = sparse_probing(raw, feats, labels, ks=(1, 2), min_per_class=20, max_per_class=100)
    for c, row in r["per_class"].items():
        n_pos = min(100, labels.count(c), n - labels.count(c))
        assert row["n_test"] == round(0.2 * 2 * n_pos) and row["n_train"] == 2 * n_pos - row["n_test"]
        for key in ("raw_full", "raw_top1", "raw_top2", "sae_top1", "sae_top2"):
            p = row[key]
            assert row["se"][key] == pytest.approx(math.sqrt(p * (1 - p) / row["n_test"]))
    for key, se in r["mean_se"].items():  # the standard error of the mean over classes
        assert se == pytest.approx(math.sqrt(sum(row["se"][key] ** 2 for row in r["per_class"].values())) / 2)
    assert r["test_documents"] == sum(row["n_test"] for row in r["per_class"].values())


def _documents(per_topic: int, skip: int = 0) -> list[tuple[int, str]]:
    """(corpus index, topic) of `per_topic` real wiki-vital articles of each of TOPICS, after `skip`."""
    by_topic = defaultdict(list)
    for i, t in sorted(wiki_vital_labels().items()):
        by_topic[t].append(i)
    return [(i, t) for t in TOPICS for i in by_topic[t][skip:skip + per_topic]]


def write_labelled_cache(path: Path, docs: list[tuple[int, str, int]], seed: int = 0) -> Path:
    """A cache of wiki-vital document ids with synthetic activations: one context per document, 8 text
    rows then its separator row. Document (i, topic, dim) carries +3 on `dim` in its text rows; every
    separator row carries loud noise (N(0, 30^2)), so a pooling that keeps separators loses the signal."""
    g = torch.Generator().manual_seed(seed)
    w = CacheWriter(path, {HOOK: D}, "float32", shard_tokens=500, header={
        "model": {"id": "synthetic", "d_model": D}, "context_length": 10,
        "corpus": {"id": "wiki-vital", "split": "train", "seed": seed, "subset": None, "field": None},
        "tokenizer": {"separator_id": SEP, "pad_id": 0, "prefix_ids": [1], "suffix_ids": []}})
    for c, (doc, _, dim) in enumerate(docs):
        x = torch.randn(9, D, generator=g)
        x[:8, dim] += 3.0
        x[8] = 30.0 * torch.randn(D, generator=g)
        tokens = torch.randint(5, 100, (9,), generator=g)
        tokens[8] = SEP
        w.add({HOOK: x}, {"token_ids": tokens.int(), "doc_ids": torch.full((9,), doc, dtype=torch.int32),
                          "context_ids": torch.full((9,), c, dtype=torch.int64),
                          "positions": torch.arange(1, 10, dtype=torch.int32)}, contexts=1)
    w.finish()
    return path


@pytest.fixture(scope="module")
def labelled_cache(tmp_path_factory) -> Path:
    """480 documents: the first half the SAE trains on (heldout_fraction 0.5), the last half held out.
    Held-out documents of topic j carry the signal on dimension j; training documents on dimension
    j + 1, so a probe that pools training documents too confuses the topics."""
    train = [(i, t, (TOPICS.index(t) + 1) % 3) for i, t in _documents(80)]
    held = [(i, t, TOPICS.index(t)) for i, t in _documents(80, skip=80)]
    rng = np.random.default_rng(0)
    return write_labelled_cache(tmp_path_factory.mktemp("labelled") / "acts",
                                [train[j] for j in rng.permutation(len(train))] +
                                [held[j] for j in rng.permutation(len(held))])


def _sae_trained_on(reader: CacheReader, heldout_fraction: float):
    sae = identity_sae(d=D)  # features relu(x) and relu(-x): feature j is dimension j
    sae.cfg = dataclasses.replace(sae.cfg, input_scale=reader.norm_scale(HOOK), train={
        "heldout_fraction": heldout_fraction, "normalize": True, "cache": str(reader.path)})
    return sae


def test_evaluate_probes_only_documents_the_sae_did_not_train_on(labelled_cache) -> None:
    reader = CacheReader(labelled_cache)
    r = evaluate(_sae_trained_on(reader, 0.5), reader, "none", progress=False, batch_size=256)
    p = r.probing
    assert p["documents"]["pooled"] == 240  # the held-out half, all of it
    assert p["documents"]["left_out_trained_on"] == 240 and p["documents"]["in_cache"] == 480
    assert p["classes"] == 3
    for c in TOPICS:
        row = p["per_class"][c]
        assert row["sae_top1_feature"] == TOPICS.index(c)  # the held-out documents' dimension
        assert row["sae_top1"] >= 0.9 and row["n_test"] == 32
        assert 0 <= row["se"]["sae_top1"] < 0.06
    assert p["mean"]["sae_top1"] >= 0.95
    iv = r.interval("sae_top1")  # the bootstrap interval over the held-out documents, in eval.json and the table
    assert iv["n"] == 3 * 32 and iv["low"] <= p["mean"]["sae_top1"] <= iv["high"]
    assert "probe top-1" in str(r) and f"{p['mean']['sae_top1']:.3f} [{iv['low']:.3f}, {iv['high']:.3f}]" in str(r)


def test_too_few_unseen_documents_are_said_so_not_made_up(labelled_cache) -> None:
    """An SAE that held out 5% of this cache leaves 24 documents, 8 a topic: probing says so."""
    reader = CacheReader(labelled_cache)
    r = evaluate(_sae_trained_on(reader, 0.05), reader, "none", progress=False, batch_size=256)
    assert r.probing["documents"]["pooled"] == 24 and "skipped" in r.probing
    assert "did not train on" in r.probing["skipped"] and "--probe-cache" in r.probing["skipped"]
    assert any("probing skipped" in n for n in r.notes)


def test_a_probe_cache_leaves_out_the_documents_the_sae_trained_on(labelled_cache, tmp_path) -> None:
    """Another cache of the same corpus: 60 of the SAE's training documents plus 240 it never saw."""
    reader = CacheReader(labelled_cache)
    seen = [(i, t, TOPICS.index(t)) for i, t in _documents(20)]
    new = [(i, t, TOPICS.index(t)) for i, t in _documents(80, skip=160)]
    other = write_labelled_cache(tmp_path / "other", seen + new, seed=1)
    r = evaluate(_sae_trained_on(reader, 0.5), reader, "none", progress=False, batch_size=256, probe_cache=str(other))
    assert r.probing["documents"]["pooled"] == 240 and r.probing["documents"]["left_out_trained_on"] == 60
    assert r.probing["documents"]["cache"] == str(other)
    assert r.probing["mean"]["sae_top1"] >= 0.95
