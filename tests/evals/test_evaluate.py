"""`evaluate` end to end on a real tiny harvest: every section present, consistent with its parts, saved atomically."""

from __future__ import annotations

import json

import pytest
import torch

from evals import EvalResult, cache_pass, evaluate
from harvesting import CacheReader

from .conftest import HOOK, identity_sae, make_sae


def test_evaluate_reports_every_section(tiny_cache, tiny_lm, tmp_path) -> None:
    sae = make_sae(seed=2)
    r = evaluate(sae, tiny_cache, tiny_lm, ce_contexts=4, batch_contexts=2, progress=False, batch_size=256)
    assert isinstance(r, EvalResult)
    reader = CacheReader(tiny_cache)
    assert r.reconstruction["tokens"] == reader.num_rows("heldout", 0.1)  # the SAE's own held-out fraction
    assert 0 < r.reconstruction["fvu"] and r.reconstruction["l0"] == pytest.approx(8.0)
    assert r.spliced["contexts"] == 4 and abs(r.spliced["ce_error_diff"]) < 1e-5  # float32 rounding only
    assert r.spliced["definition"]["exclude_special_tokens_from_reconstruction"] is True
    assert {"ce_zero", "ce_mean", "kl_sae", "ce_loss_score", "kl_div_score"} <= set(r.spliced)
    assert r.health["num_features"] == 96 and 0 <= r.health["dead_pct"] <= 100
    assert "mean_max_decoder_cos" in r.weights
    text = str(r)
    for label in ("CE loss score", "KL div score", "FVU", "L0", "dead features %"):
        assert label in text
    assert "<table>" in r._repr_html_() and "<svg" in r._repr_html_()
    path = r.save(tmp_path)
    data = json.loads(path.read_text())
    assert data["reconstruction"]["fvu"] == r.reconstruction["fvu"] and data["format"] == "sae-workbench-eval"
    assert (tmp_path / "eval_features.safetensors").is_file()
    assert not list(tmp_path.glob(".*.tmp"))


def test_identity_sae_reconstructs_perfectly_on_the_cache(tiny_cache) -> None:
    res = cache_pass(identity_sae(), CacheReader(tiny_cache), HOOK, heldout_fraction=0.1, batch_size=100)
    s = res.reconstruction.summary()
    assert s["fvu"] == pytest.approx(0.0, abs=1e-10) and s["cossim"] == pytest.approx(1.0)
    assert s["relative_reconstruction_bias"] == pytest.approx(1.0) and s["l2_ratio"] == pytest.approx(1.0)


def test_cache_pass_densities_match_a_dense_reference(tiny_cache) -> None:
    sae = make_sae(seed=4)
    reader = CacheReader(tiny_cache)
    res = cache_pass(sae, reader, HOOK, split="all", batch_size=333)
    x = torch.cat([reader.load_shard(i, [HOOK])[HOOK] for i in range(len(reader.shards))])
    dense = sae.encode_dense(x).detach()
    torch.testing.assert_close(res.features.density, (dense != 0).double().mean(0))
    torch.testing.assert_close(res.mean_activation, x.mean(0), rtol=1e-5, atol=1e-6)


def test_unknown_option_is_named(tiny_cache) -> None:
    from workbench.errors import WorkbenchError

    with pytest.raises(WorkbenchError, match="ce_contxts"):
        evaluate(make_sae(), tiny_cache, "none", ce_contxts=3)


def test_a_saelens_export_evaluates_like_the_original(tiny_cache, tmp_path) -> None:
    """Foreign formats come in through saes.formats: the same SAE saved as SAELens gives the same metrics."""
    from saes import export_saelens

    sae = make_sae(seed=6)
    export_saelens(sae, tmp_path / "saelens")
    a = evaluate(sae, tiny_cache, "none", probing=False, progress=False, heldout_fraction=0.1)
    b = evaluate(tmp_path / "saelens", tiny_cache, "none", probing=False, progress=False, heldout_fraction=0.1)
    for k in ("fvu", "l0", "cossim"):
        assert b.reconstruction[k] == pytest.approx(a.reconstruction[k], rel=1e-5)
    assert b.health["dead"] == a.health["dead"] and b.sae["dir"] == str(tmp_path / "saelens")
