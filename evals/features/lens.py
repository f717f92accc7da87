"""What the weights alone say about a feature: logit lens and nearest decoder directions."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def load_unembedding(lm: Any) -> Tensor | None:
    """The model's unembedding `W_U [d_model, vocab]` (`LoadedModel.unembed`; a bare bridge's `W_U`, or
    the Hugging Face output embedding, for objects that lack it)."""
    for get in (lambda: lm.unembed, lambda: lm.bridge.W_U,
                lambda: lm.bridge.original_model.get_output_embeddings().weight.t()):
        try:
            w = get()
        except Exception:  # noqa: BLE001 - try the next place the matrix may live
            continue
        if isinstance(w, Tensor) and w.dim() == 2:
            return w.detach().float().cpu()
    return None


@torch.no_grad()
def logit_lens(w_dec: Tensor, w_u: Tensor, n: int, bins: int = 30, chunk: int = 256) -> dict[str, Tensor]:
    """Top/bottom `n` tokens of `W_dec[f] @ W_U` for every feature, plus a histogram of all its logits.

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
