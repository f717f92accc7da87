"""Supervised feature dictionaries and the SAE tests built on them (Makelov, Lange, Nanda 2024).

    from evals.supervised import SupervisedConfig, supervised_eval
    out = supervised_eval(lm, sae_or_none, SupervisedConfig(task="ioi"))   # rows per site and attribute

Pieces, each usable alone: `mean_dictionary` / `mse_dictionary` (evals.supervised.dictionary),
`sufficiency` / `necessity` / `patched_logits` (patching), `greedy_edit` (editing), `attribute_f1`
(interpretability). Definitions are in each module's docstring.
"""

from evals.supervised.dictionary import DICTIONARIES, SupervisedDictionary, mean_dictionary, mse_dictionary, one_hot_codes
from evals.supervised.editing import greedy_edit, sae_edit_magnitude
from evals.supervised.interpretability import (AttributeF1, attribute_f1, occluded_values, precision_recall_f1,
                                               split_features)
from evals.supervised.patching import edit_accuracy, necessity, patched_logits, site_activations, sufficiency

__all__ = [
    "AttributeF1",
    "DICTIONARIES",
    "SupervisedDictionary",
    "attribute_f1",
    "edit_accuracy",
    "greedy_edit",
    "mean_dictionary",
    "mse_dictionary",
    "necessity",
    "occluded_values",
    "one_hot_codes",
    "patched_logits",
    "precision_recall_f1",
    "sae_edit_magnitude",
    "site_activations",
    "split_features",
    "sufficiency",
]
