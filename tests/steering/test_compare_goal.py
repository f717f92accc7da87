"""benchmarks/steering_compare.py's decisions, on hand-made numbers: the coefficient rule (largest
objective within the KL budget, 0 always admitted) and the goal check (best SAE selector vs DiffMean
and the random median, Spearman of its own score), each against values worked out by hand."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import steering_compare as sc  # noqa: E402

GRID = [{"coeff": 0.0, "kl": 0.0, "objective": -9.0}, {"coeff": 0.1, "kl": 0.05, "objective": -8.0},
        {"coeff": 0.2, "kl": 0.2, "objective": -6.5}, {"coeff": 0.4, "kl": 0.6, "objective": -3.0},
        {"coeff": 0.6, "kl": math.nan, "objective": -1.0}]


@pytest.mark.parametrize("budget,want", [(0.25, 0.2), (0.1, 0.1), (0.01, 0.0), (1.0, 0.4)])
def test_coefficient_is_the_best_objective_within_budget(budget, want):
    assert sc.pick_coeff(GRID, budget) == want


def test_a_coefficient_worse_than_none_is_not_chosen():
    grid = [{"coeff": 0.0, "kl": 0.0, "objective": -5.0}, {"coeff": 0.1, "kl": 0.05, "objective": -6.0}]
    assert sc.pick_coeff(grid, 0.25) == 0.0


def _row(lp: float, hit: float) -> dict:
    g = lambda x: {"estimate": x, "low": x - 1, "high": x + 1, "n": 4}  # noqa: E731
    return {"target_logprob_gain": g(lp), "target_hit_gain": g(hit)}


def test_goal_check_against_hand_computed_ratios():
    a = argparse.Namespace(selectors=["rise", "output"])
    # two concepts; DiffMean gains lp 2 and 4 (mean 3), hit 0.5 and 0.3 (mean 0.4)
    # output: lp 3 and 2 (mean 2.5 -> best; ratio 2.5/3), hit 0.4 and 0.2 (mean 0.3 -> ratio 0.75)
    # random median lp 1 and 2.5: output beats it on concept a only (3 > 1, 2 < 2.5)
    summ = {}
    for c, (dm, out, rise, rnd, rho) in {"a": ((2, .5), (3, .4), (1, .1), (1, 0), 0.5),
                                          "b": ((4, .3), (2, .2), (0, 0), (2.5, 0), 0.2)}.items():
        summ[c] = {"budgets": {"0.25": {"diffmean": _row(*dm), "sae_output": _row(*out), "sae_rise": _row(*rise),
                                        "random_median": _row(*rnd)}},
                   "spearman": {"output": rho, "rise": -1.0, "concept_output": 0.0, "gradient": 0.0},
                   "spearman_n": 16}
    lines, res = sc.goal_check(a, summ, "0.25")
    assert res["best"] == "sae_output"
    assert res["lp_ratio"] == pytest.approx(2.5 / 3)
    assert res["hit_ratio"] == pytest.approx(0.3 / 0.4)
    assert res["beats_random"] == 0.5
    assert res["spearman"] == pytest.approx(0.35) and res["score"] == "output"
    text = "\n".join(lines)
    assert "ratio 0.83 (goal >= 0.8: met)" in text and "ratio 0.75 (goal >= 0.8: missed)" in text
    assert "1/2 concepts (goal >= 75%: missed)" in text and "0.35 (goal >= 0.3: met)" in text


def test_goal_check_also_names_the_method_chosen_without_the_held_out_prompts():
    """Picking the best of five selectors by their held-out gain flatters the winner; the method with the
    largest selection-prompt objective at its chosen coefficient is picked blind to the held-out prompts."""
    a = argparse.Namespace(selectors=["rise", "output"])
    summ = {}
    # held-out: output wins (lp 3, 3 vs rise 2, 2); selection prompts: rise has the larger objective (-4, -5
    # vs -6, -6), so the blind choice is rise, whose ratios are 2/4 = 0.5 (lp) and 0.2/0.4 = 0.5 (hit)
    for c in ("a", "b"):
        dm, out, rise, rnd = _row(4, .4), _row(3, .3), _row(2, .2), _row(0, 0)
        out["objective"], rise["objective"] = -6.0, (-4.0 if c == "a" else -5.0)
        summ[c] = {"budgets": {"0.25": {"diffmean": dm, "sae_output": out, "sae_rise": rise, "random_median": rnd}},
                   "spearman": {"output": 0.0, "rise": 0.0, "concept_output": 0.0, "gradient": 0.0},
                   "spearman_n": 16}
    lines, res = sc.goal_check(a, summ, "0.25")
    assert res["best"] == "sae_output" and res["blind"] == "sae_rise"
    assert res["blind_lp_ratio"] == pytest.approx(0.5) and res["blind_hit_ratio"] == pytest.approx(0.5)
    assert "**sae_rise**" in "\n".join(lines)


def _prompts(dm: list[float], m: list[float]) -> dict:
    row = lambda g: {"target_logprob_gains": g, "target_hit_gains": g,  # noqa: E731
                     "target_logprob_gain": {"estimate": sum(g) / len(g)}, "target_hit_gain": {"estimate": sum(g) / len(g)}}
    return {"budgets": {"0.25": {"diffmean": row(dm), "sae_output": row(m)}}}


def test_ratio_interval_is_paired_over_prompts():
    """A method that gains exactly half of DiffMean on every prompt has ratio 0.5 under every resample of
    the prompts, however much the prompts differ; an unpaired bootstrap would give a wide interval."""
    import numpy as np

    rng = np.random.default_rng(1)
    summ = {}
    for c in ("a", "b", "c"):
        dm = list(rng.uniform(0.2, 3.0, size=24))
        summ[c] = _prompts(dm, [0.5 * x for x in dm])
    lo, hi = sc.ratio_interval(summ, "0.25", "sae_output", "target_logprob")
    assert lo == pytest.approx(0.5) and hi == pytest.approx(0.5)


def test_ratio_interval_covers_the_estimate_and_narrows_with_prompts():
    import numpy as np

    def widths(n: int) -> tuple[float, float, float]:
        rng = np.random.default_rng(n)
        summ = {c: _prompts(list(rng.normal(1.0, 1.0, n)), list(rng.normal(0.6, 1.0, n))) for c in ("a", "b")}
        est = (np.mean([np.mean(summ[c]["budgets"]["0.25"]["sae_output"]["target_logprob_gains"]) for c in summ])
               / np.mean([np.mean(summ[c]["budgets"]["0.25"]["diffmean"]["target_logprob_gains"]) for c in summ]))
        lo, hi = sc.ratio_interval(summ, "0.25", "sae_output", "target_logprob")
        return lo, est, hi

    lo, est, hi = widths(400)
    assert lo < est < hi and hi - lo < 0.4
    lo8, _, hi8 = widths(8)
    assert hi8 - lo8 > 2 * (hi - lo)


def test_ratio_interval_is_nan_when_diffmean_gain_is_not_surely_positive():
    summ = {"a": _prompts([1.0, -1.0, 0.5, -0.5], [0.2, 0.1, 0.3, 0.0])}
    assert all(math.isnan(x) for x in sc.ratio_interval(summ, "0.25", "sae_output", "target_logprob"))


def test_goal_summary_has_one_row_per_sae_and_budget():
    a = argparse.Namespace(selectors=["output"], budgets=[0.25], resamples=200)
    summ = {}
    for c in ("a", "b"):
        s = _prompts([2.0, 4.0], [1.0, 2.0])
        s["budgets"]["0.25"]["random_median"] = {"target_logprob_gain": {"estimate": 0.0}, "target_hit_gain": {"estimate": 0.0}}
        s["spearman"], s["spearman_n"] = {"output": 0.4, "rise": 0.0, "concept_output": 0.0, "gradient": 0.0}, 16
        summ[c] = s
    runs = {"big": {"hook": "blocks.8.hook_resid_post", "features": 9216}, "none": {"hook": "h", "features": 1}}
    lines = sc.goal_summary(a, runs, {"big": summ, "none": {}})
    rows = [ln for ln in lines if ln.startswith("| big")]
    assert len(rows) == 1 and not any(ln.startswith("| none") for ln in lines)
    assert "| 9216 | 2 | 0.25 | sae_output | 0.50 [0.50, 0.50] | 0.50 [0.50, 0.50] |" in rows[0]
    assert "| 100% | 0.40 (output) |" in rows[0]


def _size_summ(gains: dict[str, list[float]]) -> dict:
    """Per concept: DiffMean 1.0 on every prompt, sae_gradient the given per-prompt gains (and the blind
    choice: it is the only selector), random median 0."""
    out = {}
    for c, g in gains.items():
        s = _prompts([1.0] * len(g), g)
        s["budgets"]["0.25"]["sae_gradient"] = s["budgets"]["0.25"].pop("sae_output")
        s["budgets"]["0.25"]["sae_gradient"]["objective"] = 0.0
        s["budgets"]["0.25"]["random_median"] = {"target_logprob_gain": {"estimate": 0.0},
                                                 "target_hit_gain": {"estimate": 0.0}}
        s["spearman"], s["spearman_n"] = {"output": 0.0, "rise": 0.0, "concept_output": 0.0, "gradient": 0.3}, 16
        out[c] = s
    return out


def test_larger_sae_is_compared_with_the_smaller_at_its_hook_on_shared_concepts():
    """Every pair at one hook, larger first: more features, or at equal features more training tokens.
    "wide" gains exactly twice "small" on every prompt of the concepts both finished: ratio 2 under every
    paired resample; a concept only "wide" finished is left out (it would pull the ratio up). "data" (same
    width as "small", more tokens) gains 1.5x "small", so "wide" over "data" is 4/3. An SAE at another
    hook is compared with none of them."""
    import numpy as np

    a = argparse.Namespace(selectors=["gradient"], budgets=[0.25], resamples=200)
    rng = np.random.default_rng(0)
    small = {c: list(rng.uniform(0.1, 1.0, 12)) for c in ("a", "b")}
    wide = {c: [2 * x for x in g] for c, g in small.items()} | {"c": [3.0] * 12}
    data = {c: [1.5 * x for x in g] for c, g in small.items()}
    runs = {"small": {"hook": "blocks.8", "features": 4608, "train_tokens": 1_000_000},
            "wide": {"hook": "blocks.8", "features": 9216, "train_tokens": 9_800_000},
            "data": {"hook": "blocks.8", "features": 4608, "train_tokens": 9_800_000},
            "other": {"hook": "blocks.4", "features": 100}}
    summ = {"wide": _size_summ(wide), "small": _size_summ(small), "data": _size_summ(data),
            "other": _size_summ({"a": [1.0] * 12})}
    rows = [ln for ln in sc.same_hook_rows(a, runs, summ) if ln.startswith("| blocks")]
    tail = "| 0.25 | 2 | sae_gradient | sae_gradient |"
    assert rows == [f"| blocks.8 | wide (9216, 9.8M tok) | data (4608, 9.8M tok) {tail} 1.33 [1.33, 1.33] | 1.33 [1.33, 1.33] |",
                    f"| blocks.8 | wide (9216, 9.8M tok) | small (4608, 1.0M tok) {tail} 2.00 [2.00, 2.00] | 2.00 [2.00, 2.00] |",
                    f"| blocks.8 | data (4608, 9.8M tok) | small (4608, 1.0M tok) {tail} 1.50 [1.50, 1.50] | 1.50 [1.50, 1.50] |"]
    assert sc.same_hook_rows(a, {"other": runs["other"]}, {"other": summ["other"]}) == []


def test_train_tokens_come_from_the_saved_sae_or_are_zero(tmp_path):
    d = tmp_path / "sae"
    d.mkdir()
    (d / "cfg.json").write_text('{"train": {"tokens": 9797632}}')
    assert sc.sae_train_tokens(str(d)) == 9797632
    assert sc.sae_train_tokens(str(tmp_path / "gone")) == 0
    (d / "cfg.json").write_text("{not json")
    assert sc.sae_train_tokens(str(d)) == 0


def test_larger_vs_smaller_has_no_interval_when_the_smaller_gains_nothing_surely():
    a = argparse.Namespace(selectors=["gradient"], budgets=[0.25], resamples=200)
    runs = {"big": {"hook": "h", "features": 2}, "small": {"hook": "h", "features": 1}}
    summ = {"big": _size_summ({"a": [1.0, 0.5, 0.8, 0.9]}), "small": _size_summ({"a": [0.5, -0.5, 0.4, -0.3]})}
    row = [ln for ln in sc.same_hook_rows(a, runs, summ) if ln.startswith("| h ")][0]
    assert row.endswith("| 32.00 | 32.00 |")  # 0.8 / 0.025, no interval: the smaller's gain is not surely > 0
