"""Choosing the coefficient (on the selection half, under the filters and a KL budget; reported on the
other half), the repetition measures the filter uses, and the probe judge fitted on separate texts."""

from __future__ import annotations

import math
import zlib

import pytest
import torch

from steering.choice import SelectionRule, choose_coeff, select
from steering.measures import compression_ratio, distinct_n

BASE = {"target_logprob": -8.0, "ppl": 4.0, "distinct_2": 0.9, "compression": 1.0}


def _rows(method: str, coeff: float, select_vals: dict, report_vals: dict, kl: float = 0.1) -> list[dict]:
    """Four prompts: 0 and 2 select, 1 and 3 report. Each split's two prompts straddle its given mean
    (-/+ 1 on the score), so a mean over the wrong prompts, or over all four, comes out different."""
    rows = []
    for i in range(4):
        vals = dict(select_vals if i % 2 == 0 else report_vals)
        vals["target_logprob"] += -1.0 if i < 2 else 1.0
        rows.append({"concept": "c", "method": method, "coeff": coeff, "prompt_index": i,
                     "split": "select" if i % 2 == 0 else "report", "text": "", "kl": kl, **vals})
    return rows


def _sweep_rows(cands: dict[float, tuple[dict, dict, float]]) -> list[dict]:
    rows = _rows("none", 0.0, BASE, {**BASE, "target_logprob": -8.5}, kl=0.0)
    for c, (sel, rep, kl) in cands.items():
        rows += _rows("m", c, {**BASE, **sel}, {**BASE, **rep}, kl)
    return rows


def test_select_picks_the_best_coefficient_on_the_select_half_and_reports_the_other_half():
    rows = _sweep_rows({
        0.0: ({}, {"target_logprob": -8.5}, 0.0),
        0.5: ({"target_logprob": -7.0}, {"target_logprob": -6.0}, 0.05),
        1.0: ({"target_logprob": -5.0}, {"target_logprob": -7.5}, 0.1),  # best on select, not on report
        2.0: ({"target_logprob": -6.0}, {"target_logprob": -4.0}, 0.2),
    })
    got = select(rows, "c", ["m"], SelectionRule())
    assert got["m"]["coeff"] == 1.0
    assert got["m"]["target_logprob"] == pytest.approx(-7.5)  # the report half's mean, not the select half's -5
    assert got["m"]["n_prompts"] == 2
    assert got["none"]["target_logprob"] == pytest.approx(-8.5)
    assert got["m"]["kl"] == pytest.approx(0.1)


def test_a_worse_score_is_never_chosen_over_a_better_admitted_one():
    for best in (0.5, 1.0, 2.0):  # the best coefficient anywhere in the grid
        cands = {c: ({"target_logprob": -7.0 + (3.0 if c == best else 0.1 * c)}, {}, 0.1) for c in (0.5, 1.0, 2.0)}
        assert choose_coeff({c: {**BASE, **s, "kl": kl} for c, (s, _, kl) in cands.items()}, BASE,
                            SelectionRule()) == best


def _cands(**over: dict) -> dict[float, dict]:
    base = {0.0: {**BASE, "kl": 0.0}, 0.5: {**BASE, "target_logprob": -7.0, "kl": 0.1},
            1.0: {**BASE, "target_logprob": -6.0, "kl": 0.2}}
    for k, v in over.items():
        base[float(k.replace("c", "").replace("_", "."))] = {**BASE, "kl": 0.2, **v}
    return base


def test_the_filters_keep_out_repetitive_disfluent_and_costly_coefficients():
    rule = SelectionRule(max_kl=0.25)
    assert choose_coeff(_cands(), BASE, rule) == 1.0
    # better score, but perplexity 5x the unsteered one
    assert choose_coeff(_cands(c2_0={"target_logprob": -1.0, "ppl": 20.0}), BASE, rule) == 1.0
    # better score, fluent by perplexity, but it repeats itself: distinct-2 falls to a third
    assert choose_coeff(_cands(c2_0={"target_logprob": -1.0, "distinct_2": 0.3}), BASE, rule) == 1.0
    # ... or compresses far better than the unsteered text
    assert choose_coeff(_cands(c2_0={"target_logprob": -1.0, "compression": 2.5}), BASE, rule) == 1.0
    # better score, over the KL budget (and admitted without one)
    assert choose_coeff(_cands(c2_0={"target_logprob": -1.0, "kl": 0.3}), BASE, rule) == 1.0
    assert choose_coeff(_cands(c2_0={"target_logprob": -1.0, "kl": 0.3}), BASE, SelectionRule()) == 2.0
    assert choose_coeff(_cands(), BASE, SelectionRule(max_kl=0.15)) == 0.5
    # NaN measures (nothing generated) are not admitted
    assert choose_coeff(_cands(c2_0={"target_logprob": -1.0, "ppl": math.nan}), BASE, rule) == 1.0
    assert choose_coeff(_cands(c2_0={"target_logprob": math.nan}), BASE, rule) == 1.0
    # nothing admitted: no steering
    assert choose_coeff({1.0: {**BASE, "target_logprob": -1.0, "kl": 9.0}}, BASE, rule) == 0.0


def test_a_repetitive_coefficient_is_not_reported_even_when_perplexity_passes():
    rows = _sweep_rows({
        0.5: ({"target_logprob": -7.0}, {}, 0.05),
        1.0: ({"target_logprob": -2.0, "ppl": 2.0, "distinct_2": 0.1, "compression": 3.0}, {}, 0.1),
    })
    got = select(rows, "c", ["m"], SelectionRule())
    assert got["m"]["coeff"] == 0.5
    assert "1.0" in got["m"]["rejected"] and "distinct" in got["m"]["rejected"]["1.0"]


