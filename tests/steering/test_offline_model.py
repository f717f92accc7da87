"""On the real offline model: a DiffMean 'ocean' vector puts the concept into greedy text, and the judge sees it."""

from __future__ import annotations

import pytest
import torch

from steering import (
    STEER_PROMPTS,
    Judge,
    add_direction,
    diffmean,
    generate,
    load_concept,
    measure_stats,
    neutral_texts,
    score_generation,
)
from steering.reading import hook_activations

HOOK = "blocks.8.hook_resid_post"


@pytest.mark.integration
def test_diffmean_steers_the_offline_model_toward_the_concept():
    from workbench.models import load_model

    torch.set_num_threads(2)
    lm = load_model("smollm2-135m")
    c = load_concept("ocean")
    v = diffmean(hook_activations(lm, c.positive, HOOK), hook_activations(lm, c.negative, HOOK))
    stats = measure_stats(lm, neutral_texts(2), HOOK, max_tokens=64)
    prompts = STEER_PROMPTS[:4]
    judge = Judge(HOOK, probe=v / v.norm(), target_words=tuple(c.target_words))
    base = score_generation(lm, generate(lm, prompts, [], max_new_tokens=12), judge)
    iv = add_direction(HOOK, v, 0.4, unit="norm", stats=stats)
    steered = score_generation(lm, generate(lm, prompts, [iv], max_new_tokens=12), judge)
    hits = lambda rows: sum(r["target_hit"] for r in rows)  # noqa: E731
    assert hits(steered) >= hits(base) + 2
    assert sum(r["probe"] for r in steered) > sum(r["probe"] for r in base)
    assert sum(r["target_logprob"] for r in steered) > sum(r["target_logprob"] for r in base)
