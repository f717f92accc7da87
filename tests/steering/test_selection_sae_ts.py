"""SAE-TS (Chalnev et al. 2024) on a planted linear effect map: the fit recovers the map, and the solved
vector is the paper's `unit(unit(W t) - unit(W b))` for the planted W, b (and, for the pseudo-inverse form,
the very direction whose effect the target is)."""

from __future__ import annotations

import pytest
import torch

from steering.selection.sae_ts import fit_effect_map, targeted_vector


def _planted(d: int = 16, k: int = 40, m: int = 60, noise: float = 1e-4):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(d, k, generator=g, dtype=torch.float64)
    b = torch.randn(k, generator=g, dtype=torch.float64)
    v = torch.randn(m, d, generator=g, dtype=torch.float64)
    e = v @ w + b + noise * torch.randn(m, k, generator=g, dtype=torch.float64)
    return v.float(), e.float(), w, b, g


def test_fit_recovers_the_planted_effect_map():
    v, e, w, b, _ = _planted()
    w_hat, b_hat = fit_effect_map(v, e)
    torch.testing.assert_close(w_hat.double(), w, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(b_hat.double(), b, atol=1e-3, rtol=1e-3)


def test_pinv_form_recovers_the_direction_whose_effect_is_the_target():
    v, e, w, b, g = _planted()
    u = torch.randn(w.shape[0], generator=g, dtype=torch.float64)
    t = u @ w + b  # the effect steering along u has
    w_hat, b_hat = fit_effect_map(v, e)
    got = targeted_vector(w_hat, b_hat, t.float(), form="pinv").double()
    assert torch.nn.functional.cosine_similarity(got, u, dim=0) > 0.999


def test_paper_form_matches_its_definition_on_the_planted_map():
    v, e, w, b, g = _planted()
    t = torch.zeros(w.shape[1], dtype=torch.float64)
    t[5] = 1.0  # "make feature 5 fire"
    unit = lambda x: x / x.norm()  # noqa: E731
    ref = unit(unit(w @ t) - unit(w @ b))
    w_hat, b_hat = fit_effect_map(v, e)
    got = targeted_vector(w_hat, b_hat, t.float()).double()
    assert torch.nn.functional.cosine_similarity(got, ref, dim=0) > 0.999
    # with no shared side effect (b = 0) it is the target feature's own input direction, unit(W t)
    w_hat0, _ = fit_effect_map(v, v @ w.float())
    got0 = targeted_vector(w_hat0, torch.zeros(w.shape[1]), t.float()).double()
    assert torch.nn.functional.cosine_similarity(got0, unit(w @ t), dim=0) > 0.99


def test_bad_form_is_one_line():
    from workbench.errors import WorkbenchError

    with pytest.raises(WorkbenchError, match="paper, pinv"):
        targeted_vector(torch.eye(2), torch.zeros(2), torch.ones(2), form="exact")


def test_measured_logit_effects_are_linear_for_a_linear_readout(tiny_lm, tiny_sae):
    """On the tiny model, the measured next-token effect of +c v and -c v are opposite to first order."""
    from steering.selection.sae_ts import measure_effects

    vecs = tiny_sae.W_dec[:4].detach()
    up = measure_effects(tiny_lm, tiny_sae, vecs, ["a dog", "hello there"], 1e-3, effect="logits")
    down = measure_effects(tiny_lm, tiny_sae, vecs, ["a dog", "hello there"], -1e-3, effect="logits")
    assert up.shape == (4, len(tiny_lm.tokenizer))
    assert up.abs().max() > 1e-4
    assert (up + down).abs().max() < 0.1 * up.abs().max()
