"""Sparse probing: a planted feature is found at k = 1; pooling from the cache matches a direct mean."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evals import pooled_from_cache, sparse_probing, topk_by_mean_diff, wiki_vital_labels
from harvesting import CacheReader

from .conftest import HOOK, make_sae


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
    present = [d for d in torch.unique(docs).tolist() if d in labels]
    assert len(labs) == len(present) == raw.shape[0]
    # rows come out in label order, documents within a label in a seeded order: match each by its raw mean
    ref = {d: x[docs == d].mean(0) for d in present}
    ref_feat = {d: sae.encode_dense(x[docs == d]).mean(0) for d in present}
    for i in range(raw.shape[0]):
        d = min(ref, key=lambda dd: float((ref[dd] - torch.from_numpy(raw[i])).abs().max()))
        torch.testing.assert_close(torch.from_numpy(raw[i]), ref[d], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(torch.from_numpy(feats[i]), ref_feat[d], rtol=1e-4, atol=1e-5)
        assert labs[i] == labels[d]