def test_nothing_admitted_reports_the_unsteered_text_even_without_a_zero_in_the_grid():
    rows = _sweep_rows({1.0: ({"target_logprob": -2.0, "ppl": 40.0}, {}, 0.1)})
    rows = [r for r in rows if not (r["method"] == "m" and r["coeff"] == 0.0)]
    got = select(rows, "c", ["m"], SelectionRule())
    assert got["m"]["coeff"] == 0.0 and got["m"]["target_logprob"] == pytest.approx(-8.5)


def _distinct_ref(ids: list[int], n: int) -> float:
    """Li et al. 2016 distinct-n, for one text: distinct n-grams over all n-grams."""
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    return len(set(grams)) / len(grams)


def test_distinct_n_and_compression_ratio():
    assert distinct_n([5, 5, 5, 5, 5], 2) == pytest.approx(1 / 4)
    assert distinct_n([1, 2, 3, 4], 2) == 1.0
    assert distinct_n([1, 2, 1, 2, 1, 2, 3], 3) == pytest.approx(_distinct_ref([1, 2, 1, 2, 1, 2, 3], 3))
    assert math.isnan(distinct_n([1], 2))
    varied = "She opened the door and saw a small grey cat asleep on the mat."
    looped = "the sea the sea the sea the sea the sea the sea the sea the sea."
    assert compression_ratio(looped) > 1.5 > compression_ratio(varied)
    # Whisper's definition: raw bytes over zlib-compressed bytes (higher: more repetitive)
    b = looped.encode()
    assert compression_ratio(looped) == pytest.approx(len(b) / len(zlib.compress(b)))
    assert math.isnan(compression_ratio(""))


def test_every_scored_generation_carries_its_repetition(tiny_lm):
    from steering import generate
    from steering.measures import Judge, score_generation

    from .conftest import HOOK

    gen = generate(tiny_lm, ["the cat sat", "hello there"], max_new_tokens=6)
    scores = score_generation(tiny_lm, gen, Judge(HOOK))
    for s, ids, text in zip(scores, gen.new_ids, gen.texts):
        assert s["distinct_2"] == pytest.approx(_distinct_ref(ids, 2))
        assert s["distinct_3"] == pytest.approx(_distinct_ref(ids, 3))
        assert s["compression"] == pytest.approx(compression_ratio(text))


def test_probe_readout_is_sklearns_logistic_regression():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from steering.probe import fit_probe

    g = torch.Generator().manual_seed(0)
    pos, neg = torch.randn(10, 16, generator=g) * 3 + 1.0, torch.randn(12, 16, generator=g) * 3
    probe = fit_probe(pos, neg)
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    x = torch.cat([pos, neg]).double().numpy()
    ref.fit(x, [1] * 10 + [0] * 12)
    test = torch.randn(5, 16, generator=g) * 3
    torch.testing.assert_close(probe.readout(test).double(), torch.tensor(ref.decision_function(test.double().numpy())),
                               atol=1e-4, rtol=1e-4)
    assert probe.n_positive == 10 and probe.n_negative == 12
    assert 0.0 <= probe.loo_accuracy <= 1.0


def test_the_probe_judge_is_fitted_on_texts_no_method_used(tiny_lm, tiny_sae, tmp_path):
    """Two concepts with the same judge texts and different steering texts get the same probe (it reads only
    its own texts) but different DiffMean vectors; and the judge texts are none of the steering texts."""
    from steering import SweepConfig, load_concept
    from steering.sweep import concept_directions

    judge = {"judge_positive": ["the ocean is deep", "ships on the sea", "waves and tides"],
             "judge_negative": ["the tax office", "a contract was signed", "the printer is broken"]}
    a = load_concept(_write(tmp_path / "a.json", {"name": "a", "positive": ["the sea and the waves", "a boat"],
                                                  "negative": ["an office chair", "the tax form"], **judge}))
    b = load_concept(_write(tmp_path / "b.json", {"name": "b", "positive": ["fish swim in the ocean", "the beach"],
                                                  "negative": ["the budget meeting", "he signed it"], **judge}))
    cfg = SweepConfig(sae="unused", concepts=("x",))
    da, ja, fa = concept_directions(tiny_lm, tiny_sae, a, cfg)
    db, jb, fb = concept_directions(tiny_lm, tiny_sae, b, cfg)
    torch.testing.assert_close(ja.probe, jb.probe)
    assert ja.probe_bias == pytest.approx(jb.probe_bias)
    assert not torch.allclose(da["diffmean"], db["diffmean"])
    assert set(fa["probe"]["texts"]) == set(judge["judge_positive"]) | set(judge["judge_negative"])


def test_concepts_hold_out_judge_texts_apart_from_steering_texts(tmp_path):
    from steering import BUILTIN, load_concept

    for name in BUILTIN:
        c = load_concept(name)
        assert len(c.judge_positive) >= 6 and len(c.judge_negative) >= 6
        assert not (set(c.judge_positive) | set(c.judge_negative)) & (set(c.positive) | set(c.negative))
    # a user concept without judge texts: every third pair is held out for the judge, not steered with
    pos, neg = [f"sea sentence {i}" for i in range(9)], [f"office sentence {i}" for i in range(9)]
    c = load_concept(_write(tmp_path / "u.json", {"name": "u", "positive": pos, "negative": neg}))
    assert c.judge_positive == pos[2::3] and c.judge_negative == neg[2::3]
    assert c.positive == [p for i, p in enumerate(pos) if i % 3 != 2]
    assert c.negative == [p for i, p in enumerate(neg) if i % 3 != 2]


def _write(path, d) -> str:
    import json

    path.write_text(json.dumps(d))
    return str(path)
