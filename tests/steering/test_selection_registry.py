"""The selectors as one registry: each runs on the tiny model, the sweep iterates them (rise is the sae
method as it always was), a bad name is one line; clamping and max-activation units are recorded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from steering import Positions, add_feature, clamp_features, generate, measure_stats
from steering.selection import SELECTORS, SelectionContext, select_direction
from steering.vectors import concept_feature
from workbench.errors import WorkbenchError

POS = ["the sea and the waves", "a boat on the ocean", "fish swim in the deep sea"]
NEG = ["the tax form", "an office chair", "the budget meeting"]


def _ctx(tiny_lm, tiny_sae):
    from steering.reading import hook_activations

    from .conftest import HOOK

    pos, neg = hook_activations(tiny_lm, POS, HOOK), hook_activations(tiny_lm, NEG, HOOK)
    return SelectionContext(tiny_lm, tiny_sae, pos, neg, [2000, 2100, 3000], ["a dog", "hello there"],
                            n_candidates=4, mean_norm=1.0)


def test_every_selector_gives_a_direction_and_rise_is_the_old_pick(tiny_lm, tiny_sae):
    ctx = _ctx(tiny_lm, tiny_sae)
    assert set(SELECTORS) == {"rise", "output", "concept_output", "gradient", "sae_ts"}
    for name in SELECTORS:
        sel = select_direction(name, ctx)
        assert sel.vector.shape == (tiny_sae.d_in,) and torch.isfinite(sel.vector).all(), name
        if sel.feature is not None:
            torch.testing.assert_close(sel.vector, tiny_sae.W_dec[sel.feature].float())
    f, rise = concept_feature(tiny_sae, ctx.pos, ctx.neg)
    assert select_direction("rise", ctx).feature == f
    assert len(ctx.pool()) <= 8 and len(set(ctx.pool().tolist())) == len(ctx.pool())
    with pytest.raises(WorkbenchError, match="'bogus'.*rise, output, concept_output, gradient, sae_ts"):
        select_direction("bogus", ctx)


def test_clamp_and_add_in_units_of_max_activation_are_recorded(tiny_lm, tiny_sae):
    stats = measure_stats(tiny_lm, ["the cat sat on the mat", "hello there, how are you"], tiny_sae.cfg.hook, tiny_sae)
    f = int(stats.max.argmax())
    add = add_feature(tiny_sae, f, 3.0, unit="max", stats=stats)
    assert add.coeff == pytest.approx(3.0 * float(stats.max[f]))
    d = add.describe()
    assert d["unit"] == "max" and d["per_unit"] == pytest.approx(float(stats.max[f])) and d["coeff_in_unit"] == 3.0
    clamp = clamp_features(tiny_sae, {f: 5.0}, unit="max", stats=stats, positions=Positions("all"))
    assert clamp.edits[0].value == pytest.approx(5.0 * float(stats.max[f]))
    # through the SAE: encode, set feature f, decode, add back the error term x - decode(encode(x))
    x = torch.randn(6, tiny_sae.d_in)
    from workbench.hooks import HookSite

    y = clamp.apply(x.unsqueeze(0), HookSite("h", 0, torch.arange(6)))[0]
    with torch.no_grad():
        codes = tiny_sae.encode_dense(x)
        err = x - (codes @ tiny_sae.W_dec + tiny_sae.b_dec)
        codes[:, f] = 5.0 * float(stats.max[f])
        ref = codes @ tiny_sae.W_dec + tiny_sae.b_dec + err
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    gen = generate(tiny_lm, ["a dog"], [clamp], max_new_tokens=2)
    assert gen.interventions[0]["edits"][0]["unit"] == "max"
    assert gen.interventions[0]["edits"][0]["value_in_unit"] == 5.0


def test_sweep_iterates_the_selectors(tiny_lm, tiny_sae, tmp_path):
    from steering import SweepConfig, run_sweep

    concept = tmp_path / "sea.json"
    concept.write_text(json.dumps({"name": "sea", "positive": POS, "negative": NEG, "target_words": ["sea", "ocean"],
                                   "judge_positive": ["the tide", "waves"], "judge_negative": ["a desk", "an invoice"]}))
    cfg = SweepConfig(sae="unused", out=str(tmp_path / "out"), concepts=(str(concept),), coeffs=(0.0, 1.0),
                      prompts=2, max_new_tokens=2, neutral=2, methods=("sae", "diffmean"),
                      select=("rise", "gradient", "concept_output"), candidates=4)
    summary = run_sweep(cfg, tiny_lm, tiny_sae)
    c = summary["concepts"]["sea"]
    assert set(c["methods"]) == {"none", "sae", "sae_gradient", "sae_concept_output", "diffmean"}
    assert c["selected"]["sae"]["feature"] == c["feature"]  # rise is the sae method's feature, as before
    table = (Path(cfg.out) / "table.md").read_text()
    assert f"sae_gradient (feature {c['selected']['sae_gradient']['feature']})" in table
    with pytest.raises(WorkbenchError, match="feature selector 'bogus'|selector 'bogus'"):
        SweepConfig(sae="x", select=("bogus",))


def test_cli_select_bad_value_is_one_line_exit_2():
    sae_bin = str(Path(sys.executable).parent / "sae")
    for verb in (["steer", "--sae", "x", "--prompt", "hi", "--concept", "ocean", "--coeff", "1"],
                 ["steer-sweep", "--sae", "x"]):
        r = subprocess.run([sae_bin, *verb, "--select", "bogus"], capture_output=True, text=True)
        assert r.returncode == 2
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "bogus" in lines[0] and "concept_output" in lines[0], r.stderr
    r = subprocess.run([sae_bin, "steer", "--help"], capture_output=True, text=True)
    assert "rise, output, concept_output, gradient, sae_ts" in " ".join(r.stdout.split())


@pytest.mark.parametrize("selector", ["gradient", "sae_ts"])
def test_cli_steer_select_prints_the_pick_and_the_steered_positions(saved_tiny, tmp_path, selector):
    concept = tmp_path / "sea.json"
    concept.write_text(json.dumps({"name": "sea", "positive": POS, "negative": NEG, "target_words": ["sea", "ocean"]}))
    sae_bin = str(Path(sys.executable).parent / "sae")
    r = subprocess.run([sae_bin, "steer", "--sae", str(saved_tiny["good"]), "--model", str(saved_tiny["model"]),
                        "--prompt", "a dog", "--concept", str(concept), "--select", selector, "--coeff", "0.5",
                        "--unit", "norm", "--max-new-tokens", "3"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"selected by {selector}:" in r.stdout
    assert "steered positions:" in r.stdout
