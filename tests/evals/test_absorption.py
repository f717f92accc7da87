"""Absorption (SAEBench's first-letter metric) on planted data, and its plumbing through a tiny model.

The planted world: four letters, each a direction of the activation space; an SAE whose main
feature for "a" reads e0 but is switched off by a component (e4 or e5) that a planted set of "a"
words carries, and two other features that fire on exactly those words with decoders aligned
with the letter (e0 + e4, e0 + e5). By Chanin et al.'s definition those words are fully
absorbed by the feature that fires on them; every other word is not.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from evals.absorption import absorption, absorption_from_activations, alphabetic_words, prompt_ids
from evals.absorption.run import split_words
from evals.absorption.vocab import Word

from .conftest import HOOK, make_sae


@pytest.fixture(autouse=True)
def one_blas_thread():
    """scikit-learn's small L-BFGS fits slow down several-fold when OpenBLAS spreads them over busy cores."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


D, PER_LETTER, ABSORBED = 24, 400, 12


def _words() -> tuple[list[str], set[str], set[str]]:
    words = [f" {c}w{i:03d}" for c in "abcd" for i in range(PER_LETTER)]
    s1 = {f" aw{i:03d}" for i in range(ABSORBED)}
    s2 = {f" aw{i:03d}" for i in range(ABSORBED, 2 * ABSORBED)}
    return words, s1, s2


