"""The inference threshold of the batch-rule architectures gives the L0 the batch rule trained at.

Trained by the trainer on synthetic activations, saved, reloaded, and run one token at a time
(the threshold rule) on fresh tokens from the same distribution, the SAE must fire k features per
token on average, within 2%: the batch rule's own budget (k*B matches per batch of B tokens for
BatchTopK, Mutual Choice and uniform Feature Choice). Zipf Feature Choice's batch rule fires
fewer (its head capacities exceed the tokens where those features are positive, and a kept ReLU
zero is no firing), so its target is its own batch rule's positive count on fresh batches of B.
The reference is a plain count of `pre > threshold` over the fresh tokens, written here.
"""

from __future__ import annotations

import pytest
import torch

from saes import TensorSource, TrainConfig, load_sae, train
from saes.synthetic import random_dictionary, sparse_activations

pytestmark = pytest.mark.usefixtures("one_thread")

D, K, EXPANSION, B = 16, 4, 4, 1024
TRUE = random_dictionary(96, D, seed=11)
BIAS = torch.linspace(-1.0, 1.0, D)


def tokens(n: int, seed: int) -> torch.Tensor:
    return sparse_activations(TRUE, n, active=5, seed=seed, zipf_exponent=0.8, bias=BIAS, noise=0.05)


def fresh_l0(sae, x: torch.Tensor) -> float:
    """Mean number of features with pre-activation above their threshold, per fresh token."""
    with torch.no_grad():
        pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
        return float((pre > sae.threshold).sum(1).double().mean())


@pytest.mark.parametrize("arch", ["batchtopk", "mutual_choice", "feature_choice", "feature_choice/zipf"])
def test_threshold_rule_fires_k_per_fresh_token(tmp_path, arch) -> None:
    name, _, capacity = arch.partition("/")
    cfg = TrainConfig(arch=(name,), k=(K,), expansion=(EXPANSION,), batch_size=B, out=str(tmp_path), progress=False,
                      checkpoint_every=0, heldout_fraction=0.0, init_sample_tokens=1024, seed=0,
                      capacity=capacity or "uniform")
    summary = train(cfg, TensorSource(tokens(20 * B, seed=1)))
    sae = load_sae(summary["saes"][0]["dir"])
    x = tokens(40 * B, seed=2)  # never seen in training
    l0 = fresh_l0(sae, x)
    with torch.no_grad():  # the saved SAE's own threshold rule agrees with the count written here
        assert sae.encode(x[:4096]).nnz == int(((x[:4096] - sae.b_dec) @ sae.W_enc + sae.b_enc > sae.threshold).sum())
        target = float(K)
        if capacity == "zipf":
            target = sum(int((sae.encode_batch(x[i:i + B]).vals > 0).sum()) for i in range(0, x.shape[0], B)) / x.shape[0]
            assert 0.8 * K < target < K
    assert abs(l0 - target) <= 0.02 * target, f"{arch}: held-out L0 {l0:.3f}, target {target:.3f}"
