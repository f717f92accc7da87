"""The sweep (deterministic, files written, reproducible from its config) and the `sae` verbs, on the tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from steering import SweepConfig, run_sweep

SAE_BIN = str(Path(sys.executable).parent / "sae")


def _concept(tmp_path: Path, positive=("the sea and the waves", "a boat on the ocean")) -> str:
    p = tmp_path / "sea.json"
    p.write_text(json.dumps({"name": "sea", "positive": list(positive),
                             "negative": ["the tax form", "an office chair"], "target_words": ["sea", "ocean"]}))
    return str(p)


def _cfg(tmp_path: Path, out: str, seed: int) -> SweepConfig:
    return SweepConfig(sae="unused", out=str(tmp_path / out), concepts=(_concept(tmp_path),), coeffs=(0.0, 0.5, 2.0),
                       prompts=4, max_new_tokens=3, sample=True, seed=seed, neutral=2)


def test_sweep_is_deterministic_for_a_seed_and_writes_its_files(tiny_lm, tiny_sae, tmp_path):
    a = run_sweep(_cfg(tmp_path, "a", 1), tiny_lm, tiny_sae)
    b = run_sweep(_cfg(tmp_path, "b", 1), tiny_lm, tiny_sae)
    c = run_sweep(_cfg(tmp_path, "c", 2), tiny_lm, tiny_sae)
    rows = lambda d: (tmp_path / d / "rows.jsonl").read_text()  # noqa: E731
    assert rows("a") == rows("b")
    assert rows("a") != rows("c")
    assert a == b
    for f in ("config.json", "rows.jsonl", "summary.json", "table.md", "plot.png"):
        assert (tmp_path / "a" / f).stat().st_size > 0
    lines = [json.loads(x) for x in rows("a").splitlines()]
    # none + 4 methods x 3 coefficients, 4 prompts each; coefficient 0 is the unsteered text for every method.
    assert len(lines) == 4 * (1 + 4 * 3)
    base = [r["text"] for r in lines if r["method"] == "none"]
    for m in ("sae", "diffmean", "pca", "diffmean_sae"):
        assert [r["text"] for r in lines if r["method"] == m and r["coeff"] == 0.0] == base
        assert a["concepts"]["sea"]["methods"][m]["coeff"] in (0.0, 0.5, 2.0)
    assert {r["split"] for r in lines if r["prompt_index"] % 2 == 0} == {"select"}


def _sae(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([SAE_BIN, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def _one_line_exit_2(r: subprocess.CompletedProcess, needle: str) -> None:
    """Exit 2 and one error line, the last thing printed (transformers may draw a loading bar before it)."""
    assert r.returncode == 2, r.stderr
    errors = [x for x in r.stderr.splitlines() if "error" in x.lower()]
    assert len(errors) == 1 and needle in errors[0] and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1] == errors[0]


@pytest.mark.parametrize("which,args,needle", [
    ("good", ["--feature", "999"], "unknown feature index 999; this SAE has features 0..63"),
    ("bad_hook", ["--feature", "1"], "unknown hook point(s) ['blocks.9.hook_resid_post']"),
    ("bad_width", ["--feature", "1"], "SAE width 24 does not fit blocks.1.hook_resid_post"),
])
def test_steer_bad_input_is_one_line_exit_2(saved_tiny, which, args, needle):
    r = _sae("steer", "--sae", str(saved_tiny[which]), "--prompt", "hello there", "--coeff", "1", *args)
    _one_line_exit_2(r, needle)


def test_steer_empty_prompt_sets_are_one_line_exit_2(saved_tiny, tmp_path):
    r = _sae("steer", "--sae", str(saved_tiny["good"]), "--concept", _concept(tmp_path, positive=()), "--prompt", "hi",
             "--coeff", "1")
    _one_line_exit_2(r, "empty prompt set")
    r = _sae("steer", "--sae", str(saved_tiny["good"]), "--feature", "1", "--prompt", " ", "--coeff", "1")
    _one_line_exit_2(r, "a prompt is empty")


def test_steer_prints_base_and_steered_side_by_side_and_sweep_reruns_from_config(saved_tiny, tmp_path):
    r = _sae("steer", "--sae", str(saved_tiny["good"]), "--feature", "3", "--coeff", "40", "--unit", "raw",
             "--prompt", "hello there", "the cat", "--max-new-tokens", "4")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("prompt: ") == 2 and "| steered" in r.stdout
    out = tmp_path / "sweep"
    r = _sae("steer-sweep", "--sae", str(saved_tiny["good"]), "--concepts", _concept(tmp_path), "--methods", "sae",
             "diffmean", "--coeffs", "0", "1", "--prompts", "2", "--max-new-tokens", "3", "--neutral", "2",
             "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "| sea | diffmean |" in r.stdout
    first = (out / "rows.jsonl").read_text()
    r = _sae("steer-sweep", "--config", str(out / "config.json"))
    assert r.returncode == 0, r.stderr
    assert (out / "rows.jsonl").read_text() == first
