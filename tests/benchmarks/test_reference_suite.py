"""`benchmarks/reference_suite.py` end to end on a tiny model: harvest, one run per budget, eval, table, plot.

The suite drives the `sae` verbs as subprocesses and then reads the files they wrote, so what can
break is the contract between them (directory layout, summary.json and eval.json keys, resuming);
only a real run of every stage checks that. The tiny random Llama of the eval tests stands in for
smollm2-135m; wiki-vital for debian-text.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.evals.conftest import tiny_model_dir  # noqa: F401  (the fixture)

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import reference_suite as suite  # noqa: E402


def test_budget_past_the_training_split_is_refused(tmp_path):
    with pytest.raises(SystemExit, match=r"\[5000\] exceed the cache's training split \(3,960"):
        suite.check_budgets([1000, 5000], tokens=4000, heldout_fraction=0.01)


def test_suite_runs_every_stage_and_resumes(tiny_model_dir, tmp_path, capsys):  # noqa: F811
    argv = ["--root", str(tmp_path / "ref"), "--model", str(tiny_model_dir), "--corpus", "wiki-vital",
            "--tokens", "3000", "--layers", "1", "2", "--ks", "4", "8", "--expansions", "2",
            "--budgets", "1024", "2048", "--batch-size", "256", "--ce-contexts", "2", "--heldout-fraction", "0.1", "--device", "cpu"]
    suite.main(argv)
    out = capsys.readouterr().out
    saes = suite.suite_grid(tmp_path / "ref", [1024, 2048], [1, 2], [4, 8], [2])
    assert len(saes) == 8
    for s in saes:
        assert (s.sae_dir / "sae.safetensors").exists(), s.sae_dir
        cfg = json.loads((s.sae_dir / "cfg.json").read_text())
        assert (cfg["k"], cfg["num_features"], cfg["hook"]) == (s.k, 2 * 48, s.hook)
        ev = json.loads((s.sae_dir / "eval.json").read_text())
        assert ev["settings"]["ce_contexts"] == 2 and ev["spliced"]["ce_tokens"] > 0
    rows = [suite.read_row(s) for s in saes]
    # tokens seen come from each run's own summary, not from the label
    assert [r.tokens_seen for r in rows] == [s.budget for s in saes]
    table = (tmp_path / "ref" / "scaling.md").read_text()
    assert "SAEs finished: 8 of 8" in table and table.count("| blocks.") == 8
    # each row carries the bootstrap interval its eval.json holds, around its estimate
    for r in rows:
        ev = json.loads((r.sae.sae_dir / "eval.json").read_text())
        iv = ev["reconstruction"]["intervals"]["fvu"]
        assert r.fvu_ci == (iv["low"], iv["high"]) and iv["low"] <= r.fvu <= iv["high"]
        assert f"{r.fvu:.4f} [{iv['low']:.4f}, {iv['high']:.4f}]" in table
    assert (tmp_path / "ref" / "scaling.png").stat().st_size > 10_000
    assert "$ " in out and "harvest" in out
    # a second run finds everything done: no stage runs again
    suite.main(argv)
    assert "$ " not in capsys.readouterr().out
