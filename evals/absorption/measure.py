"""Absorption of each word and each letter, by SAEBench's definitions (`FeatureAbsorptionCalculator`).

For a letter with probe direction p (unit) and main features M, each test word of that letter
that the probe calls positive is scored from its activation x and SAE code f:
- projections: of the activation, x . p; of feature j, f_j cos(W_dec[j], p) (SAEBench's
  activation times cosine, which is the feature's real contribution when its decoder row has
  unit norm).
- absorption fraction: the potential absorbers are the other features with cos >= 0.1 and a
  positive projection; their top 3 carry A. Fraction 0 when M's projection already covers
  x . p or A < 0.4 x . p; 1 when M's projection <= 0; else min(A, x.p - M) / (that + M).
- full absorption: every main feature is silent, the top-projecting feature has cos >= 0.025,
  x . p >= 0, and that feature carries >= 0.4 of x . p.
A letter's `mean_absorption_fraction` and `full_absorption_rate` are the sums over its probe
true positives divided by their number. The absorbing feature we name for a word is the top
projecting feature when the absorption is full, else the top potential absorber.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

EPS = 1e-8
FULL_COS = 0.025
FRACTION_COS = 0.1
PROJECTION_SHARE = 0.4
MAX_ABSORBERS = 3


@dataclass
class WordAbsorption:
    word: str
    probe_projection: float
    fraction: float
    full: bool
    absorber: int | None  # the feature named as absorbing this word (None when not absorbed)


def word_absorption(x: np.ndarray, f: np.ndarray, probe: np.ndarray, cos: np.ndarray, main: list[int],
                    word: str = "") -> WordAbsorption:
    """One word: activation `x [d]`, SAE code `f [F]`, unit probe direction, decoder cosines `cos [F]`."""
    act_proj = float(x @ probe)
    proj = f * cos
    main_proj = float(proj[main].sum()) if main else 0.0
    mask = np.ones(len(f), dtype=bool)
    mask[main] = False
    mask &= (cos >= FRACTION_COS) & (proj > 0)
    cand = np.flatnonzero(mask)
    top = cand[np.argsort(-proj[cand], kind="stable")[:MAX_ABSORBERS]]
    absorbed = float(proj[top].sum())
    if main_proj >= act_proj or absorbed < PROJECTION_SHARE * act_proj:
        fraction = 0.0
    elif main_proj <= 0.0:
        fraction = 1.0
    else:
        a = min(absorbed, act_proj - main_proj)
        fraction = float(np.clip(a / (a + main_proj), 0.0, 1.0))
    first = int(np.argmax(proj))
    full = (all(abs(f[m]) < EPS for m in main) and cos[first] >= FULL_COS and act_proj >= 0
            and proj[first] >= PROJECTION_SHARE * act_proj)
    absorber = first if full else (int(top[0]) if fraction > 0 and len(top) else None)
    return WordAbsorption(word, act_proj, fraction, bool(full), absorber)


@dataclass
class LetterAbsorption:
    letter: str
    main_features: list[int]
    probe_true_positives: int
    mean_absorption_fraction: float
    full_absorption_rate: float
    num_full_absorption: int
    num_absorbed: int
    absorbers: list[dict] = field(default_factory=list)  # {"feature", "cos", "tokens"}, most tokens first

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def letter_absorption(letter: str, x: np.ndarray, f: np.ndarray, words: list[str], probe: np.ndarray,
                      cos: np.ndarray, main: list[int]) -> LetterAbsorption:
    """Absorption over the probe's true positives of one letter (`x`, `f`, `words` hold only those)."""
    scored = [word_absorption(x[i], f[i], probe, cos, main, words[i]) for i in range(len(words))]
    n = len(scored)
    by_feature: dict[int, list[str]] = {}
    for s in scored:
        if s.absorber is not None:
            by_feature.setdefault(s.absorber, []).append(s.word)
    absorbers = [{"feature": j, "cos": round(float(cos[j]), 4), "tokens": toks}
                 for j, toks in sorted(by_feature.items(), key=lambda kv: (-len(kv[1]), kv[0]))]
    full = sum(s.full for s in scored)
    return LetterAbsorption(letter, list(main), n, sum(s.fraction for s in scored) / n if n else 0.0,
                            full / n if n else 0.0, full, sum(s.absorber is not None for s in scored), absorbers)
