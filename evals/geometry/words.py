"""Residual-stream activations at the last token of short texts (a word, or a sentence cut right
after the word): what the days-and-months and word-pair analyses read. In a causal model the
activation at the word does not depend on what follows it, so cutting the sentence there loses
nothing."""

from __future__ import annotations

import numpy as np
import torch

from workbench.hooks import capture


@torch.no_grad()
def last_token_activations(lm, texts: list[str], hooks: list[str]) -> dict[str, np.ndarray]:
    """`{hook: [len(texts), d_model]}`: each text run alone (with the model's prefix, e.g. BOS), read at
    its last token; texts of the same token length are batched."""
    tok = lm.tokenizer
    ids = [list(lm.prefix_ids) + tok.encode(t, add_special_tokens=False) for t in texts]
    out = {h: np.zeros((len(texts), lm.d_model), np.float32) for h in hooks}
    by_len: dict[int, list[int]] = {}
    for i, x in enumerate(ids):
        by_len.setdefault(len(x), []).append(i)
    for n, rows in by_len.items():
        for a in range(0, len(rows), 64):
            part = rows[a:a + 64]
            acts = capture(lm, torch.tensor([ids[i] for i in part]), hooks)
            for h in hooks:
                out[h][part] = acts[h][:, -1].float().numpy()
    return out


def last_token_strings(lm, texts: list[str]) -> list[str]:
    """The last token of each text as the tokenizer splits it (to check a word is one token)."""
    tok = lm.tokenizer
    return [tok.decode(tok.encode(t, add_special_tokens=False)[-1:]) for t in texts]
