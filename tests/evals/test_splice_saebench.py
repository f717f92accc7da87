"""Our spliced CE/KL against SAEBench's core procedure, written out plainly in SAEBench's own terms.

The reference below follows `sae_bench/evals/core/main.py` (`get_recons_loss` and
`get_downstream_reconstruction_metrics`) step by step, on the very token tensors our contexts hold:
`ignore_tokens = {pad, eos, bos}` (what its `multiple_evals` passes), a mask `m = tokens not in
ignore_tokens`, three separate forward passes (clean; the SAE's output where `m`, the original
elsewhere; every position zeroed), per-token CE as TransformerLens's `loss_per_token` returns it
(`[B, T-1]`: position t predicting token t+1) and per-token KL (`[B, T]`), each kept where the
mask says (`m[:, :-1]` for CE, `m` for KL), concatenated over batches and averaged.
Nothing here uses our contexts' `keep` or our stacked pass.
"""

from __future__ import annotations

import math

import pytest
import torch

from evals import cache_contexts, spliced_losses
from harvesting import CacheReader

from .conftest import HOOK, make_sae


@pytest.fixture(scope="module")
def contexts(tiny_cache):
    """Twelve held-out contexts; several hold an EOS separator between two documents."""
    return list(cache_contexts(CacheReader(tiny_cache), HOOK, heldout_fraction=0.1, max_contexts=12, batch_contexts=4))


def _ignore_tokens(tiny_lm) -> set[int]:
    tok = tiny_lm.tokenizer
    return {tok.pad_token_id, tok.eos_token_id, tok.bos_token_id}


def saebench_core(lm, sae, hook: str, batches: list[torch.Tensor], ignore_tokens: set[int], *,
                  exclude_special_tokens_from_reconstruction: bool = True) -> dict[str, float]:
    """SAEBench's downstream reconstruction metrics over token batches `[B, T]` (BOS already first)."""
    per_token: dict[str, list[torch.Tensor]] = {k: [] for k in (
        "kl_div_with_sae", "kl_div_with_ablation", "ce_loss_with_sae", "ce_loss_without_sae", "ce_loss_with_ablation")}
    for batch_tokens in batches:
        not_special = ~torch.stack([batch_tokens == t for t in ignore_tokens]).any(0)
        mask = not_special if exclude_special_tokens_from_reconstruction else torch.ones_like(not_special)

        def replacement_hook(act, hook=None):
            rec = sae(act.reshape(-1, act.shape[-1])).reshape(act.shape).to(act.dtype)
            return torch.where(mask[..., None], rec, act)

        def zero_ablate_hook(act, hook=None):
            return torch.zeros_like(act)

        def run(fwd_hooks):
            with lm.bridge.hooks(fwd_hooks=fwd_hooks):
                return lm.bridge(batch_tokens).float()

        def ce_per_token(logits):  # TransformerLens loss_per_token=True
            lp = torch.log_softmax(logits, -1)
            return -lp[:, :-1].gather(-1, batch_tokens[:, 1:, None])[..., 0]

        def kl(original_logits, new_logits):
            p = torch.softmax(original_logits, -1)
            return (p * (torch.log_softmax(original_logits, -1) - torch.log_softmax(new_logits, -1))).sum(-1)

        with torch.no_grad():
            clean = run([])
            recons = run([(hook, replacement_hook)])
            zero = run([(hook, zero_ablate_hook)])
        metrics = {"kl_div_with_sae": kl(clean, recons), "kl_div_with_ablation": kl(clean, zero),
                   "ce_loss_with_sae": ce_per_token(recons), "ce_loss_without_sae": ce_per_token(clean),
                   "ce_loss_with_ablation": ce_per_token(zero)}
        for name, value in metrics.items():
            m = not_special  # the metrics are always filtered by ignore_tokens
            if value.shape[1] != m.shape[1]:
                m = m[:, :-1]  # CE is missing the last position
            per_token[name].append(value[m])
    out = {k: float(torch.cat(v).mean()) for k, v in per_token.items()}
    out["kl_div_score"] = (out["kl_div_with_ablation"] - out["kl_div_with_sae"]) / out["kl_div_with_ablation"]
    out["ce_loss_score"] = ((out["ce_loss_with_ablation"] - out["ce_loss_with_sae"])
                            / (out["ce_loss_with_ablation"] - out["ce_loss_without_sae"]))
    out["ce_tokens"] = sum(len(v) for v in per_token["ce_loss_with_sae"])
    out["kl_tokens"] = sum(len(v) for v in per_token["kl_div_with_sae"])
    return out


