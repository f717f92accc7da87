"""The browser's feature map: UMAP of decoder directions keeps planted groups apart; spectral stays an option."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from evals.geometry.decoder import feature_map, map_clusters
from workbench.errors import WorkbenchError


@pytest.fixture(autouse=True)
def one_blas_thread():
    """scikit-learn's small L-BFGS fits slow down several-fold when OpenBLAS spreads them over busy cores."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


GROUPS, PER_GROUP, D = 6, 40, 64


def planted_directions(seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Decoder rows in well-separated groups: a random centre per group plus small noise."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(GROUPS, D, generator=g)
    rows = centres.repeat_interleave(PER_GROUP, 0) + 0.25 * torch.randn(GROUPS * PER_GROUP, D, generator=g)
    return rows, np.repeat(np.arange(GROUPS), PER_GROUP)


def nn_agreement(coords: np.ndarray, labels: np.ndarray) -> float:
    """Share of points whose nearest other point on the map has the same group."""
    d = ((coords[:, None, :] - coords[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    return float((labels[d.argmin(1)] == labels).mean())


@pytest.fixture(scope="module")
def planted():
    w, labels = planted_directions()
    return w, labels, feature_map(w)


def test_umap_map_keeps_planted_groups_apart(planted):
    w, labels, coords = planted
    assert coords.shape == (len(w), 2) and coords.min() >= 0 and coords.max() <= 1
    assert nn_agreement(coords, labels) > 0.97
    # groups are islands: every point is nearer its own group's centroid than any other's
    cent = np.stack([coords[labels == c].mean(0) for c in range(GROUPS)])
    nearest = ((coords[:, None] - cent[None]) ** 2).sum(-1).argmin(1)
    assert (nearest == labels).mean() > 0.97


def test_map_clusters_find_the_planted_groups(planted):
    from sklearn.metrics import adjusted_mutual_info_score

    _, labels, coords = planted
    found = map_clusters(coords)
    assert adjusted_mutual_info_score(labels, found) > 0.9


def test_spectral_option_and_bad_method(planted):
    w, labels, coords = planted
    spec = feature_map(w, method="spectral")
    assert spec.shape == coords.shape and not np.allclose(spec, coords)
    with pytest.raises(WorkbenchError, match="umap, spectral"):
        feature_map(w, method="tsne")


def _fake_data(n: int, tmp_path):
    density = torch.linspace(1e-4, 1e-1, n)
    tensors = {"density": density, "max": torch.arange(n, dtype=torch.float32), "top_ids": torch.zeros(n, 3)}
    return SimpleNamespace(tensors=tensors, num_features=n, meta={"sae_dir": str(tmp_path)})


def test_map_page_outlines_clusters_and_colours_by_a_statistic(planted, tmp_path):
    import json

    from evals.browser.site import _map_page

    _, labels, coords = planted
    n = len(coords)
    (tmp_path / "eval.json").write_text(json.dumps({"absorption": {"absorbing_features": {"7": [
        {"letter": "s", "tokens": [" short"], "rate": 0.1}]}}}))
    data = _fake_data(n, tmp_path)
    rows = [[f, 0.0, 0.0, [f"t{f}"], []] for f in range(n)]
    page = _map_page("t", data, coords, rows, colour="max", method="umap")
    assert "UMAP" in page and "colour: max" in page
    assert len(re.findall(r'<polygon class="cluster"', page)) == GROUPS
    assert len(re.findall(r"<circle ", page)) == n
    assert re.search(r'id="f7"[^>]*class="absorbing"', page)
    with pytest.raises(WorkbenchError, match="density"):
        _map_page("t", data, coords, rows, colour="nope")
