"""Each architecture, trained by the real trainer, recovers a known sparse dictionary.

Data: 64 random unit directions in 32 dimensions (plus a large common offset, like the mean of
a residual stream); each token holds ~3 of them with coefficients in [0.5, 1.5]. Success: for
every true direction, the best-matching decoder row has cosine >= 0.9 on average.
"""

from __future__ import annotations

import pytest
import torch

from saes import TensorSource, TrainConfig, load_sae, train
from saes.synthetic import mean_max_cosine, random_dictionary, sparse_activations

pytestmark = pytest.mark.usefixtures("one_thread")


TRUE = random_dictionary(64, 32, seed=1)
OFFSET = torch.randn(32, generator=torch.Generator().manual_seed(5)) * 2
X = sparse_activations(TRUE, 40_000, active=3, seed=2, bias=OFFSET)

# Sparsity penalties are in units of the per-token variance; the synthetic tokens are small, so
# ReLU/JumpReLU use smaller coefficients than the defaults meant for real activations.
SETTINGS = {
    "topk": dict(epochs=3),
    "batchtopk": dict(epochs=6),
    "feature_choice": dict(epochs=6),
    "mutual_choice": dict(epochs=6),
    "relu": dict(epochs=3, l1_coef=0.3),
    "jumprelu": dict(epochs=6, l0_coef=0.1),
    "matching_pursuit": dict(epochs=3),
}


@pytest.mark.parametrize("arch", list(SETTINGS))
def test_architecture_recovers_the_true_features(arch, tmp_path):
    cfg = TrainConfig(arch=(arch,), k=(3,), expansion=(4,), batch_size=256, out=str(tmp_path), progress=False,
                      checkpoint_every=0, **SETTINGS[arch])
    summary = train(cfg, TensorSource(X))
    sae = load_sae(tmp_path)
    score = mean_max_cosine(sae.W_dec.detach(), TRUE)
    row = summary["saes"][0]
    assert score >= 0.9, f"{arch}: mean max cosine {score:.3f} (held-out FVU {row['heldout_fvu']:.3f})"
    assert row["heldout_fvu"] < 0.5, row
    # A random dictionary of the same size scores far lower: the test can fail.
    assert mean_max_cosine(random_dictionary(sae.num_features, 32, seed=9), TRUE) < 0.6
