"""Consistency steering (LF-Steering) without a model: labels, contrast, template filter, the shift, the probe.

The planted data is built in the paper's own terms: a fact's paraphrases are consistent when their
answers name the same entity; a *consistency feature* is high on the paraphrases that agree with
the fact's other answers; a *template feature* fires on one template, which happens to be the one
that most often disagrees (so a contrast of pairs alone would pick it); a *fact feature* varies
only between facts, whose consistency rates differ (so a contrast pooled across facts would pick it).
"""

from __future__ import annotations

import numpy as np
import torch

from steering.consistency import (
    CANDIDATES,
    TEMPLATES,
    FiringShift,
    answer_entity,
    consistency_contrast,
    fact_consistency,
    known_facts,
    layer_probe,
    select_features,
    template_eta2,
)

CONS, TEMPLATE, FACT = 3, 5, 7


def planted(n_facts: int = 40, n_templates: int = 8, f: int = 20, seed: int = 0):
    g = np.random.default_rng(seed)
    fact, template, entity, rows = [], [], [], []
    for i in range(n_facts):
        p_odd = 0.1 + 0.5 * (i % 2)  # facts differ in how often their paraphrases disagree
        for t in range(n_templates):
            odd = t == n_templates - 1 or g.random() < p_odd
            fact.append(i)
            template.append(t)
            entity.append(f"wrong{g.integers(3)}" if odd else "right")
            z = np.where(g.random(f) < 0.3, g.exponential(1.0, f), 0.0)  # sparse non-negative noise
            z[CONS] = (0.6 if not odd else 0.4) + 0.2 * g.random()  # a weaker signal than the template
            z[TEMPLATE] = 3.0 if t == n_templates - 1 else 0.0
            z[FACT] = 2.0 * (i % 2) + 0.5
            rows.append(z)
    return torch.tensor(np.array(rows)), fact, template, entity


def test_planted_consistency_feature_is_found_and_template_feature_ignored():
    codes, fact, template, entity = planted()
    sel = select_features(codes, fact, template, entity, 3, max_eta2=0.5, min_firing=0.05)
    assert sel["features"][0] == CONS and sel["sign"][0] > 0
    assert TEMPLATE not in sel["features"] and FACT not in sel["features"]
    eta = template_eta2(codes, template)
    assert eta[TEMPLATE] > 0.99 and eta[CONS] < 0.5
    # the filter is what removes the template feature: without it, it is chosen, with the largest contrast
    unfiltered = select_features(codes, fact, template, entity, 3, max_eta2=1.0, min_firing=0.05)
    assert TEMPLATE in unfiltered["features"]
    assert max(abs(c) for c in unfiltered["contrast"]) == abs(unfiltered["contrast"][unfiltered["features"].index(TEMPLATE)])
    # within facts, a feature that only tells facts apart has no contrast at all
    mean, _, n = consistency_contrast(codes, fact, entity)
    assert abs(float(mean[FACT])) < 1e-9 and n == 40


def test_pooling_across_facts_would_pick_the_fact_feature():
    """The within-fact design matters: pairs pooled over facts make the fact feature look like consistency."""
    codes, fact, _, entity = planted()
    cons, inc = [], []
    for i in range(len(fact)):
        for j in range(i + 1, len(fact)):
            if fact[i] == fact[j]:
                (cons if entity[i] == entity[j] else inc).append((codes[i] + codes[j]) / 2)
    pooled = torch.stack(cons).mean(0) - torch.stack(inc).mean(0)
    assert abs(float(pooled[FACT])) > 0.1


def test_labels_are_agreement_on_the_answer_entity():
    known = ("Paris", "New Delhi", "Delhi", "London")
    assert answer_entity(" Paris, the city of light", known) == "paris"
    assert answer_entity(" the city of New Delhi.", known) == "new delhi"
    assert answer_entity(" a city called Delhi", known) == "delhi"
    assert answer_entity(" located on the river, Bogota is", known) == "bogota"
    assert answer_entity(" the largest city", known) == "the"
    # agreement, not correctness: three wrong-but-equal answers are consistent
    assert fact_consistency(["lyon", "lyon", "lyon"]) == 1.0
    assert fact_consistency(["paris", "lyon", "paris"]) == 1 / 3
    assert fact_consistency(["", ""]) == 0.0


class _TinySAE:
    """A one-token ReLU SAE on the identity: code = relu(x), decode = code (W_dec = I)."""

    def __init__(self, d: int) -> None:
        self.W_dec = torch.eye(d)
        self.num_features = d
        self.cfg = type("C", (), {"hook": "h"})()

    def encode(self, x):
        from saes.kernels import SparseCodes

        z = x.relu()
        vals, idx = z.topk(z.shape[1], dim=1)
        return SparseCodes.from_topk(vals, idx, z.shape[1])


def test_shift_touches_only_firing_features_and_never_goes_below_zero():
    sae = _TinySAE(4)
    iv = FiringShift(sae, {0: 1.0, 1: -5.0, 2: 0.5})
    x = torch.tensor([[2.0, 3.0, 0.0, 1.0], [-1.0, 0.5, 0.0, -2.0]])
    new = iv.new_codes(torch.tensor([[2.0, 3.0, 0.0], [0.0, 0.5, 0.0]]))
    assert torch.equal(new, torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    d = iv.delta(x.unsqueeze(0), None).squeeze(0)
    assert torch.equal(d, torch.tensor([[1.0, -3.0, 0.0, 0.0], [0.0, -0.5, 0.0, 0.0]]))


def test_layer_probe_prefers_the_layer_that_carries_consistency():
    codes, fact, _, entity = planted(n_facts=10, f=12)
    g = torch.Generator().manual_seed(1)
    noise = [torch.randn(3, 12, generator=g) for _ in range(len(fact))]
    signal = [torch.randn(3, 12, generator=g) for _ in range(len(fact))]
    for i, r in enumerate(signal):  # one direction carries the consistency feature, the rest is noise
        r[:, 0] += 4.0 * (entity[i] == "right")
    auc = layer_probe({"noise": noise, "signal": signal}, fact, entity)
    assert auc["signal"] > 0.75 and auc["noise"] < 0.65


def test_fact_set_is_built_from_what_the_model_knows():
    assert len(CANDIDATES) >= 50 and len({c for c, _ in CANDIDATES}) == len(CANDIDATES) and len(TEMPLATES) == 8
    rows = [{"fact": "A", "expected": "X", "template": 0, "correct": True},
            {"fact": "A", "expected": "X", "template": 1, "correct": False},
            {"fact": "B", "expected": "Y", "template": 0, "correct": False},
            {"fact": "B", "expected": "Y", "template": 1, "correct": True}]
    assert known_facts(rows) == [("A", "X")]
