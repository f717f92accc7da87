"""Supervised dictionaries, the greedy SAE editor and feature F1 on planted data (issue 19's acceptance).

Activations are built as mean + one planted vector per attribute value + noise, so the right
answer of every fit is known: a dictionary must recover the planted vectors, an editor with the
planted vectors as decoder must reach the noise level, and a feature that is an attribute's
indicator must score F1 = 1.
"""

from __future__ import annotations

import torch

D = 32


def planted(n: int = 4000, values: int = 4, correlated: float = 0.0, noise: float = 0.05, seed: int = 0):
    """Two attributes (X with `values` values, Y likewise); Y copies X with probability `correlated`."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(D, generator=g) * 3
    vecs = {}
    for attr in ("X", "Y"):
        u = torch.randn(values, D, generator=g)
        u -= u.mean(0)  # centred: the model a = mu + Σ u is then identifiable
        vecs[attr] = u
    x = torch.randint(values, (n,), generator=g)
    y = torch.randint(values, (n,), generator=g)
    copy = torch.rand(n, generator=g) < correlated
    y = torch.where(copy, x, y)
    acts = mu + vecs["X"][x] + vecs["Y"][y] + noise * torch.randn(n, D, generator=g)
    attrs = {"X": [f"x{i}" for i in x.tolist()], "Y": [f"y{i}" for i in y.tolist()]}
    return acts, attrs, vecs, mu


def cos(a, b):
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


def recovered(dic, vecs) -> torch.Tensor:
    return torch.stack([cos(dic.vectors[a][f"{a.lower()}{i}"], vecs[a][i]) for a in vecs for i in range(len(vecs[a]))])


def test_both_dictionaries_recover_planted_vectors():
    from evals.supervised import mean_dictionary, mse_dictionary

    acts, attrs, vecs, mu = planted()
    for fit in (mean_dictionary, mse_dictionary):
        dic = fit(acts, attrs)
        c = recovered(dic, vecs)
        assert c.min() >= 0.99, (fit.__name__, c)
        # â is the planted mean + vectors up to the noise
        x_hat = dic.reconstruct(attrs)
        assert (x_hat - acts).pow(2).mean() < 2 * 0.05 ** 2


def test_correlated_attributes_mse_recovers_mean_is_biased():
    from evals.supervised import mean_dictionary, mse_dictionary

    acts, attrs, vecs, _ = planted(correlated=0.6)
    mse = recovered(mse_dictionary(acts, attrs), vecs)
    mean = recovered(mean_dictionary(acts, attrs), vecs)
    assert mse.min() >= 0.99, mse
    assert mean.min() < 0.95, mean  # E[u_Y | X = v] leaks into u_{X,v}


def test_mse_equals_mean_dictionary_when_independent():
    from evals.supervised import mean_dictionary, mse_dictionary

    # exactly balanced, independent design: every (x, y) pair equally often
    acts, attrs, _, _ = planted(n=4000)
    xs = [f"x{i % 4}" for i in range(1600)]
    ys = [f"y{(i // 4) % 4}" for i in range(1600)]
    attrs = {"X": xs, "Y": ys}
    acts = acts[:1600]
    a, b = mean_dictionary(acts, attrs), mse_dictionary(acts, attrs)
    for attr in attrs:
        for v in a.vectors[attr]:
            assert torch.allclose(a.vectors[attr][v], b.vectors[attr][v], atol=1e-4)


def codes_for(values_x, values_y, k: int = 4):
    """Exact codes of the planted decoder [u_X; u_Y]: one-hot of each prompt's two values."""
    n = len(values_x)
    c = torch.zeros(n, 2 * k)
    c[torch.arange(n), values_x] = 1.0
    c[torch.arange(n), k + values_y] = 1.0
    return c


def test_greedy_edit_planted_decoder_reaches_noise_at_k2_random_does_worse():
    from evals.supervised import greedy_edit

    g = torch.Generator().manual_seed(1)
    acts, attrs, vecs, mu = planted(n=200, noise=0.05)
    x = torch.tensor([int(v[1:]) for v in attrs["X"]])
    y = torch.tensor([int(v[1:]) for v in attrs["Y"]])
    x_t = (x + 1) % 4  # counterfactual: X changed, Y kept
    noise_t = 0.05 * torch.randn(200, D, generator=g)
    target = mu + vecs["X"][x_t] + vecs["Y"][y] + noise_t
    decoder = torch.cat([vecs["X"], vecs["Y"]])  # [8, D]
    alpha, beta = codes_for(x, y), codes_for(x_t, y)
    delta, chosen = greedy_edit(decoder, alpha, beta, target - acts, k=2)
    err = (acts + delta - target).norm(dim=-1).mean()
    noise_level = (target - acts - (vecs["X"][x_t] - vecs["X"][x])).norm(dim=-1).mean()
    assert err <= noise_level * 1.01
    assert (chosen >= 0).sum(1).eq(2).all()  # two features: one removed, one added
    # a random decoder, with least-squares codes of each activation (nonnegative part), does worse
    rand = torch.randn(8, D, generator=g)
    pinv = torch.linalg.pinv(rand)
    a_r, b_r = ((acts - mu) @ pinv).clamp_min(0), ((target - mu) @ pinv).clamp_min(0)
    delta_r, _ = greedy_edit(rand, a_r, b_r, target - acts, k=2)
    err_r = (acts + delta_r - target).norm(dim=-1).mean()
    assert err_r > 3 * noise_level


