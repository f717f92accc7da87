"""saes.heldout.evaluate_heldout against metrics computed by hand over the whole held-out set."""

from __future__ import annotations

import pytest
import torch

from saes import SAEConfig, build_sae
from saes.heldout import evaluate_heldout

D, F, K = 6, 24, 3


def sae_on(arch: str, hook: str, seed: int):
    sae = build_sae(SAEConfig(architecture=arch, d_in=D, num_features=F, k=K, hook=hook),
                    generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        sae.b_dec.normal_(generator=torch.Generator().manual_seed(seed + 1))
        if sae.threshold_inference:
            sae.threshold.fill_(0.3)
    return sae.eval()


def reference(sae, x, batch):
    """FVU and L0 of the whole set at once (threshold rule), and of the batch rule per batch."""
    with torch.no_grad():
        z = sae.encode_dense(x)
        var = (x - x.mean(0)).pow(2).sum()
        ref = {"heldout_fvu": float((z @ sae.W_dec + sae.b_dec - x).pow(2).sum() / var),
               "heldout_l0": float((z > 0).sum(1).float().mean()),
               "heldout_unfired_pct": 100 * float(((z > 0).sum(0) == 0).float().mean()), "heldout_tokens": x.shape[0]}
        if sae.threshold_inference:
            parts = [sae.encode_batch(x[i:i + batch]).to_dense() for i in range(0, x.shape[0], batch)]
            zb = torch.cat(parts)
            ref["heldout_fvu_batch_rule"] = float((zb @ sae.W_dec + sae.b_dec - x).pow(2).sum() / var)
            ref["heldout_l0_batch_rule"] = float((zb > 0).sum(1).float().mean())
    return ref


def test_metrics_match_whole_set_reference_for_several_hooks_and_rules():
    g = torch.Generator().manual_seed(0)
    xa, xb = torch.randn(50, D, generator=g) * 2, torch.randn(50, D, generator=g) + 1
    saes = [sae_on("topk", "a", 1), sae_on("batchtopk", "b", 2), sae_on("relu", "a", 3)]
    batches = [{"a": xa[i:i + 16], "b": xb[i:i + 16]} for i in range(0, 50, 16)]
    got = evaluate_heldout(saes, batches)
    for sae, m, x in zip(saes, got, [xa, xb, xa]):
        ref = reference(sae, x, 16)
        assert set(m) == set(ref)
        for k, v in ref.items():
            assert m[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k


def test_plain_tensors_max_tokens_and_empty_input():
    x = torch.randn(40, D, generator=torch.Generator().manual_seed(4))
    sae = sae_on("topk", "", 5)
    got = evaluate_heldout([sae], (x[i:i + 10] for i in range(0, 40, 10)), max_tokens=15)
    assert got[0]["heldout_tokens"] == 20  # stops after the batch that reaches 15
    assert got[0]["heldout_fvu"] == pytest.approx(reference(sae, x[:20], 10)["heldout_fvu"], rel=1e-5)
    assert evaluate_heldout([sae], []) == [{}]
