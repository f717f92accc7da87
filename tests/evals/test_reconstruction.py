"""Reconstruction metrics and feature statistics against values computed by hand / by a plain reference."""

from __future__ import annotations

import math

import pytest
import torch

from evals import FeatureStats, ReconstructionStats, max_cosine_to_others, weight_stats


def test_metrics_on_a_hand_computed_example() -> None:
    x = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    x_hat = torch.tensor([[1.0, 1.0], [2.0, 0.0]])
    s = ReconstructionStats(d_in=2, num_features=4)
    s.update(x, x_hat, l0=torch.tensor([1, 3]), l1=torch.tensor([0.5, 1.5]))
    r = s.summary()
    # mean x = (2, 0); sum |x - mean|^2 = 1 + 1 = 2; sum |x - x_hat|^2 = 1 + 1 = 2
    assert r["fvu"] == pytest.approx(1.0)
    assert r["explained_variance"] == pytest.approx(0.0)
    assert r["mse"] == pytest.approx(2 / 4)
    # cos: token 1: 1/sqrt(2); token 2: 1
    assert r["cossim"] == pytest.approx((1 / math.sqrt(2) + 1) / 2)
    assert r["l2_ratio"] == pytest.approx((math.sqrt(2) / 1 + 2 / 3) / 2)
    # E|x_hat|^2 / E<x, x_hat> = (2 + 4) / (1 + 6)
    assert r["relative_reconstruction_bias"] == pytest.approx(6 / 7)
    assert r["l0"] == pytest.approx(2.0) and r["l0_std"] == pytest.approx(1.0)
    assert r["l1"] == pytest.approx(1.0)
    assert r["l0_quantiles"]["p50"] == 1 and r["l0_max"] == 3


