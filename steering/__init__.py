"""Steering: interventions in a model's forward pass, steered generation, sweeps against baselines.

    from steering import add_feature, clamp_features, steering, generate, diffmean
    lm, sae = load_for_steering("", "cache/saes/run1")            # model named by the SAE, checked to fit
    with steering(lm, [add_feature(sae, 123, 8.0)]):              # any number of interventions and hooks
        logits = lm.bridge(tokens)
    out = generate(lm, ["I woke up and"], [add_feature(sae, 123, 8.0, positions=Positions("generated"))])

Which feature: `select_direction(name, SelectionContext(...))` picks by activation rise, output
score, concept output score, gradient score or SAE-TS (steering.selection, one registry).

Measured, not printed: `run_sweep(SweepConfig(...))` puts SAE features next to DiffMean, PCA of
differences and DiffMean through the SAE, on the same prompts and measures (steering.sweep).
"""

from steering.choice import SelectionRule, choose_coeff
from steering.concepts import BUILTIN, MORE_STEER_PROMPTS, STEER_PROMPTS, Concept, load_concept, neutral_texts
from steering.consistency import ConsistencyConfig, run_consistency
from steering.generation import Generation, generate
from steering.interventions import (
    AddVector,
    FeatureEdit,
    Intervention,
    SAEEdit,
    ablate_features,
    add_direction,
    add_feature,
    clamp_features,
    run_with_interventions,
    scale_features,
    shift_features,
    steering,
)
from steering.measures import Judge, NeutralKL, compression_ratio, distinct_n, score_generation
from steering.positions import Positions, RunState
from steering.probe import LinearProbe, fit_probe
from steering.selection import SELECTORS, Selection, SelectionContext, select_direction
from steering.setup import check_fit, load_for_steering
from steering.stats import FeatureStats, measure_stats, stats_from_activations
from steering.sweep import SweepConfig, run_sweep
from steering.vectors import VectorSource, concept_feature, diffmean, diffmean_sae, pca_diff, read_concept

__all__ = [
    "AddVector", "BUILTIN", "Concept", "ConsistencyConfig", "FeatureEdit", "FeatureStats", "Generation",
    "Intervention", "Judge", "LinearProbe", "NeutralKL", "Positions", "RunState", "SAEEdit", "SELECTORS",
    "MORE_STEER_PROMPTS", "STEER_PROMPTS", "VectorSource", "read_concept", "Selection", "SelectionContext", "SelectionRule", "SweepConfig", "ablate_features", "add_direction", "add_feature", "check_fit", "choose_coeff",
    "clamp_features", "compression_ratio", "concept_feature", "diffmean", "diffmean_sae", "distinct_n", "fit_probe",
    "generate", "load_concept", "load_for_steering", "measure_stats",
    "neutral_texts", "pca_diff", "run_consistency", "run_sweep", "run_with_interventions", "scale_features",
    "score_generation", "select_direction", "shift_features", "stats_from_activations", "steering",
]
