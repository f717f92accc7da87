"""Broken or hostile SAE files give one clear line and exit 2, through the real CLI: a truncated
weights file, weights holding NaN or inf, and a cfg.json whose sizes the weights do not have."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from saes import save_sae
from workbench.cli import main

from .conftest import make_sae


def _one_line_exit_2(argv: list[str], capsys) -> str:
    rc = main(argv)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert rc == 2, (rc, err[-400:])
    lines = [ln for ln in err.splitlines() if not ln.startswith("Loading weights")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _eval(d: Path, cache: Path) -> list[str]:
    return ["eval", "--sae", str(d), "--cache", str(cache), "--model", "none", "--no-progress", "--no-probing"]


def test_truncated_weights_file(tmp_path, tiny_cache, capsys) -> None:
    d = save_sae(make_sae(), tmp_path / "sae")
    w = d / "sae.safetensors"
    size = w.stat().st_size
    w.write_bytes(w.read_bytes()[: size // 2])
    line = _one_line_exit_2(_eval(d, tiny_cache), capsys)
    assert "sae.safetensors" in line and "truncated" in line and f"{size // 2:,}" in line, line


def test_header_of_weights_destroyed(tmp_path, tiny_cache, capsys) -> None:
    d = save_sae(make_sae(), tmp_path / "sae")
    (d / "sae.safetensors").write_bytes(b"\xff" * 64)
    line = _one_line_exit_2(_eval(d, tiny_cache), capsys)
    assert "sae.safetensors" in line and "not a readable safetensors file" in line, line


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_at_load(tmp_path, tiny_cache, capsys, bad) -> None:
    d = save_sae(make_sae(), tmp_path / "sae")
    t = load_file(str(d / "sae.safetensors"))
    t["W_dec"][3, 5] = bad
    save_file(t, str(d / "sae.safetensors"))
    line = _one_line_exit_2(_eval(d, tiny_cache), capsys)
    assert "W_dec" in line and "non-finite" in line, line


def test_cfg_claiming_other_sizes_than_the_weights(tmp_path, tiny_cache, capsys) -> None:
    d = save_sae(make_sae(num_features=96), tmp_path / "sae")
    cfg = json.loads((d / "cfg.json").read_text())
    cfg["num_features"] = 10**12
    (d / "cfg.json").write_text(json.dumps(cfg))
    line = _one_line_exit_2(["sae", "info", str(d)], capsys)
    assert "num_features" in line and "1000000000000" in line and "(96, 48)" in line, line
    line = _one_line_exit_2(_eval(d, tiny_cache), capsys)
    assert "num_features" in line and "(96, 48)" in line, line


def test_a_sound_sae_still_shows_its_info(tmp_path, capsys) -> None:
    d = save_sae(make_sae(num_features=96), tmp_path / "sae")
    assert main(["sae", "info", str(d)]) == 0
    assert "num_features=96" in capsys.readouterr().out
