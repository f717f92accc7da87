"""Evaluations of trained SAEs: reconstruction, the SAE spliced into the model, feature health, probing.

    from evals import evaluate
    r = evaluate("cache/saes/run1/topk_k32_x8", cache="cache/acts")   # model: the cache's own
    print(r); r.save("cache/saes/run1/topk_k32_x8")                   # table; eval.json
    rs = evaluate_many([sae_a, sae_b], cache="cache/acts")            # SAEs at one hook share the spliced passes

Definitions (FVU with the per-dimension mean, SAEBench's CE/KL scores) are in each module's
docstring: `evals.reconstruction`, `evals.splice`, `evals.health`, `evals.probing`.
"""

from evals.absorption import absorption
from evals.cache_pass import CachePassResult, cache_pass
from evals.contexts import ContextBatch, cache_contexts, corpus_contexts
from evals.evaluate import EvalConfig, check_fits_cache, check_fits_model, evaluate, evaluate_many
from evals.health import FeatureStats, max_cosine_to_others, weight_stats
from evals.intervals import Interval, bootstrap_interval, paired_bootstrap_interval, ratio_interval
from evals.loading import SAERef, expand_sae_paths, load_for_eval
from evals.pareto import pareto_plot
from evals.probe_corpus import corpus_probing
from evals.probing import pooled_from_cache, sparse_probing, topk_by_mean_diff, wiki_vital_labels
from evals.reconstruction import ReconstructionStats
from evals.result import EvalResult, comparison_table
from evals.splice import spliced_losses, spliced_losses_many
from evals.supervised.run import SupervisedConfig, supervised_eval  # sae eval --task
from evals.tasks import make_task

__all__ = [
    "CachePassResult",
    "ContextBatch",
    "EvalConfig",
    "EvalResult",
    "FeatureStats",
    "Interval",
    "ReconstructionStats",
    "SAERef",
    "SupervisedConfig",
    "absorption",
    "bootstrap_interval",
    "cache_contexts",
    "cache_pass",
    "check_fits_cache",
    "check_fits_model",
    "comparison_table",
    "corpus_contexts",
    "corpus_probing",
    "evaluate",
    "evaluate_many",
    "make_task",
    "expand_sae_paths",
    "load_for_eval",
    "max_cosine_to_others",
    "paired_bootstrap_interval",
    "pareto_plot",
    "pooled_from_cache",
    "ratio_interval",
    "sparse_probing",
    "spliced_losses",
    "spliced_losses_many",
    "supervised_eval",
    "topk_by_mean_diff",
    "weight_stats",
    "wiki_vital_labels",
]
