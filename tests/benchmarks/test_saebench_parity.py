"""The pure parts of `benchmarks/peers/saebench_parity.py`: the parity table and SAEBench's EV formula.

No SAEBench venv is built here; the formula is checked against SAEBench 0.6.0's own aggregation
(`get_sparsity_and_variance_metrics`), transcribed in its terms, on random batches.
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks" / "peers"))

from parity_table import Row, failures, markdown, saebench_explained_variance  # noqa: E402


def saebench_ev_reference(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """sae_bench/evals/core/main.py (0.6.0), its lists and reductions as written there."""
    mean_sum_of_squares, mean_act_per_dimension, mean_sum_of_resid_squared = [], [], []
    for x, x_hat in batches:
        resid_sum_of_squares = (x - x_hat).pow(2).sum(dim=-1)
        mean_sum_of_squares.append(x.pow(2).sum(dim=-1).mean(dim=0))
        mean_act_per_dimension.append(x.pow(2).mean(dim=0))
        mean_sum_of_resid_squared.append(resid_sum_of_squares.mean(dim=0))
    total_variance = torch.stack(mean_sum_of_squares).mean(dim=0) - torch.cat(mean_act_per_dimension).mean(dim=0) ** 2
    residual_variance = torch.stack(mean_sum_of_resid_squared).mean(dim=0)
    return float(1 - residual_variance / total_variance)


def test_saebench_explained_variance_matches_its_own_aggregation():
    g = torch.Generator().manual_seed(0)
    d = 7
    batches = []
    for n in (50, 43, 61):  # unequal batches (masked tokens): each batch's mean weighs the same
        x = torch.randn(n, d, generator=g, dtype=torch.float64) * 3 + 1
        batches.append((x, x + 0.4 * torch.randn(n, d, generator=g, dtype=torch.float64)))
    sums = [(float((x - h).pow(2).sum()), float(x.pow(2).sum()), x.shape[0]) for x, h in batches]
    assert saebench_explained_variance(sums, d) == pytest.approx(saebench_ev_reference(batches), abs=1e-12)
    # and it is not 1 - FVU (the definition difference the table shows)
    x, h = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    fvu = float((x - h).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    assert abs((1 - fvu) - saebench_explained_variance(sums, d)) > 1e-3


def test_rows_compare_within_tolerance_and_flag_beyond():
    ok = Row("cossim", 0.95001, 0.95, 1e-4, "float32")
    bad = Row("CE with SAE", 3.2, 3.1, 2e-3, "noise")
    rel = Row("L1", 101.0, 100.0, 0.02, "noise", relative=True)
    rel_bad = Row("L1", 103.0, 100.0, 0.02, "noise", relative=True)
    definition = Row("EV = 1 - FVU", 0.8, 0.9, None, "definitions differ")
    missing = Row("absorption", 0.1, None, 0.01, "not run")
    nan_both = Row("x", math.nan, math.nan, 0.1, "")
    nan_one = Row("y", math.nan, 1.0, 0.1, "")
    assert [r.verdict for r in (ok, bad, rel, rel_bad, definition, missing, nan_both, nan_one)] == [
        "ok", "DIFF", "ok", "DIFF", "definition", "missing", "ok", "DIFF"]
    assert bad.diff == pytest.approx(0.1) and rel.allowed == pytest.approx(2.0)
    assert failures([ok, bad, definition, missing]) == [bad, missing]


def test_markdown_has_one_line_per_row_with_every_column():
    rows = [Row("CE loss score", 0.9123, 0.9121, 1e-3, "model noise"), Row("EV", 0.7, 0.8, None, "definition")]
    lines = markdown(rows).splitlines()
    assert lines[0] == "| metric | ours | SAEBench | abs diff | tolerance | verdict | reason |"
    assert len(lines) == 4
    assert lines[2].startswith("| CE loss score | 0.9123 | 0.9121 | 2.000e-04 | 0.001 | ok | model noise |")
    assert "| - | definition | definition |" in lines[3]


def test_pipes_inside_cells_are_escaped():
    line = markdown([Row("max |diff|", 1.0, 1.0, 0.1, "divides by sum |x - mean x|^2")]).splitlines()[2]
    cells = re.split(r"(?<!\\)\|", line)[1:-1]  # a Markdown cell ends at an unescaped pipe
    assert len(cells) == 7 and cells[0].strip() == "max \\|diff\\|"
