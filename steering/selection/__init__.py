"""Choosing what to steer with: features picked by what they read (activation rise) or by what they do
to the output (output score, concept output score, gradient score), and SAE-targeted steering.

    from steering.selection import SelectionContext, select_direction, SELECTORS
    sel = select_direction("gradient", SelectionContext(lm, sae, pos, neg, targets, prompts))
    sel.feature, sel.vector, sel.score

Definitions: ../shared/EVALS_AND_STEERING.md, "Selecting features for steering". Every selector
is one name in `SELECTORS` (steering.selection.registry), which the sweep iterates and
`--select` chooses from.
"""

from steering.selection.candidates import candidate_pool, lens_candidates, lens_target_logprob, rise_candidates
from steering.selection.gradient import gradient_scores, hook_gradient, target_objective
from steering.selection.output import NEUTRAL_PROMPT, OutputScores, lens_tokens, os_from_probs, output_scores
from steering.selection.registry import SELECTORS, Selection, SelectionContext, select_direction, selector_names
from steering.selection.sae_ts import fit_effect_map, measure_effects, targeted_vector

__all__ = [
    "NEUTRAL_PROMPT", "OutputScores", "SELECTORS", "Selection", "SelectionContext", "candidate_pool",
    "fit_effect_map", "gradient_scores", "hook_gradient", "lens_candidates", "lens_target_logprob", "lens_tokens",
    "measure_effects", "os_from_probs", "output_scores", "rise_candidates", "select_direction", "selector_names",
    "target_objective", "targeted_vector",
]
