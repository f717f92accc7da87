"""Texts to token batches, and a model's activations and log-probabilities over them.

Reading (scoring, collecting activations) pads on the right: in a causal model real tokens never
attend to later pads, so every row is computed exactly as it would be alone, with no attention
mask or position-id bookkeeping. Generation pads on the left (the bridge's generate wants the
last real token last) and passes the mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from workbench.errors import WorkbenchError
from workbench.hooks import capture


@dataclass
class TokenBatch:
    tokens: Tensor  # [B, S]
    mask: Tensor  # [B, S] bool, real tokens (the BOS prefix included)
    left_pad: Tensor  # [B] pads before each row's first real token (0 when padded on the right)

    @property
    def lengths(self) -> Tensor:
        return self.mask.sum(1)


def token_ids(lm: Any, text: str) -> list[int]:
    if lm.tokenizer is None:
        raise WorkbenchError(f"{lm.model_id} has no tokenizer; steering needs a text model")
    return list(lm.tokenizer(text, add_special_tokens=False)["input_ids"])


def pad_batch(lm: Any, rows: list[list[int]], side: str = "right") -> TokenBatch:
    """Rows of ids (prefix already included) padded into one batch."""
    if not rows:
        raise WorkbenchError("no texts to read: the prompt set is empty")
    width = max(len(r) for r in rows)
    toks = torch.full((len(rows), width), int(lm.pad_id), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    left = torch.zeros(len(rows), dtype=torch.long)
    for i, r in enumerate(rows):
        if side == "left":
            left[i] = width - len(r)
            toks[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = True
        else:
            toks[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = True
    return TokenBatch(toks, mask, left)


def encode_texts(lm: Any, texts: list[str], side: str = "right", max_tokens: int | None = None) -> TokenBatch:
    """Texts with the model's prefix (BOS) in front of each, padded on one side."""
    rows = []
    for t in texts:
        ids = token_ids(lm, t)
        if not ids:
            raise WorkbenchError(f"text {t!r} has no tokens")
        rows.append(list(lm.prefix_ids) + ids[: max_tokens or None])
    return pad_batch(lm, rows, side)


def _device(lm: Any) -> torch.device:
    return next(iter(lm.bridge.parameters())).device


def chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def hook_activations(lm: Any, texts: list[str], hook: str, *, read: str = "mean", batch_size: int = 16,
                     skip_prefix: bool = True, max_tokens: int | None = None) -> Tensor:
    """Per text, the hook's activation at the last token (`last`), the mean over tokens (`mean`),
    or every token stacked (`all`, -> [tokens, d]). The BOS prefix is skipped: its activations are
    off-distribution outliers."""
    if read not in ("mean", "last", "all"):
        raise WorkbenchError(f"unknown read {read!r}; valid choices: mean, last, all")
    out = []
    for sl in chunks(len(texts), batch_size):
        b = encode_texts(lm, texts[sl], max_tokens=max_tokens)
        acts = capture(lm, b.tokens.to(_device(lm)), [hook], stop=True)[hook].float().cpu()
        mask = b.mask.clone()
        if skip_prefix and lm.prefix_ids:
            mask[:, : len(lm.prefix_ids)] = False
        for i in range(acts.shape[0]):
            rows = acts[i][mask[i]]
            out.append(rows.mean(0, keepdim=True) if read == "mean" else rows[-1:] if read == "last" else rows)
    return torch.cat(out)


def logprobs(lm: Any, batch: TokenBatch, *, steer: Any = None) -> Tensor:
    """`[B, S, vocab]` next-token log-probabilities (position t predicts t+1), float32 on CPU."""
    from steering.interventions import steering

    with torch.no_grad(), steering(lm, steer or []):
        logits = lm.bridge(batch.tokens.to(_device(lm)))
    return F.log_softmax(logits.float(), dim=-1).cpu()
