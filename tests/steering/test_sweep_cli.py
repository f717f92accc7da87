"""The sweep (deterministic, files written, reproducible from its config) and the `sae` verbs, on the tiny model."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from steering import SweepConfig, run_sweep

SAE_BIN = str(Path(sys.executable).parent / "sae")


SEA = {"name": "sea", "positive": ["the sea and the waves", "a boat on the ocean"],
       "negative": ["the tax form", "an office chair"], "target_words": ["sea", "ocean"],
       "judge_positive": ["fish in the deep sea", "the tide came in"], "judge_negative": ["a desk lamp", "the invoice"]}


def _concept(tmp_path: Path, positive=tuple(SEA["positive"])) -> str:
    p = tmp_path / "sea.json"
    p.write_text(json.dumps({**SEA, "positive": list(positive)}))
    return str(p)


def _cfg(tmp_path: Path, out: str, seed: int, **kw) -> SweepConfig:
    return SweepConfig(sae="unused", out=str(tmp_path / out), concepts=(_concept(tmp_path),), coeffs=(0.0, 0.5, 2.0),
                       prompts=4, max_new_tokens=3, sample=True, seed=seed, neutral=2, **kw)


def _mean(rows: list[dict], key: str) -> float:
    vals = [r[key] for r in rows if not math.isnan(r[key])]
    return sum(vals) / len(vals) if vals else math.nan


def _reference_choice(lines: list[dict], method: str, coeffs: tuple[float, ...]) -> float:
    """The default rule as the sweep's docs state it, recomputed from rows.jsonl: on the even (select)
    prompts, the best mean target log-prob among coefficients with perplexity <= 4x, distinct-2 >= 0.75x and
    compression ratio <= 1.5x the unsteered text's there; the first on a tie; 0 if none qualifies."""
    def at(m, c, split):
        return [r for r in lines if r["method"] == m and r["coeff"] == c and r["prompt_index"] % 2 == (split == "report")]

    base = at("none", 0.0, "select")
    best, best_score = 0.0, -math.inf
    for c in coeffs:
        rs = at(method, c, "select")
        ok = (_mean(rs, "ppl") <= 4 * _mean(base, "ppl") and _mean(rs, "distinct_2") >= 0.75 * _mean(base, "distinct_2")
              and _mean(rs, "compression") <= 1.5 * _mean(base, "compression"))
        if ok and _mean(rs, "target_logprob") > best_score:
            best, best_score = c, _mean(rs, "target_logprob")
    return best


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
    assert {r["split"] for r in lines if r["prompt_index"] % 2 == 0} == {"select"}
    assert {r["split"] for r in lines if r["prompt_index"] % 2 == 1} == {"report"}
    _check_choice(a, lines, (0.0, 0.5, 2.0))


def _check_choice(summary: dict, lines: list[dict], coeffs: tuple[float, ...]) -> None:
    """Each method's coefficient is the one the rule picks from the written rows, and its reported figures
    are the odd (held-out) prompts' means at that coefficient."""
    methods = summary["concepts"]["sea"]["methods"]
    steered = 0
    for m in ("sae", "diffmean", "pca", "diffmean_sae"):
        want = _reference_choice(lines, m, coeffs)
        assert methods[m]["coeff"] == want, (m, methods[m])
        held_out = [r for r in lines if r["method"] == m and r["coeff"] == want and r["prompt_index"] % 2 == 1]
        assert methods[m]["n_prompts"] == len(held_out) == 2
        for key in ("target_logprob", "ppl", "probe", "distinct_2", "compression"):
            assert methods[m][key] == pytest.approx(_mean(held_out, key), nan_ok=True), (m, key)
        steered += want != 0.0
    none = [r for r in lines if r["method"] == "none" and r["prompt_index"] % 2 == 1]
    assert methods["none"]["target_logprob"] == pytest.approx(_mean(none, "target_logprob"))
    assert steered > 0  # the check is not vacuous: some method steers at its chosen coefficient


def test_prompt_only_steering_has_a_cost_and_is_judged_apart_from_its_texts(tiny_lm, tiny_sae, tmp_path):
    """Issue 22 items 3, 7 and 10 through the sweep: `--positions prompt` and `last` steer the neutral text too
    (KL > 0 for every nonzero coefficient); the neutral text and the judge's texts are none of the
    steering texts; the probe readout is not NaN and says what it was fitted on."""
    for kind in ("prompt", "last"):
        s = run_sweep(_cfg(tmp_path, kind, 1, positions=kind, methods=("sae", "diffmean")), tiny_lm, tiny_sae)
        lines = [json.loads(x) for x in (tmp_path / kind / "rows.jsonl").read_text().splitlines()]
        kls = {r["kl"] for r in lines if r["coeff"] != 0}
        assert kls and all(k > 0 for k in kls), (kind, kls)
        steering_texts = set(SEA["positive"]) | set(SEA["negative"])
        assert s["neutral_texts"] and not set(s["neutral_texts"]) & steering_texts
        probe = s["concepts"]["sea"]["probe"]
        assert set(probe["texts"]) == set(SEA["judge_positive"]) | set(SEA["judge_negative"])
        assert not set(probe["texts"]) & steering_texts
        assert all(not math.isnan(r["probe"]) for r in lines)
        for key in ("sae_feature", "distinct_2", "distinct_3", "compression"):
            assert key in lines[0]


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
    assert "probe = logistic regression" in r.stdout and "2 + 2 judge texts that no method reads" in r.stdout
    first = (out / "rows.jsonl").read_text()
    r = _sae("steer-sweep", "--config", str(out / "config.json"))
    assert r.returncode == 0, r.stderr
    assert (out / "rows.jsonl").read_text() == first