OURS_TO_SAEBENCH = {"ce_clean": "ce_loss_without_sae", "ce_sae": "ce_loss_with_sae", "ce_zero": "ce_loss_with_ablation",
                    "kl_sae": "kl_div_with_sae", "kl_zero": "kl_div_with_ablation", "ce_loss_score": "ce_loss_score",
                    "kl_div_score": "kl_div_score"}


def _compare(got: dict, ref: dict) -> None:
    for ours, theirs in OURS_TO_SAEBENCH.items():
        assert got[ours] == pytest.approx(ref[theirs], rel=2e-4, abs=1e-6), (ours, got[ours], ref[theirs])
    assert got["ce_tokens"] == ref["ce_tokens"] and got["kl_tokens"] == ref["kl_tokens"]


def test_contexts_hold_separators(tiny_lm, contexts) -> None:
    """The comparison below means something only if EOS separators sit inside the contexts."""
    sep = tiny_lm.tokenizer.eos_token_id
    t = torch.cat([c.tokens for c in contexts])
    assert int((t[:, 1:] == sep).sum()) >= 3


def test_matches_saebench_with_special_tokens_excluded(tiny_lm, contexts) -> None:
    """Default: SAEBench with exclude_special_tokens_from_reconstruction=True, ignore_tokens {pad, eos, bos}."""
    sae = make_sae(seed=3)
    got = spliced_losses(tiny_lm, sae, HOOK, contexts, error_term=False)
    ref = saebench_core(tiny_lm, sae, HOOK, [c.tokens for c in contexts], _ignore_tokens(tiny_lm))
    _compare(got, ref)
    assert got["ce_sae"] != got["ce_clean"] and got["kl_sae"] > 0  # the SAE is really spliced in


def test_matches_saebench_with_every_position_reconstructed(tiny_lm, contexts) -> None:
    """`splice_positions="all"`: SAEBench's exclude_special_tokens_from_reconstruction=False (BOS spliced too)."""
    sae = make_sae(seed=4)
    got = spliced_losses(tiny_lm, sae, HOOK, contexts, error_term=False, splice_positions="all")
    ref = saebench_core(tiny_lm, sae, HOOK, [c.tokens for c in contexts], _ignore_tokens(tiny_lm),
                        exclude_special_tokens_from_reconstruction=False)
    _compare(got, ref)
    text_only = spliced_losses(tiny_lm, sae, HOOK, contexts, error_term=False)
    assert got["ce_sae"] != pytest.approx(text_only["ce_sae"], rel=1e-4)  # the option changes what is spliced


def test_zero_ablation_leaves_no_position_clean(tiny_lm, contexts) -> None:
    """A bias-free Llama whose residual stream is zeroed at every position (BOS too) has zero logits
    everywhere after it: every prediction is uniform, so CE under zero ablation is exactly log(vocab).
    A BOS kept clean would leak through attention and move it."""
    r = spliced_losses(tiny_lm, make_sae(seed=5), HOOK, contexts, error_term=False)
    assert r["ce_zero"] == pytest.approx(math.log(tiny_lm.bridge.cfg.d_vocab), rel=1e-6)
    assert r["definition"]["zero_ablation"].startswith("every position")


def test_definition_names_saebench_settings(tiny_lm, contexts) -> None:
    r = spliced_losses(tiny_lm, make_sae(seed=5), HOOK, contexts[:1], error_term=False)
    d = r["definition"]
    assert d["exclude_special_tokens_from_reconstruction"] is True
    assert sorted(d["ignore_tokens"]) == sorted(_ignore_tokens(tiny_lm))
    r = spliced_losses(tiny_lm, make_sae(seed=5), HOOK, contexts[:1], error_term=False, splice_positions="all")
    assert r["definition"]["exclude_special_tokens_from_reconstruction"] is False