def test_greedy_edit_brute_force_agrees_at_k1():
    """k = 1: the chosen feature is the one whose δ_j = (β_j − α_j) u_j lands closest to the target."""
    from evals.supervised import greedy_edit

    g = torch.Generator().manual_seed(2)
    dec = torch.randn(12, 6, generator=g)
    alpha = torch.rand(5, 12, generator=g) * (torch.rand(5, 12, generator=g) < 0.5)
    beta = torch.rand(5, 12, generator=g) * (torch.rand(5, 12, generator=g) < 0.5)
    target = torch.randn(5, 6, generator=g)
    delta, chosen = greedy_edit(dec, alpha, beta, target, k=1)
    for n in range(5):
        errs = [float((target[n] - (beta[n, j] - alpha[n, j]) * dec[j]).norm()) for j in range(12)]
        best = min(range(12), key=lambda j: errs[j])
        if errs[best] < float(target[n].norm()):
            assert int(chosen[n, 0]) == best
            assert torch.allclose(delta[n], (beta[n, best] - alpha[n, best]) * dec[best], atol=1e-6)


def test_f1_is_one_for_an_indicator_feature():
    from evals.supervised import attribute_f1, precision_recall_f1

    attrs = {"IO": ["a", "b", "c", "a", "b", "c", "a", "d"]}
    is_a = torch.tensor([v == "a" for v in attrs["IO"]])
    active = torch.stack([is_a, ~is_a, torch.ones(8, dtype=torch.bool), torch.tensor([1, 0, 0, 0, 0, 0, 0, 0]).bool()], 1)
    p, r, f1 = precision_recall_f1(active, is_a)
    assert f1[0] == 1.0 and p[0] == 1.0 and r[0] == 1.0
    assert f1[1] == 0.0
    # P = 3/8, R = 1, F1 = 2PR/(P+R); the last: P = 1, R = 1/3
    assert abs(float(f1[2]) - 2 * (3 / 8) / (3 / 8 + 1)) < 1e-6
    assert abs(float(f1[3]) - 0.5) < 1e-6
    best = attribute_f1(active, attrs["IO"], max_union=10)
    assert best.f1[0] == 1.0 and best.names[0] == ["a"]
    # feature 1 fires on "not a" = b ∪ c ∪ d: a union of three names scores F1 = 1
    assert best.f1[1] == 1.0 and sorted(best.names[1]) == ["b", "c", "d"]
    # unions are capped: with max_union = 2 the union of three cannot be formed
    assert attribute_f1(active, attrs["IO"], max_union=2).f1[1] < 1.0


def test_sufficiency_necessity_extremes_through_the_model(tiny_lm):
    """Through real patching of a tiny model: â = a gives sufficiency = necessity = 1, â = E[a] necessity 0."""
    from evals.supervised import necessity, patched_logits, site_activations, sufficiency

    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(5, 1000, (12, 10), generator=g)
    pos = torch.full((12,), 7)
    hook = "blocks.1.hook_resid_post"
    answers = torch.randint(5, 1000, (12, 2), generator=g)

    def ld(logits):
        return logits.gather(1, answers[:, :1]).squeeze(1) - logits.gather(1, answers[:, 1:]).squeeze(1)

    a = site_activations(tiny_lm, tokens, [hook], {"END": pos})[(hook, "END")]
    mean = a.mean(0, keepdim=True).expand_as(a)
    clean = ld(patched_logits(tiny_lm, tokens, hook, pos, None))
    abl = ld(patched_logits(tiny_lm, tokens, hook, pos, mean))
    assert (abl - clean).abs().mean() > 1e-3  # the site matters, so the ratios mean something
    for a_hat, suff, nec in ((a, 1.0, 1.0), (mean, None, 0.0)):
        ld_suff = ld(patched_logits(tiny_lm, tokens, hook, pos, a_hat))
        ld_nec = ld(patched_logits(tiny_lm, tokens, hook, pos, mean + (a - a_hat)))
        if suff is not None:
            assert abs(sufficiency(ld_suff, clean) - suff) < 1e-4
        assert abs(necessity(ld_nec, clean, abl) - nec) < 1e-4


def test_any_hook_point_per_head_attention_output(tiny_lm):
    """A per-head hook ([b, T, heads, d_head]) reads as one flat vector per prompt and patches back exactly."""
    from evals.supervised import patched_logits, site_activations

    tokens = torch.randint(5, 1000, (4, 9), generator=torch.Generator().manual_seed(4))
    pos = torch.tensor([8, 7, 8, 3])
    hook = "blocks.1.attn.hook_z"
    a = site_activations(tiny_lm, tokens, [hook], {"p": pos})[(hook, "p")]
    assert a.shape == (4, 48)  # 4 heads x 12
    clean = patched_logits(tiny_lm, tokens, None, pos, None)
    same = patched_logits(tiny_lm, tokens, hook, pos, a)
    assert torch.allclose(clean, same, atol=1e-5)
    moved = patched_logits(tiny_lm, tokens, hook, pos, a + 5.0)
    assert not torch.allclose(clean, moved, atol=1e-3)