def test_fvu_uses_the_per_dimension_mean_not_a_scalar_mean() -> None:
    """Two dimensions with very different means: the scalar-mean formula would inflate the variance."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 2, generator=g) + torch.tensor([100.0, -100.0])
    x_hat = x + 0.1 * torch.randn(500, 2, generator=g)
    s = ReconstructionStats(2, 4)
    s.update(x, x_hat, torch.zeros(500), torch.zeros(500))
    xd, hd = x.double(), x_hat.double()
    ref = ((xd - hd) ** 2).sum() / ((xd - xd.mean(0)) ** 2).sum()
    assert s.summary()["fvu"] == pytest.approx(float(ref), rel=1e-9)
    scalar_mean = 1 - ((x - x_hat) ** 2).mean() / ((x ** 2).mean() - x.mean() ** 2)
    assert s.summary()["explained_variance"] < float(scalar_mean) - 0.005  # the scalar mean overstates it


def test_streaming_equals_one_shot() -> None:
    g = torch.Generator().manual_seed(1)
    x, x_hat = torch.randn(103, 8, generator=g), torch.randn(103, 8, generator=g)
    l0, l1 = torch.randint(0, 5, (103,), generator=g), torch.rand(103, generator=g)
    whole, parts = ReconstructionStats(8, 16), ReconstructionStats(8, 16)
    whole.update(x, x_hat, l0, l1)
    for s in range(0, 103, 17):
        parts.update(x[s:s + 17], x_hat[s:s + 17], l0[s:s + 17], l1[s:s + 17])
    a, b = whole.summary(), parts.summary()
    for k in ("fvu", "mse", "cossim", "l2_ratio", "relative_reconstruction_bias", "l0", "l1"):
        assert a[k] == pytest.approx(b[k], rel=1e-12)


def test_feature_density_dead_and_dense_counts() -> None:
    f = FeatureStats(num_features=5)
    # 200 tokens: feature 0 fires on 30 (15%), feature 1 on 3 (1.5%), feature 2 on 1 (0.5%), 3 and 4 never
    cols = torch.tensor([0] * 30 + [1] * 3 + [2] + [4])
    vals = torch.cat([torch.full((34,), 2.0), torch.zeros(1)])  # feature 4's entry is exactly 0: not a firing
    f.update(cols[:20], vals[:20], 120)
    f.update(cols[20:], vals[20:], 80)
    s = f.summary()
    assert f.density.tolist() == pytest.approx([0.15, 0.015, 0.005, 0.0, 0.0])
    assert s["dead"] == 2 and s["dead_pct"] == pytest.approx(40.0)
    assert s["dense_1pct"] == 2 and s["dense_10pct"] == 1
    assert sum(s["log10_density_hist"]["counts"]) == 3
    assert f.per_feature()["max_act"].tolist() == [2.0, 2.0, 2.0, 0.0, 0.0]


def test_weight_metrics_against_brute_force() -> None:
    g = torch.Generator().manual_seed(2)
    w_dec = torch.randn(40, 6, generator=g)
    w_enc = torch.randn(6, 40, generator=g)
    got = max_cosine_to_others(w_dec, chunk=7)
    n = w_dec / w_dec.norm(dim=1, keepdim=True)
    sim = n @ n.T
    sim.fill_diagonal_(-2)
    torch.testing.assert_close(got, sim.max(1).values)
    summary, per = weight_stats(w_enc, w_dec)
    ref = torch.stack([torch.dot(w_enc[:, i], w_dec[i]) / (w_enc[:, i].norm() * w_dec[i].norm()) for i in range(40)])
    torch.testing.assert_close(per["enc_dec_cos"], ref)
    assert summary["mean_max_decoder_cos"] == pytest.approx(float(sim.max(1).values.mean()), rel=1e-5)


def _saebench_variance_metrics(x: torch.Tensor, x_hat: torch.Tensor, batch_tokens: int = 2048) -> tuple[float, float]:
    """sae-bench 0.6.0 `evals/core/main.py::get_sparsity_and_variance_metrics`, its variance lines
    written out plainly for batches of `batch_tokens` flattened tokens (16 prompts x 128 there):
    returns its (`explained_variance`, `explained_variance_legacy`)."""
    legacy, mean_sum_of_squares, mean_act_per_dimension, mean_sum_of_resid_squared = [], [], [], []
    for s in range(0, x.shape[0], batch_tokens):
        flattened_sae_input, flattened_sae_out = x[s:s + batch_tokens], x_hat[s:s + batch_tokens]
        resid_sum_of_squares = (flattened_sae_input - flattened_sae_out).pow(2).sum(dim=-1)
        batched_variance_sum = (flattened_sae_input - flattened_sae_input.mean(dim=0)).pow(2).sum(dim=-1)
        legacy.append(1 - resid_sum_of_squares / batched_variance_sum)
        mean_sum_of_squares.append(flattened_sae_input.pow(2).sum(dim=-1).mean(dim=0))
        mean_act_per_dimension.append(flattened_sae_input.pow(2).mean(dim=0))
        mean_sum_of_resid_squared.append(resid_sum_of_squares.mean(dim=0))
    total_variance = torch.stack(mean_sum_of_squares).mean(dim=0) - torch.cat(mean_act_per_dimension).mean(dim=0) ** 2
    residual_variance = torch.stack(mean_sum_of_resid_squared).mean(dim=0)
    return float(1 - residual_variance / total_variance), float(torch.cat(legacy).mean())


def test_saebench_explained_variances_are_reported_beside_ours() -> None:
    """Per-dimension offsets and token norms spread over an order of magnitude: the three definitions differ."""
    g = torch.Generator().manual_seed(3)
    n, d = 3 * 2048, 8
    scale = torch.exp(0.7 * torch.randn(n, 1, generator=g))
    x = (torch.randn(n, d, generator=g) * scale + torch.linspace(-1.0, 1.5, d)).double()
    x_hat = x + 0.3 * torch.randn(n, d, generator=g).double() * (1 + scale.double()) ** 0.5
    s = ReconstructionStats(d, 4)
    for a in range(0, n, 1000):  # streamed in pieces that do not line up with SAEBench's batches
        s.update(x[a:a + 1000], x_hat[a:a + 1000], torch.zeros(min(1000, n - a)), torch.zeros(min(1000, n - a)))
    r = s.summary()
    ev, ev_legacy = _saebench_variance_metrics(x, x_hat)
    assert r["saebench_explained_variance"] == pytest.approx(ev, rel=1e-9)
    assert r["saebench_explained_variance_legacy"] == pytest.approx(ev_legacy, rel=1e-9)
    ours = float(1 - ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    assert r["explained_variance"] == pytest.approx(ours, rel=1e-9)
    assert min(abs(ours - ev), abs(ours - ev_legacy), abs(ev - ev_legacy)) > 0.01  # three different numbers
