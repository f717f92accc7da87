"""The gradient score is the derivative it claims: d log p(target) / d coeff at 0, checked against a
central finite difference of the steered objective, feature by feature."""

from __future__ import annotations

import pytest
import torch

from steering import Positions, add_feature
from steering.selection.gradient import gradient_scores, target_objective

PROMPTS = ["the cat sat on the mat", "a dog", "what is the capital of france and why"]


@pytest.mark.parametrize("positions", ["all", "last"])
def test_gradient_score_equals_a_finite_difference(tiny_lm, tiny_sae, positions):
    """The SAE is untied first: a fresh TopK SAE's encoder is its decoder transposed, so a score that
    read the encoder's columns instead of the decoder's rows would pass on it."""
    import copy

    tiny_sae = copy.deepcopy(tiny_sae)
    with torch.no_grad():
        tiny_sae.W_enc.copy_(torch.randn(tiny_sae.W_enc.shape, generator=torch.Generator().manual_seed(5)))
    assert not torch.allclose(tiny_sae.W_enc, tiny_sae.W_dec.T)
    targets = [2000, 2100, 3000, 4321]
    pos = Positions(positions)
    scores = gradient_scores(tiny_lm, tiny_sae, PROMPTS, targets, pos)
    assert scores.shape == (tiny_sae.num_features,)
    eps = 1e-2
    for f in (0, 7, 31, 63):
        with torch.no_grad():
            up = target_objective(tiny_lm, PROMPTS, targets, [add_feature(tiny_sae, f, eps, positions=pos)])
            down = target_objective(tiny_lm, PROMPTS, targets, [add_feature(tiny_sae, f, -eps, positions=pos)])
        fd = float(up - down) / (2 * eps)
        assert float(scores[f]) == pytest.approx(fd, rel=2e-2, abs=2e-3), f"feature {f}"
    assert scores.abs().max() > 1e-2  # not vacuously zero
