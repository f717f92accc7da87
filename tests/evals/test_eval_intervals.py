"""`sae eval` shows its intervals and states its sample size: eval.json, the printed table, the
Pareto plot's error bars, and `--ce-tokens` (the input tokens the spliced loss covers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saes import save_sae
from workbench.cli import main

from .conftest import make_sae


@pytest.fixture(scope="module")
def one_sae(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ivsae") / "topk_k4"
    save_sae(make_sae(num_features=96, k=4, seed=1), d)
    return d


def test_eval_json_and_table_carry_intervals_and_ce_tokens(one_sae, tiny_cache, tiny_model_dir, capsys) -> None:
    rc = main(["eval", "--sae", str(one_sae), "--cache", str(tiny_cache), "--model", str(tiny_model_dir),
               "--ce-tokens", "100", "--batch-contexts", "2", "--no-progress", "--batch-size", "512",
               "--no-probing"])
    out = capsys.readouterr().out
    assert rc == 0
    data = json.loads((one_sae / "eval.json").read_text())
    sp = data["spliced"]
    # 100 tokens in contexts of 32: 4 whole contexts, 128 input tokens, as recorded
    assert sp["contexts"] == 4 and sp["input_tokens"] == 128 and data["settings"]["ce_tokens"] == 100
    for section, key in (("spliced", "ce_loss_score"), ("spliced", "kl_div_score"), ("reconstruction", "fvu")):
        iv = data[section]["intervals"][key]
        assert iv["low"] <= data[section][key] <= iv["high"] and iv["level"] == 0.95, key
    ce = sp["intervals"]["ce_loss_score"]
    line = next(ln for ln in out.splitlines() if "CE loss score" in ln)
    assert f"[{ce['low']:.4f}, {ce['high']:.4f}]" in line, line
    assert any("FVU" in ln and "[" in ln for ln in out.splitlines())


def test_ce_tokens_and_ce_contexts_together_is_one_line(one_sae, tiny_cache, capsys) -> None:
    rc = main(["eval", "--sae", str(one_sae), "--cache", str(tiny_cache), "--model", "none", "--no-progress",
               "--ce-tokens", "256", "--ce-contexts", "4"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "--ce-tokens" in err and "--ce-contexts" in err, err


def test_help_states_the_saebench_default(capsys) -> None:
    assert main(["eval", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--ce-tokens" in out and "20,480" in out


def test_pareto_plot_draws_error_bars(monkeypatch, tmp_path) -> None:
    import evals.pareto as pareto
    from evals.result import EvalResult

    figs = []
    monkeypatch.setattr(pareto, "atomic_save_figure", lambda fig, path, **kw: figs.append(fig) or Path(path))
    rs = []
    for l0, fvu, ce in ((4, 0.3, 0.8), (12, 0.2, 0.9)):
        rs.append(EvalResult(sae={"name": f"k{l0}", "architecture": "topk"},
                             reconstruction={"l0": l0, "fvu": fvu, "intervals": {
                                 "fvu": {"estimate": fvu, "low": fvu - 0.01, "high": fvu + 0.02, "n": 10}}},
                             spliced={"ce_loss_score": ce, "intervals": {
                                 "ce_loss_score": {"estimate": ce, "low": ce - 0.05, "high": ce + 0.03, "n": 8}}}))
    pareto.pareto_plot(rs, tmp_path / "p.png")
    ax_fvu, ax_ce = figs[0].axes[:2]
    from matplotlib.container import ErrorbarContainer

    for ax, lo, hi in ((ax_fvu, [0.01, 0.01], [0.02, 0.02]), (ax_ce, [0.05, 0.05], [0.03, 0.03])):
        bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        assert bars, "no error bars"
        segs = bars[0].lines[2][0].get_segments()
        lows = [p[0][1] for p in segs]
        highs = [p[1][1] for p in segs]
        ys = bars[0].lines[0].get_ydata()
        assert [y - a for y, a in zip(ys, lows)] == pytest.approx(lo)
        assert [b - y for y, b in zip(ys, highs)] == pytest.approx(hi)
