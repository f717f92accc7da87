"""What the weights alone say about a feature: logit lens and nearest decoder directions.

The logit lens of a decoder direction `d` is what the model writes when its residual stream points
along `d`: the final norm, then the unembedding. The norm's scale (1 / rms) is one positive number
per direction and changes no ranking, so it is left out; its per-dimension gain is not, and is
folded into the unembedding once (`diag(g) W_U`). Trained gains are far from ones (SmolLM2-135M's
runs from -2.1 to 3.3; the raw `lm_head` ranks different tokens). Biases are left out on purpose:
LayerNorm's beta and the unembedding's bias are what the model writes for an empty residual, the
same for every direction, so they say nothing about the direction itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinalNorm:
    """The final norm as it acts on a direction: `gain * (d - mean(d) if centres else d)`, up to scale."""

    gain: Tensor  # [d_model], effective: Gemma-style norms store w and multiply by 1 + w
    centres: bool  # LayerNorm subtracts the mean over d_model first; RMSNorm does not
    kind: str  # "rmsnorm", "rmsnorm (1 + w)" or "layernorm", for messages and metadata


def final_norm(lm: Any) -> FinalNorm | None:
    """The final norm of a bridged model (`lm.bridge.ln_final`, TransformerLens 4), or None if the
    model has no bridge or the bridge no final norm.

    The bridge wraps the Hugging Face module (`model.norm` for Llama-family models,
    `transformer.ln_f` for GPT-2) and says whether it is an RMSNorm (no centring, no bias) and
    whether its weight is an offset from one (`rmsnorm_uses_offset`: Gemma, Gemma 2 and 3).
    """
    ln = getattr(getattr(lm, "bridge", None), "ln_final", None)
    module = getattr(ln, "original_component", None)
    if ln is None or module is None or isinstance(module, torch.nn.Identity):
        return None
    rms = bool(ln.uses_rms_norm)
    offset = bool(getattr(ln, "uses_weight_offset", False))
    w = getattr(module, "weight", None)
    if w is None:  # a norm without an affine gain (elementwise_affine=False)
        d = lm.bridge.cfg.d_model
        gain = torch.zeros(d) if offset else torch.ones(d)
    else:
        gain = w.detach().float().cpu()
    if offset:
        gain = 1 + gain
    kind = ("rmsnorm (1 + w)" if offset else "rmsnorm") if rms else "layernorm"
    return FinalNorm(gain=gain, centres=not rms, kind=kind)


def fold_final_norm(w_u: Tensor, norm: FinalNorm) -> Tensor:
    """`W_U` a direction is read through: `P diag(g) W_U`, so `d @ result = (g * P d) @ W_U`, with
    `P` the centring LayerNorm applies (subtract each column's mean over d_model) or the identity."""
    w = norm.gain.to(w_u)[:, None] * w_u
    return w - w.mean(0, keepdim=True) if norm.centres else w


def load_unembedding(lm: Any, fold_norm: bool = True) -> Tensor | None:
    """The matrix `[d_model, vocab]` the logit lens reads a direction through: the model's
    unembedding (`LoadedModel.unembed`; a bare bridge's `W_U`, or the Hugging Face output embedding,
    for objects that lack it) with the final norm's gain folded in (`fold_final_norm`).

    A stand-in without a model (`SimpleNamespace(unembed=...)`, benchmarks) is taken as given;
    a model whose final norm cannot be found is read through the raw unembedding, with a warning.
    `fold_norm=False` gives the raw unembedding.
    """
    for get in (lambda: lm.unembed, lambda: lm.bridge.W_U,
                lambda: lm.bridge.original_model.get_output_embeddings().weight.t()):
        try:
            w = get()
        except Exception:  # noqa: BLE001 - try the next place the matrix may live
            continue
        if isinstance(w, Tensor) and w.dim() == 2:
            w = w.detach().float().cpu()
            break
    else:
        return None
    if not fold_norm or getattr(lm, "bridge", None) is None:
        return w
    norm = final_norm(lm)
    if norm is None:
        log.warning("found no final norm on %s; the logit lens reads directions through the raw unembedding",
                    getattr(lm, "model_id", type(lm).__name__))
        return w
    if norm.gain.shape != (w.shape[0],):
        log.warning("the final norm's gain has shape %s but W_U has d_model=%d; the logit lens uses the raw "
                    "unembedding", tuple(norm.gain.shape), w.shape[0])
        return w
    return fold_final_norm(w, norm)


@torch.no_grad()
def logit_lens(w_dec: Tensor, w_u: Tensor, n: int, bins: int = 30, chunk: int = 256) -> dict[str, Tensor]:
    """Top/bottom `n` tokens of `W_dec[f] @ W_U` for every feature, plus a histogram of all its logits.

    Give `W_U` from `load_unembedding`, with the final norm folded in: the values are then the
    model's logits for a residual along `W_dec[f]` (less those for an empty one) up to one positive
    factor per feature, so rankings and histogram shapes are the model's own.
    Chunked over features so the `[F, vocab]` matrix never exists at once.
    """
    f_n = w_dec.shape[0]
    n = min(n, w_u.shape[1])
    out = {
        "logit_top_ids": torch.empty(f_n, n, dtype=torch.long), "logit_top_vals": torch.empty(f_n, n),
        "logit_bot_ids": torch.empty(f_n, n, dtype=torch.long), "logit_bot_vals": torch.empty(f_n, n),
        "logit_hist": torch.empty(f_n, bins, dtype=torch.long), "logit_lo": torch.empty(f_n), "logit_hi": torch.empty(f_n),
    }
    for a in range(0, f_n, chunk):
        logits = w_dec[a:a + chunk] @ w_u
        tv, ti = torch.topk(logits, n, dim=1)
        bv, bi = torch.topk(logits, n, dim=1, largest=False)
        lo, hi = logits.min(1).values, logits.max(1).values
        c = logits.shape[0]
        # bin index in place, then one bincount over (row, bin): no [chunk, vocab] temporaries
        logits.sub_(lo[:, None]).mul_((bins / (hi - lo).clamp_min(1e-12))[:, None]).clamp_(0, bins - 1)
        b = logits.to(torch.int64).add_(torch.arange(c)[:, None] * bins)
        hist = torch.bincount(b.view(-1), minlength=c * bins).view(c, bins)
        sl = slice(a, a + logits.shape[0])
        out["logit_top_ids"][sl], out["logit_top_vals"][sl] = ti, tv
        out["logit_bot_ids"][sl], out["logit_bot_vals"][sl] = bi, bv
        out["logit_hist"][sl], out["logit_lo"][sl], out["logit_hi"][sl] = hist, lo, hi
    return out


@torch.no_grad()
def nearest_decoders(w_dec: Tensor, n: int, chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """Per feature, the `n` other features whose decoder directions have the highest cosine."""
    f_n = w_dec.shape[0]
    m = min(n, f_n - 1)
    unit = w_dec / w_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    ids = torch.full((f_n, n), -1, dtype=torch.long)
    vals = torch.full((f_n, n), float("nan"))
    for a in range(0, f_n, chunk):
        cos = unit[a:a + chunk] @ unit.t()
        r = torch.arange(cos.shape[0])
        cos[r, r + a] = float("-inf")
        v, i = torch.topk(cos, m, dim=1)
        ids[a:a + cos.shape[0], :m], vals[a:a + cos.shape[0], :m] = i, v
    return ids, vals


def _word_piece(tokenizer: Any) -> bool:
    """Whether single-token decodes lose the spaces between words (WordPiece), unlike byte BPE."""
    try:
        ids = tokenizer.encode("hello world", add_special_tokens=False)
        return len(ids) > 1 and " " not in "".join(tokenizer.decode([i]) for i in ids)
    except Exception:  # noqa: BLE001
        return False


def token_strings(tokenizer: Any, ids: list[int]) -> dict[str, str]:
    """id -> the text of that one token as it reads in running text (BPE keeps its leading space;
    WordPiece gets one unless the piece continues a word, `##ing`)."""
    wp = _word_piece(tokenizer)
    out = {}
    for i in ids:
        try:
            text = tokenizer.decode([i])
            if wp:
                piece = tokenizer.convert_ids_to_tokens(i)
                text = piece[2:] if piece.startswith("##") else " " + text
            out[str(i)] = text
        except Exception:  # noqa: BLE001 - an id outside this tokenizer shows as its number
            out[str(i)] = f"<{i}>"
    return out