def _activations(words: list[str], s1: set[str], s2: set[str], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(len(words), D)
    for i, w in enumerate(words):
        x[i, "abcd".index(w[1])] = 4.0
        if w in s1:
            x[i, 4] = 4.0
        if w in s2:
            x[i, 5] = 4.0
    x[:, 6:] = 0.5 * torch.randn(len(words), D - 6, generator=g)
    return x


def _planted_sae(absorbing: bool):
    """ReLU SAE: features 0-3 the letters, 4 and 5 the absorbers, 6-15 noise features."""
    from saes import SAEConfig, build_sae

    sae = build_sae(SAEConfig(architecture="relu", d_in=D, num_features=16, hook=HOOK)).eval()
    eye = torch.eye(D)
    enc = torch.zeros(16, D)
    dec = torch.zeros(16, D)
    for j in range(4):
        enc[j], dec[j] = eye[j], eye[j]
    if absorbing:
        enc[0] = eye[0] - 3 * eye[4] - 3 * eye[5]
    enc[4], dec[4] = 2 * eye[4], (eye[0] + eye[4]) / 2 ** 0.5
    enc[5], dec[5] = 2 * eye[5], (eye[0] + eye[5]) / 2 ** 0.5
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(10, D - 6, generator=g)
    enc[6:, 6:] = dec[6:, 6:] = noise / noise.norm(dim=1, keepdim=True)
    b_enc = -torch.ones(16)
    sae.load_weight_tensors({"W_enc": enc.t().contiguous(), "b_enc": b_enc, "W_dec": dec, "b_dec": torch.zeros(D)})
    return sae


def test_planted_absorption_names_the_token_sets_and_rate():
    words, s1, s2 = _words()
    x = _activations(words, s1, s2)
    r = absorption_from_activations(_planted_sae(True), x, words, test_fraction=0.5)
    _, te = split_words(len(words), 0.5, 0)
    test_words = {words[i] for i in te}
    a_test = [w for w in test_words if w[1] == "a"]
    a = r["letters"]["a"]
    assert a["main_features"] == [0]
    assert a["probe_true_positives"] == len(a_test)  # the probe sees every "a" word
    got = {row["feature"]: set(row["tokens"]) for row in a["absorbers"]}
    assert got == {4: s1 & test_words, 5: s2 & test_words}
    expected = len((s1 | s2) & test_words) / len(a_test)
    assert a["full_absorption_rate"] == pytest.approx(expected)
    assert a["mean_absorption_fraction"] == pytest.approx(expected)
    for c in "bcd":
        assert r["letters"][c]["full_absorption_rate"] == 0 and r["letters"][c]["absorbers"] == []
    assert set(r["absorbing_features"]) == {"4", "5"}
    assert r["absorbing_features"]["4"][0]["letter"] == "a"
    json.dumps(r)  # what eval.json holds


def test_clean_planted_sae_reports_no_absorption():
    words, _, _ = _words()
    x = _activations(words, set(), set())
    r = absorption_from_activations(_planted_sae(False), x, words, test_fraction=0.5)
    assert r["letters_evaluated"] == 4
    assert r["mean_full_absorption"] == 0 and r["mean_absorption_fraction"] == pytest.approx(0, abs=1e-3)
    assert r["absorbing_features"] == {}


def test_prompt_puts_the_word_where_it_is_read(tiny_lm):
    tok = tiny_lm.tokenizer
    vocab = alphabetic_words(tok)
    assert vocab and all(w.text.strip().isalpha() for w in vocab[:50])
    word = next(w for w in vocab if w.text.strip() == "cat")
    ex = [next(w for w in vocab if w.text.strip() == "dog")]
    ids, pos = prompt_ids(tok, word, ex, tuple(tiny_lm.prefix_ids))
    assert ids[pos] == word.token_id
    text = tok.decode(ids[len(tiny_lm.prefix_ids):])
    assert text.lower().split() == "dog has the first letter : d cat has the first letter :".split()


def test_absorption_runs_through_a_model(tiny_lm):
    sae = make_sae()
    r = absorption(sae, tiny_lm, words=300, icl_examples=2, progress=False)
    assert r["settings"]["sampled_words"] == 300 and r["words"] == 300
    assert r["train_words"] + r["test_words"] == 300
    assert set(r["probe_f1"]) <= set("abcdefghijklmnopqrstuvwxyz")
    json.dumps(r)


def test_word_letter():
    assert Word(5, " Apple").letter == "a"
    assert np.all([Word(1, "zeta").letter == "z"])


def test_evaluate_writes_absorption_to_eval_json_and_the_table(tiny_cache, tiny_lm, tmp_path):
    from evals import evaluate

    r = evaluate(make_sae(), tiny_cache, tiny_lm, absorption=True, absorption_words=200, probing=False,
                 ce_contexts=2, progress=False)
    assert r.absorption["settings"]["sampled_words"] == 200
    saved = json.loads(r.save(tmp_path).read_text())
    assert saved["absorption"]["words"] == 200 and saved["settings"]["absorption_words"] == 200
    labels = [label for label, _ in r.rows()]
    assert "absorption fraction (mean)" in labels or "absorption" in labels
    off = evaluate(make_sae(), tiny_cache, "none", probing=False, progress=False)
    assert off.absorption == {} and "absorption" not in " ".join(label for label, _ in off.rows())


def test_cli_has_the_absorption_flags():
    import argparse

    from evals.cli import register

    sub = argparse.ArgumentParser().add_subparsers()
    register(sub)
    p = sub.choices["eval"]
    args = p.parse_args(["--sae", "x", "--absorption", "--absorption-words", "500"])
    assert args.absorption is True and args.absorption_words == 500


def test_feature_page_marks_absorbing_and_main_features(tmp_path):
    from types import SimpleNamespace

    from evals.features.html import absorption_html

    (tmp_path / "eval.json").write_text(json.dumps({"absorption": {
        "absorbing_features": {"3": [{"letter": "s", "tokens": [" short", " <s>"], "rate": 0.05}]},
        "letters": {"s": {"main_features": [5]}}}}))
    data = SimpleNamespace(meta={"sae_dir": str(tmp_path)})
    page = absorption_html(data, 3)
    assert 'class="absorbing"' in page and "Absorbs <b>S</b>" in page and " short" in page
    assert "&lt;s&gt;" in page and "<s>" not in page.replace("<span", "")
    assert "Main feature of the letter <b>S</b>" in absorption_html(data, 5)
    assert absorption_html(data, 1) == ""
    assert absorption_html(SimpleNamespace(meta={"sae_dir": str(tmp_path / "none")}), 3) == ""
