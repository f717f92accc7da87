"""Several SAEs at one hook spliced in one stacked pass: each gets the result its own pass gives, and the
SAE-independent variants (clean, zero, mean) run once per context instead of once per SAE."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from evals import cache_contexts, spliced_losses
from harvesting import CacheReader
from saes import save_sae
from workbench.cli import main

from .conftest import HOOK, identity_sae, make_sae


@pytest.fixture(scope="module")
def contexts(tiny_cache):
    return list(cache_contexts(CacheReader(tiny_cache), HOOK, heldout_fraction=0.1, max_contexts=6, batch_contexts=3))


@pytest.fixture
def row_counter(monkeypatch):
    """Counts the activation rows that pass the splice hook: one row per variant per context."""
    import evals.splice as splice

    rows = []
    real = splice.replacing

    @contextmanager
    def counting(lm, hook, fn):
        def wrapped(act, site):
            rows.append(act.shape[0])
            return fn(act, site)
        with real(lm, hook, wrapped):
            yield lm

    monkeypatch.setattr(splice, "replacing", counting)
    return rows


def _close(got, want, path=""):
    """Every number equal within rel 1e-6: the stacked batch has more rows than a one-SAE batch, so the
    matmuls may block differently and the last float32 bits of a logit can differ."""
    if isinstance(want, dict):
        assert set(got) == set(want), path
        for k in want:
            _close(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-6, abs=1e-9), path
    else:
        assert got == want, path


def test_many_equals_one_at_a_time(tiny_lm, contexts) -> None:
    from evals.splice import spliced_losses_many

    saes = [make_sae(seed=3), identity_sae(), make_sae(num_features=64, k=4, seed=9)]
    mean = torch.randn(48, generator=torch.Generator().manual_seed(1))
    got = spliced_losses_many(tiny_lm, saes, HOOK, contexts, mean=mean, n_resamples=200, seed=4)
    assert len(got) == 3
    for sae, g in zip(saes, got):
        want = spliced_losses(tiny_lm, sae, HOOK, contexts, mean=mean, n_resamples=200, seed=4)
        _close(g, want)
    assert got[0]["ce_sae"] != got[2]["ce_sae"]  # each SAE's own splice, not one SAE's three times
    assert got[1]["ce_loss_score"] == pytest.approx(1.0, abs=1e-5)


def test_many_runs_the_shared_variants_once(tiny_lm, contexts, row_counter) -> None:
    from evals.splice import spliced_losses_many

    n_ctx = sum(cb.tokens.shape[0] for cb in contexts)
    spliced_losses_many(tiny_lm, [make_sae(seed=s) for s in range(3)], HOOK, contexts, mean=torch.zeros(48))
    assert sum(row_counter) == (3 + 2 * 3) * n_ctx  # clean, zero, mean once; sae and error per SAE
    row_counter.clear()
    spliced_losses_many(tiny_lm, [make_sae(seed=s) for s in range(3)], HOOK, contexts, error_term=False)
    assert sum(row_counter) == (2 + 3) * n_ctx  # no mean, no error: clean, zero, one sae row per SAE


def test_cli_several_saes_at_one_hook_share_the_pass(tiny_cache, tiny_model_dir, tmp_path, row_counter) -> None:
    """`sae eval --sae A B` writes the eval.json numbers each SAE gets alone, from 3 + 2*2 rows per context."""
    run = tmp_path / "run"
    save_sae(make_sae(num_features=96, k=4, seed=1), run / "a")
    save_sae(make_sae(num_features=64, k=6, seed=2), run / "b")
    common = ["--cache", str(tiny_cache), "--model", str(tiny_model_dir), "--ce-contexts", "4", "--no-progress",
              "--batch-size", "512", "--no-probing"]
    assert main(["eval", "--sae", str(run / "a"), str(run / "b"), "--out", str(tmp_path / "both"), *common]) == 0
    assert sum(row_counter) == (3 + 2 * 2) * 4
    for name in ("a", "b"):
        assert main(["eval", "--sae", str(run / name), "--out", str(tmp_path / name), *common]) == 0
        both = json.loads(Path(tmp_path / "both" / name / "eval.json").read_text())
        alone = json.loads(Path(tmp_path / name / name / "eval.json").read_text())
        assert both["spliced"]["contexts"] == 4
        _close(both["spliced"], alone["spliced"])
        _close(both["reconstruction"], alone["reconstruction"])


def test_eight_saes_at_vocab_49152_fit_the_logits_budget() -> None:
    """The reference suite's case (8 SAEs, vocab 49152, 128-token contexts): the SAEs go in groups and each pass's
    float32 logits (and the log-probs and a temporary, as large) stay within 1 GiB on a CPU, 8 GiB on CUDA,
    while the rows per context stay below one 5-row pass per SAE."""
    from types import SimpleNamespace

    from evals.evaluate_splice import _auto_batch_contexts, _chunks, max_group
    from evals.splice import stacked_rows

    lm = SimpleNamespace(bridge=SimpleNamespace(cfg=SimpleNamespace(d_vocab=49152)))
    for device, gib in ((torch.device("cpu"), 1), (torch.device("cuda"), 8)):
        groups = _chunks(list(range(8)), max_group(lm, 128, device, has_mean=True, error_term=True))
        assert sorted(i for g in groups for i in g) == list(range(8))
        for g in groups:
            rows = stacked_rows(len(g))
            assert rows == 3 + 2 * len(g)
            bc = _auto_batch_contexts(lm, 128, rows, device)
            assert bc * rows * 128 * 49152 * 4 * 3 <= gib * 2**30
        assert sum(stacked_rows(len(g)) for g in groups) < 5 * 8
