"""Every vector records what it was extracted from: the texts on each side and the token positions
pooled. Checked by rebuilding DiffMean text by text from the record alone (one unbatched forward per
text, no padding, the recorded positions averaged) and by the sweep carrying the record."""

from __future__ import annotations

import torch

from steering import VectorSource, diffmean, read_concept
from workbench.hooks import capture

from .conftest import HOOK

POS = ["the cat sat on the mat", "a dog ran", "what is the capital of france and why"]
NEG = ["hello there", "one two three four", "a table"]


def _rebuild(lm, texts, positions):
    rows = []
    for text, where in zip(texts, positions):
        ids = list(lm.prefix_ids) + lm.tokenizer(text, add_special_tokens=False)["input_ids"]
        acts = capture(lm, torch.tensor([ids]), [HOOK], stop=True)[HOOK][0].float()
        rows.append(acts[where].mean(0))
    return torch.stack(rows).mean(0)


def test_diffmean_rebuilds_from_its_source_record(tiny_lm):
    for read in ("mean", "last"):
        pos, neg, src = read_concept(tiny_lm, POS, NEG, HOOK, read=read)
        assert isinstance(src, VectorSource) and src.hook == HOOK and src.read == read
        assert src.positive == POS and src.negative == NEG
        for text, where in zip(POS + NEG, src.positive_positions + src.negative_positions):
            n = len(tiny_lm.prefix_ids) + len(tiny_lm.tokenizer(text, add_special_tokens=False)["input_ids"])
            assert 0 not in where  # the BOS outlier is never read
            assert where == ([n - 1] if read == "last" else list(range(1, n)))
        ref = _rebuild(tiny_lm, POS, src.positive_positions) - _rebuild(tiny_lm, NEG, src.negative_positions)
        torch.testing.assert_close(diffmean(pos, neg), ref, atol=1e-4, rtol=1e-4)
        assert src.to_dict()["positive_positions"] == src.positive_positions


def test_sweep_directions_carry_their_source(tiny_lm, tiny_sae):
    from steering import SweepConfig
    from steering.sweep import concept_directions
    from steering.concepts import Concept

    c = Concept("toy", POS, NEG, ["cat"], POS[:2], NEG[:2])
    cfg = SweepConfig(sae="unused", methods=("diffmean", "pca"), concepts=("ocean",))
    _, _, found = concept_directions(tiny_lm, tiny_sae, c, cfg)
    assert found["source"]["positive"] == POS and found["source"]["hook"] == HOOK
    assert len(found["source"]["negative_positions"]) == len(NEG)
