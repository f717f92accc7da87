"""`sae eval` through the real entry point: outputs for one and several SAEs, and one-line errors (exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from saes import save_sae
from workbench.cli import main

from .conftest import HOOK, make_sae


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("run")
    save_sae(make_sae(num_features=96, k=4, seed=1), d / "topk_k4")
    save_sae(make_sae(num_features=96, k=12, seed=2), d / "topk_k12")
    return d


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """A 2-layer, 32-wide model: blocks.2 does not exist in it and its width is not 48."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(1)
    d = tmp_path_factory.mktemp("other_model")
    LlamaForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_several_saes_table_eval_json_and_plot(run_dir, tiny_cache, tiny_model_dir, capsys) -> None:
    rc = main(["eval", "--sae", str(run_dir), "--cache", str(tiny_cache), "--model", str(tiny_model_dir),
               "--ce-contexts", "4", "--batch-contexts", "2", "--no-progress", "--batch-size", "512"])
    out = capsys.readouterr().out
    assert rc == 0
    for name in ("topk_k4", "topk_k12"):
        data = json.loads((run_dir / name / "eval.json").read_text())
        assert abs(data["spliced"]["ce_error_diff"]) < 1e-5 and data["spliced"]["definition"]["splice_positions"] == "text"
        assert f"eval.json: {run_dir / name / 'eval.json'}" in out
    l0 = {n: json.loads((run_dir / n / "eval.json").read_text())["reconstruction"]["l0"] for n in ("topk_k4", "topk_k12")}
    assert l0 == {"topk_k4": pytest.approx(4.0), "topk_k12": pytest.approx(12.0)}
    assert "CE score" in out and "KL score" in out and "dead%" in out
    png = run_dir / "pareto.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"Pareto plot: {png}" in out


def test_one_sae_prints_its_full_table(run_dir, tiny_cache, capsys) -> None:
    one = run_dir / "topk_k4"
    rc = main(["eval", "--sae", str(one), "--cache", str(tiny_cache), "--model", "none", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    for label in ("FVU", "explained variance", "L0", "dead features %", "mean max decoder cosine"):
        assert label in out
    assert "CE loss score" not in out  # --model none: no spliced loss, and the table does not pretend
    assert f"eval.json: {one / 'eval.json'}" in out and f"Pareto plot: {one / 'pareto.png'}" in out


def _error(argv: list[str], capsys) -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    # transformers may draw its own weight-loading bar above: the error itself is one line
    lines = [ln for ln in err.splitlines() if not ln.startswith("Loading weights")]
    assert len(lines) == 1 and lines[0].startswith("sae eval: error:") and "Traceback" not in err, err
    return lines[0]


def test_bad_inputs_are_one_line_exit_2(tmp_path, tiny_cache, other_model_dir, capsys) -> None:
    base = ["eval", "--cache", str(tiny_cache), "--no-progress", "--ce-contexts", "2"]
    save_sae(make_sae(hook="blocks.2.hook_resid_post"), tmp_path / "deep")
    err = _error(base + ["--sae", str(tmp_path / "deep"), "--model", str(other_model_dir)], capsys)
    assert "blocks.2.hook_resid_post" in err and "valid hook points" in err
    save_sae(make_sae(), tmp_path / "wide")
    err = _error(base + ["--sae", str(tmp_path / "wide"), "--model", str(other_model_dir)], capsys)
    assert "d_in=48" in err and "d_model=32" in err
    save_sae(make_sae(d_in=32), tmp_path / "narrow")
    err = _error(base + ["--sae", str(tmp_path / "narrow"), "--model", "none"], capsys)
    assert "d_in=32" in err and "d_model=48" in err
    save_sae(make_sae(hook="blocks.0.hook_mlp_out"), tmp_path / "elsewhere")
    err = _error(base + ["--sae", str(tmp_path / "elsewhere"), "--model", "none"], capsys)
    assert "blocks.0.hook_mlp_out" in err and HOOK in err
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "cfg.json").write_text(json.dumps({"width": 96, "layer": 1}))  # no known layout
    err = _error(base + ["--sae", str(foreign)], capsys)
    assert "format the workbench does not know" in err and "SAELens" in err
    err = _error(base + ["--sae", str(tmp_path / "nowhere")], capsys)
    assert "nowhere" in err and "does not exist" in err
    (tmp_path / "wide" / "sae.safetensors").unlink()
    err = _error(base + ["--sae", str(tmp_path / "wide")], capsys)
    assert "sae.safetensors" in err


def test_console_script_exit_code(tmp_path, tiny_cache) -> None:
    """The installed `sae` command itself (the same main, found through the entry point)."""
    sae = Path(sys.executable).parent / "sae"
    proc = subprocess.run([str(sae), "eval", "--sae", str(tmp_path / "missing"), "--cache", str(tiny_cache)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("sae eval: error:") and len(proc.stderr.strip().splitlines()) == 1


def test_same_named_saes_of_different_runs_get_distinct_names(tmp_path) -> None:
    """Two runs' SAEs share a leaf name (topk-k32-x8): under --out each needs its own eval.json."""
    from evals.loading import expand_sae_paths

    for run in ("none-s0", "pca-s0"):
        save_sae(make_sae(seed=1), tmp_path / run / HOOK / "topk-k8-x2")
    refs = expand_sae_paths([tmp_path / "none-s0" / HOOK / "topk-k8-x2", tmp_path / "pca-s0" / HOOK / "topk-k8-x2",
                             tmp_path / "none-s0" / HOOK / "topk-k8-x2"])
    names = [r.name for r in refs]
    assert len(set(names[:2])) == 2, names
    assert names[0].startswith("none-s0") and names[1].startswith("pca-s0")
    assert names[2] == names[0]  # the same SAE named twice is still one name
