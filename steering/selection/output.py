"""Output score (Arad, Mueller, Belinkov 2025): what a feature makes the model write next.

For each feature j: run a neutral prompt ("From my experience,"); at its last position add
`scale x (largest SAE activation there, over all features)` to feature j and decode with the
error term; p = the next-token distribution. With T_j the feature's logit-lens tokens (the 20
most likely of softmax(W_U . final_norm(d_j))),

    OS_j = (1 - min_{t in T_j} rank_p(t) / |V|) * max_{t in T_j} p(t).

Adding to feature j's code and decoding with the error term is exactly `x + c * W_dec[j]`
(decoding is linear in the codes), so that is what is added. Features are a batch dimension:
each row of one forward pass carries its own feature at the last position, so all features of
an SAE score in a few dozen passes over a handful of tokens.

The same pass scores a concept (`concept_output`): the total next-token probability of the
concept's target tokens, i.e. the probability that the next token starts a target word. That is
the quantity the sweep's `target_logprob` measures on generated text (its log), so the feature
this ranks first is the one that pushes most directly toward what the sweep rewards; a sum, not a
max, because any target word counts as a hit.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from steering.interventions import AddVector, steering
from steering.positions import Positions
from steering.reading import _device, chunks, encode_texts
from workbench.errors import WorkbenchError
from workbench.hooks import capture

NEUTRAL_PROMPT = "From my experience,"


@dataclass
class OutputScores:
    features: Tensor  # [n] the scored features
    output: Tensor  # [n] OS_j
    target_prob: Tensor | None  # [n] total next-token probability of the target tokens (None without targets)
    coeff: float  # what was added: scale * the largest SAE activation at the prompt's last position
    base_target_prob: float | None  # the same total, unsteered


def lens_tokens(lm: Any, sae: Any, features: Tensor | None = None, n: int = 20) -> Tensor:
    """`[n_features, n]` logit-lens tokens T_j: top of `W_dec[j] @ W_U` with the final norm's gain folded in."""
    from evals.features.lens import load_unembedding, logit_lens

    w_u = load_unembedding(lm)
    if w_u is None:
        raise WorkbenchError(f"{getattr(lm, 'model_id', 'this model')} has no unembedding; the output score needs one")
    w = sae.W_dec.detach().float().cpu()
    if features is not None:
        w = w[features]
    return logit_lens(w, w_u, n)["logit_top_ids"]


@torch.no_grad()
def output_scores(lm: Any, sae: Any, features: Tensor | list[int] | None = None, *, prompt: str = NEUTRAL_PROMPT,
                  scale: float = 10.0, n_lens: int = 20, targets: list[int] | None = None,
                  batch_size: int = 64, lens: Tensor | None = None, use_cache: bool = True) -> OutputScores:
    """OS_j for the given features (default: all), batched; with `targets`, also their total probability.

    With `use_cache` the prompt but its last token runs once, and each batch of features runs only the
    last token on a copy of that KV cache (the edit is at the last position, so nothing before it
    changes): about |prompt| times fewer token-layer operations than re-running the prompt per row."""
    hook = sae.cfg.hook
    feats = torch.arange(sae.num_features) if features is None else torch.as_tensor(features, dtype=torch.long)
    if feats.numel() == 0:
        raise WorkbenchError("no features to score")
    b = encode_texts(lm, [prompt])
    dev = _device(lm)
    tokens = b.tokens.to(dev)
    width = tokens.shape[1]
    x = capture(lm, tokens, [hook], stop=True)[hook][0, -1].float()
    w = sae.W_dec.detach()
    top = float(sae.encode(x.to(device=w.device, dtype=w.dtype)[None]).vals.max().clamp_min(0))
    coeff = scale * top
    t_ids = lens if lens is not None else lens_tokens(lm, sae, feats, n_lens)
    tgt = torch.tensor(sorted(set(targets)), dtype=torch.long) if targets else None
    os_, tp = torch.empty(feats.numel()), torch.empty(feats.numel()) if tgt is not None else None
    base_tp = None
    if tgt is not None:
        p0 = torch.softmax(lm.bridge(tokens)[0, -1].float().cpu(), -1)
        base_tp = float(p0[tgt].sum())
    prefix = _prefix_cache(lm, tokens) if use_cache else None
    for sl in chunks(feats.numel(), batch_size):
        fs = feats[sl]
        vec = (coeff * w[fs.to(w.device)].float()).unsqueeze(1)  # [B, 1, d]: each row its own feature
        iv = AddVector(hook, vec, 1.0, Positions("last"), label="output score")
        with steering(lm, [iv], prompt_len=width):
            if prefix is not None:  # only the last token runs, on a copy of the prefix's KV cache per row
                cache = copy.deepcopy(prefix)
                cache.batch_repeat_interleave(len(fs))
                logits = lm.bridge(tokens[:, -1:].expand(len(fs), 1), past_key_values=cache)[:, -1].float().cpu()
            else:
                logits = lm.bridge(tokens.expand(len(fs), -1))[:, -1].float().cpu()
        p = torch.softmax(logits, -1)
        os_[sl] = os_from_probs(p, t_ids[sl])
        if tp is not None:
            tp[sl] = p[:, tgt].sum(-1)
    return OutputScores(feats, os_, tp, coeff, base_tp)


def _prefix_cache(lm: Any, tokens: Tensor) -> Any:
    """The KV cache of all but the prompt's last token, or None where the bridge gives none."""
    if tokens.shape[1] < 2:
        return None
    try:
        _, cache = lm.bridge(tokens[:, :-1], return_type="logits_and_cache")
    except Exception:  # noqa: BLE001 - a bridge without a manual KV cache: re-run the prompt per row
        return None
    return cache if hasattr(cache, "batch_repeat_interleave") else None


def os_from_probs(p: Tensor, t_ids: Tensor) -> Tensor:
    """`(1 - min rank / |V|) * max p` over each row's tokens; rank 0 is the most likely token.

    The token of T_j with the lowest rank is the one with the highest probability, so its rank is
    the number of tokens strictly more likely than `max_{t in T_j} p(t)`.
    """
    pt = p.gather(1, t_ids)
    best = pt.max(1).values
    rank = (p > best[:, None]).sum(1).float()
    return (1 - rank / p.shape[1]) * best
