"""Choosing the cluster for a concept (days, months) by specificity rather than by activation mass: a
dense generic cluster carries the most mass on any word, a specific one fires on the concept words and
rarely elsewhere, and a tiny spurious one fires on a few concept words only."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.sparse import csc_matrix

from evals.geometry import cluster_specificity
from workbench.errors import WorkbenchError


def _planted(seed=0):
    rng = np.random.default_rng(seed)
    n_words, n_cache, f = 70, 5000, 8
    words = np.zeros((n_words, f), np.float32)
    cache = np.zeros((n_cache, f), np.float32)
    generic, specific, spurious = [0, 1, 2], [3, 4], [5]
    words[:, generic] = 1.0 + 0.1 * rng.random((n_words, 3))      # fires on every token, words included
    cache[:, generic] = 1.0 + 0.1 * rng.random((n_cache, 3))
    words[:, specific] = 0.6                                      # fires on the concept words ...
    rare = rng.random(n_cache) < 0.01
    cache[np.ix_(rare, specific)] = 0.6                           # ... and on 1% of the cache
    words[:3, spurious] = 50.0                                    # 3 of 70 words, never on the cache
    return words, csc_matrix(cache), [generic, specific, spurious]


def test_specificity_picks_the_specific_cluster_and_mass_the_generic_one():
    words, cache, clusters = _planted()
    res = cluster_specificity(words, cache, clusters, min_coverage=0.5)
    # independent reference in the definition's own terms: mean mass per word / mean mass per cache token
    dense = cache.toarray()
    for i, c in enumerate(clusters):
        lift = words[:, c].sum(1).mean() / dense[:, c].sum(1).mean() if dense[:, c].sum() > 0 else np.inf
        assert res["lift"][i] == pytest.approx(lift, rel=1e-5)
        assert res["coverage"][i] == pytest.approx((words[:, c] > 0).any(1).mean())
    assert int(np.argmax(res["mass"])) == 0          # mass: the dense generic cluster
    assert int(np.argmax(res["score"])) == 1         # specificity: the planted specific cluster
    assert res["score"][2] == -np.inf                # the spurious cluster fails the coverage floor
    assert res["best"] == 1


def test_specificity_rejects_a_bad_coverage_floor():
    words, cache, clusters = _planted()
    with pytest.raises(WorkbenchError, match="min_coverage"):
        cluster_specificity(words, cache, clusters, min_coverage=1.5)
