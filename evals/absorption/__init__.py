"""Feature absorption on the first-letter task (Chanin et al., "A is for Absorption", as SAEBench runs it).

    from evals.absorption import absorption
    r = absorption(sae, lm, words=2000)
    r["mean_absorption_fraction"], r["letters"]["s"]["absorbers"]   # the features that absorb "s" words

Modules: `vocab` (the words), `prompts` (prompts and activations), `probes` (letter probes and
k-sparse probes), `measure` (per-word and per-letter absorption), `run` (the whole metric).
"""

from evals.absorption.measure import LetterAbsorption, WordAbsorption, letter_absorption, word_absorption
from evals.absorption.probes import LetterProbes, SparseProbing, k_sparse_probing, train_letter_probes
from evals.absorption.prompts import prompt_ids, word_activations
from evals.absorption.run import absorbing_features, absorption, absorption_from_activations
from evals.absorption.vocab import LETTERS, Word, alphabetic_words, sample_words

__all__ = [
    "LETTERS",
    "LetterAbsorption",
    "LetterProbes",
    "SparseProbing",
    "Word",
    "WordAbsorption",
    "absorbing_features",
    "absorption",
    "absorption_from_activations",
    "alphabetic_words",
    "k_sparse_probing",
    "letter_absorption",
    "prompt_ids",
    "sample_words",
    "train_letter_probes",
    "word_absorption",
]
