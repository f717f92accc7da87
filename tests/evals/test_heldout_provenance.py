"""What `evaluate` calls held-out must be rows the SAE never trained on, and the cache must be its own.

The SAE's cfg.json records its training data (`train`: held-out fraction, cache path, and where
the trainer writes it the cache's content hash; `input_scale`: the cache's norm scale when it
trained with --normalize). These tests give an SAE such records by hand and check what
`evaluate` measures on, what it refuses, and what it says.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

from evals import EvalConfig, evaluate
from harvesting import CacheReader
from workbench.config import add_config_args, config_from_args
from workbench.errors import WorkbenchError

from .conftest import HOOK, make_sae

FAST = dict(probing=False, progress=False, batch_size=256)


def _trained_on(reader: CacheReader, heldout_fraction: float, *, cache: str | None = None, scale: float | None = None,
                identity: str | None = None, seed: int = 0):
    """An SAE whose cfg.json says it was trained (with --normalize) on `cache` (default: `reader`'s)."""
    sae = make_sae(seed=seed)
    train = {"heldout_fraction": heldout_fraction, "normalize": True, "cache": cache or str(reader.path)}
    if identity is not None:
        train["cache_identity"] = identity
    sae.cfg = dataclasses.replace(sae.cfg, train=train,
                                  input_scale=reader.norm_scale(HOOK) if scale is None else scale)
    return sae


def test_an_explicit_zero_fraction_is_not_replaced_by_the_saes(tiny_cache) -> None:
    """`heldout_fraction=0` means no held-out rows, not "use the SAE's fraction" (nor 1%)."""
    with pytest.raises(WorkbenchError, match="heldout_fraction 0"):
        evaluate(make_sae(heldout_fraction=0.1), tiny_cache, "none", heldout_fraction=0.0, **FAST)


def test_the_flag_tells_not_given_from_zero() -> None:
    p = argparse.ArgumentParser()
    add_config_args(p, EvalConfig)
    assert config_from_args(EvalConfig, p.parse_args([])).heldout_fraction is None
    assert config_from_args(EvalConfig, p.parse_args(["--heldout-fraction", "0"])).heldout_fraction == 0.0
    assert config_from_args(EvalConfig, p.parse_args(["--heldout-fraction", "0.05"])).heldout_fraction == 0.05


def test_an_sae_that_saw_every_row_is_refused_unless_a_fraction_is_asked_for(tiny_cache, tmp_path) -> None:
    reader = CacheReader(tiny_cache)
    sae = _trained_on(reader, 0.0)
    with pytest.raises(WorkbenchError, match="trained on every row"):
        evaluate(sae, reader, "none", **FAST)
    r = evaluate(sae, reader, "none", heldout_fraction=0.1, **FAST)  # asked for: measured, and labelled
    assert r.reconstruction["tokens"] == reader.num_rows("heldout", 0.1)
    assert r.data["trained_on_rows"] == r.reconstruction["tokens"] and r.data["trained_on_pct"] == 100.0
    assert any("trained on" in n for n in r.notes)
    assert "trained on" in str(r).split("note:")[0]  # in the table itself, not only in a note
    saved = json.loads(r.save(tmp_path).read_text())
    assert saved["data"]["trained_on_rows"] == r.reconstruction["tokens"]


def test_a_fraction_above_the_saes_counts_the_rows_it_trained_on(tiny_cache) -> None:
    reader = CacheReader(tiny_cache)
    sae = _trained_on(reader, 0.05)
    own = evaluate(sae, reader, "none", **FAST)
    assert own.settings["heldout_fraction"] == 0.05 and own.data["trained_on_rows"] == 0
    assert not any("trained on" in n for n in own.notes)
    wider = evaluate(sae, reader, "none", heldout_fraction=0.2, **FAST)
    seen = reader.num_rows("heldout", 0.2) - reader.num_rows("heldout", 0.05)
    assert seen > 0 and wider.data["trained_on_rows"] == seen
    assert wider.data["trained_on_pct"] == pytest.approx(100 * seen / reader.num_rows("heldout", 0.2))
    assert any("trained on" in n for n in wider.notes)


def test_another_cache_than_the_training_one_is_warned(tiny_cache) -> None:
    reader = CacheReader(tiny_cache)
    other_scale = 0.5 * reader.norm_scale(HOOK)
    r = evaluate(_trained_on(reader, 0.1, cache="/elsewhere/acts", scale=other_scale), reader, "none", **FAST)
    assert r.data["training_cache"]["verdict"] == "different"
    assert any("not the cache the SAE was trained on" in n for n in r.notes)

    # a content hash decides both ways, whatever the paths say
    moved = evaluate(_trained_on(reader, 0.1, cache="/elsewhere/acts", identity=reader.identity), reader, "none",
                     **FAST)
    assert moved.data["training_cache"]["verdict"] == "same"
    assert not any("trained on" in n for n in moved.notes)
    replaced = evaluate(_trained_on(reader, 0.1, identity="0" * 64), reader, "none", **FAST)
    assert replaced.data["training_cache"]["verdict"] == "different"

    # the same cache, known by its norm scale (no hash recorded): no warning
    same = evaluate(_trained_on(reader, 0.1, cache="/elsewhere/acts"), reader, "none", **FAST)
    assert same.data["training_cache"]["verdict"] == "same" and not same.notes

    # an SAE that records nothing about its data (a foreign format): said so
    bare = make_sae()
    bare.cfg = dataclasses.replace(bare.cfg, train={})
    r = evaluate(bare, reader, "none", **FAST)
    assert r.data["training_cache"]["verdict"] == "unknown" and r.settings["heldout_fraction"] == 0.01
    assert any("cannot tell" in n for n in r.notes)
