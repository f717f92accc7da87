"""A rank's rows of the one-process initialisation, drawn without the whole matrix (saes.shard_init).

The reference is the one-process draw itself: `build_sae` with the same generator seed, whose rows
the shard must equal bit for bit (same floats, not merely close), for shapes whose element count is
and is not a multiple of 16 (torch draws normals in blocks of 16) and for every way of cutting them.
"""

from __future__ import annotations

import pytest
import torch

from saes.config import SAEConfig
from saes.registry import build_sae
from saes.shard_init import build_shard, normal_rows


@pytest.mark.parametrize("f, d", [(48, 16), (7, 5), (3, 6), (10, 3), (100, 7), (33, 17), (2, 9), (5, 3)])
def test_rows_equal_the_rows_of_the_whole_draw(f, d):
    whole = torch.randn(f, d, generator=torch.Generator().manual_seed(11))
    for lo in range(f):
        for hi in sorted({lo + 1, min(f, lo + 2), (lo + f + 1) // 2, f}):
            if lo < hi <= f:
                got = normal_rows(torch.Generator().manual_seed(11), f, d, lo, hi)
                assert torch.equal(got, whole[lo:hi]), (f, d, lo, hi)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_shard_equals_the_rows_of_the_one_process_sae(n):
    cfg = SAEConfig(architecture="topk", d_in=20, num_features=24 * 5, k=30)  # k above F/n: a shard may hold fewer
    whole = build_sae(cfg, generator=torch.Generator().manual_seed(5))
    per = cfg.num_features // n
    for r in range(n):
        shard = build_shard(cfg, torch.Generator().manual_seed(5), r * per, (r + 1) * per)
        assert shard.cfg == cfg and shard.num_features == cfg.num_features
        for name in ("enc_weight", "b_enc", "W_dec"):
            assert torch.equal(getattr(shard, name), getattr(whole, name)[r * per:(r + 1) * per]), (r, name)
        assert torch.equal(shard.b_dec, whole.b_dec)


def test_architecture_with_its_own_draw_is_built_whole_and_cut():
    cfg = SAEConfig(architecture="relu", d_in=6, num_features=24, k=3)  # reset_parameters scales the rows by 0.1
    whole = build_sae(cfg, generator=torch.Generator().manual_seed(2))
    shard = build_shard(cfg, torch.Generator().manual_seed(2), 8, 16)
    assert torch.equal(shard.W_dec, whole.W_dec[8:16]) and torch.equal(shard.enc_weight, whole.enc_weight[8:16])


def test_layout_refuses_a_start_that_needs_all_features():
    from saes.architectures.topk import TopKSAE
    from saes.feature_parallel import check_layout
    from saes.registry import register, unregister
    from workbench.errors import WorkbenchError

    class SampledTopK(TopKSAE):  # a data-dependent start over all features, which one rank's rows cannot do
        architecture = "sampled-topk"

        def init_from_sample(self, x: torch.Tensor) -> None:
            self.b_enc.fill_(1.0)

    register(SampledTopK)
    try:
        cfg = SAEConfig(architecture="sampled-topk", d_in=8, num_features=16, k=3)
        with pytest.raises(WorkbenchError, match=r"'sampled-topk'.*cannot split its features across ranks; .* can: topk$"):
            check_layout(2, [("h/sampled-topk-k3-x2", cfg)])
    finally:
        unregister("sampled-topk")
