"""`absorption`: the first-letter absorption metric of one SAE (Chanin et al., "A is for Absorption",
as SAEBench's `absorption/` runs it), from activations or from a model.

    from evals.absorption import absorption
    r = absorption(sae, lm, words=2000)     # a dict, what eval.json's "absorption" section holds

Steps: the words (a seeded sample of the tokenizer's single-token alphabetic words; the whole
vocabulary takes tens of minutes on 2 CPUs, so a sample is the default) are split 80/20 into
train and test; letter probes and k-sparse probes are trained on train; absorption is scored on
the test words the probe calls positive. A letter is evaluated when its probe reaches F1 0.6
(SAEBench's `min_GT_probe_f1`) and has a true positive; the means are over evaluated letters.
SAEBench reports nothing when fewer than 20 letters pass (`min_feats_for_eval`); we report the
means with a note saying so (a 135M model passes about 14).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from evals.absorption.measure import letter_absorption
from evals.absorption.probes import k_sparse_probing, train_letter_probes
from evals.absorption.prompts import ICL_EXAMPLES, TEMPLATE, word_activations
from evals.absorption.vocab import LETTERS, alphabetic_words, sample_words

MIN_PROBE_F1 = 0.6
SAEBENCH_MIN_LETTERS = 20


@torch.no_grad()
def sae_codes(sae, x: torch.Tensor, batch: int = 1024) -> np.ndarray:
    """Dense SAE activations `[n, F]` of `x` (float32 numpy)."""
    dev = sae.W_dec.device
    parts = [sae.encode_dense(x[i:i + batch].to(dev, sae.W_dec.dtype)).float().cpu() for i in range(0, len(x), batch)]
    return torch.cat(parts).numpy() if parts else np.zeros((0, sae.num_features), dtype=np.float32)


def split_words(n: int, test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/test indices of n words."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(n * test_fraction)))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def absorption_from_activations(sae, x: torch.Tensor, words: list[str], *, test_fraction: float = 0.2,
                                max_k: int = 10, f1_jump: float = 0.03, min_probe_f1: float = MIN_PROBE_F1,
                                seed: int = 0) -> dict[str, Any]:
    """Absorption from word activations `x [n, d]` at the SAE's hook and the words (their text)."""
    letters = sorted({w.strip()[0].lower() for w in words})
    y = np.array([letters.index(w.strip()[0].lower()) for w in words])
    tr, te = split_words(len(words), test_fraction, seed)
    xs = x.double().numpy()
    feats = sae_codes(sae, x.float())
    probes = train_letter_probes(xs[tr], y[tr], xs[te], y[te], letters)
    sparse = k_sparse_probing(feats[tr], y[tr], feats[te], y[te], letters, max_k=max_k, f1_jump=f1_jump)
    w_dec = sae.W_dec.detach().double().cpu().numpy()
    unit_dec = w_dec / np.maximum(np.linalg.norm(w_dec, axis=1, keepdims=True), 1e-12)
    scores = probes.scores(xs[te])
    per_letter, skipped = {}, {}
    for i, c in enumerate(letters):
        n_pos = int((y[te] == i).sum())
        if probes.f1[c] < min_probe_f1:
            skipped[c] = f"probe F1 {probes.f1[c]:.3f} < {min_probe_f1} ({n_pos} test words)"
            continue
        tp = te[(y[te] == i) & (scores[:, i] > 0)]
        if len(tp) == 0:
            skipped[c] = "no test word the probe calls positive"
            continue
        p = probes.weight[i] / np.linalg.norm(probes.weight[i])
        row = letter_absorption(c, xs[tp], feats[tp], [words[j] for j in tp], p, unit_dec @ p, sparse.main[c])
        per_letter[c] = {**row.to_dict(), "probe_f1": round(probes.f1[c], 4),
                         "sparse_f1": [round(v, 4) for v in sparse.f1[c]], "test_words": n_pos}
    rows = list(per_letter.values())
    mean = (lambda k: float(np.mean([r[k] for r in rows]))) if rows else (lambda k: None)
    out: dict[str, Any] = {
        "mean_absorption_fraction": mean("mean_absorption_fraction"),
        "mean_full_absorption": mean("full_absorption_rate"),
        "mean_num_split_features": mean_split(rows),
        "letters_evaluated": len(rows), "letters_skipped": skipped,
        "words": len(words), "train_words": int(len(tr)), "test_words": int(len(te)),
        "probe_f1": {c: round(v, 4) for c, v in probes.f1.items()},
        "letters": per_letter, "absorbing_features": absorbing_features(per_letter),
    }
    if len(rows) < SAEBENCH_MIN_LETTERS:
        out["note"] = (f"only {len(rows)} letters have a probe F1 >= {min_probe_f1}; SAEBench reports nothing under "
                       f"{SAEBENCH_MIN_LETTERS} (min_feats_for_eval): read the means over these letters only")
    return out


def mean_split(rows: list[dict]) -> float | None:
    """SAEBench's num_split_features: main features per letter beyond the first, averaged."""
    return float(np.mean([len(r["main_features"]) - 1 for r in rows])) if rows else None


def absorbing_features(per_letter: dict[str, dict]) -> dict[str, list[dict]]:
    """Feature id (a string: JSON keys) -> the letters it absorbs and the tokens, for feature pages."""
    out: dict[str, list[dict]] = {}
    for c, row in per_letter.items():
        for a in row["absorbers"]:
            out.setdefault(str(a["feature"]), []).append({"letter": c, "tokens": a["tokens"],
                                                          "rate": round(len(a["tokens"]) / row["probe_true_positives"], 4)})
    return out


def absorption(sae, lm, hook: str | None = None, *, words: int = 2000, icl_examples: int = ICL_EXAMPLES,
               template: str = TEMPLATE, test_fraction: float = 0.2, max_k: int = 10, batch_size: int = 32,
               seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """The absorption metric of `sae` on the model `lm` at `hook` (default: the SAE's), over a seeded
    sample of `words` single-token alphabetic words (0: all of them)."""
    hook = hook or sae.cfg.hook
    vocab = alphabetic_words(lm.tokenizer)
    chosen = sample_words(vocab, words, seed)
    x, example = word_activations(lm, hook, chosen, pool=vocab, icl_examples=icl_examples, template=template,
                                  batch_size=batch_size, seed=seed, progress=progress)
    out = absorption_from_activations(sae, x, [w.text for w in chosen], test_fraction=test_fraction, max_k=max_k,
                                      seed=seed)
    out["settings"] = {"vocabulary_words": len(vocab), "sampled_words": len(chosen), "word_sample": words,
                       "icl_examples": icl_examples, "template": template, "hook": hook, "seed": seed,
                       "test_fraction": test_fraction, "max_k": max_k, "example_prompt": example[0]}
    return out
