"""Token contexts for the spliced evaluation: rebuilt from a cache's held-out rows, or packed from a corpus.

A cache stores, for every kept position, its token id, context id and position, plus the model's
prefix (BOS) and suffix ids in the manifest; that is enough to rebuild each context exactly as
the harvest fed it to the model, so the spliced loss is measured on the very documents the
SAE's held-out metrics use, and those never reached training.

The cache also stores the EOS separating packed documents as a row (the SAE trains on it), but
SAEBench neither splices nor scores BOS, EOS or padding (its `ignore_tokens`), so `keep` marks
text positions only: stored rows whose token is none of those ids.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from harvesting import CacheReader
from workbench.errors import WorkbenchError


@dataclass
class ContextBatch:
    """`tokens [B, T]` as fed to the model, and `keep [B, T]`: True where the token is text, i.e. none
    of `special_ids` (BOS/CLS, the EOS/SEP between packed documents, padding: SAEBench's
    `ignore_tokens`); the SAE is spliced in there, and loss is measured from there."""

    tokens: Tensor
    keep: Tensor
    special_ids: tuple[int, ...] = ()


def special_ids(prefix: list[int] | tuple[int, ...], suffix: list[int] | tuple[int, ...], separator: int | None,
                pad: int | None) -> tuple[int, ...]:
    """BOS (prefix), SEP (suffix), the EOS separator and padding: the ids SAEBench ignores ({bos, eos, pad})."""
    ids = set(prefix) | set(suffix) | {separator, pad}
    return tuple(sorted(int(i) for i in ids if i is not None))


def _text(tokens: Tensor, kept: Tensor, special: tuple[int, ...]) -> Tensor:
    """`kept` (a stored or packed position) and not a special token."""
    return kept & ~torch.isin(tokens, torch.tensor(special, dtype=tokens.dtype))


def cache_contexts(reader: CacheReader, hook: str, *, split: str = "heldout", heldout_fraction: float = 0.01,
                   max_contexts: int = 160, batch_contexts: int = 4) -> Iterator[ContextBatch]:
    """Rebuild up to `max_contexts` contexts of the cache's `split`, `batch_contexts` at a time."""
    m = reader.manifest
    if m.get("model", {}).get("modality", "text") != "text" or "token_ids" not in m.get("row_fields", []):
        raise WorkbenchError(f"the cache at {str(reader.path)!r} holds no token ids (not a text harvest); "
                             f"give a corpus for the spliced evaluation instead")
    tok = m.get("tokenizer") or {}
    length = int(m["context_length"])
    prefix = list(tok.get("prefix_ids") or [])
    suffix = list(tok.get("suffix_ids") or [])
    pad = int(tok.get("pad_id") or 0)
    special = special_ids(prefix, suffix, tok.get("separator_id"), pad)
    pending: dict[int, tuple[Tensor, Tensor]] = {}
    order: list[int] = []
    done = 0
    out_t: list[Tensor] = []
    out_k: list[Tensor] = []

    def build(ctx: int) -> tuple[Tensor, Tensor]:
        ids, pos = pending.pop(ctx)
        t = torch.full((length,), pad, dtype=torch.long)
        k = torch.zeros(length, dtype=torch.bool)
        t[: len(prefix)] = torch.tensor(prefix, dtype=torch.long)
        t[pos] = ids
        k[pos] = True
        if suffix:
            end = int(pos.max()) + 1
            t[end:end + len(suffix)] = torch.tensor(suffix, dtype=torch.long)
        return t, _text(t, k, special)

    rows = reader.batches(hook, 8192, shuffle=False, split=split, heldout_fraction=heldout_fraction,
                          drop_last=False, with_ids=True, prefetch=0, window_shards=1)
    first = True
    for batch in rows:
        ctx_ids = batch["context_ids"]
        for c in torch.unique_consecutive(ctx_ids).tolist():
            sel = ctx_ids == c
            ids, pos = batch["token_ids"][sel].long(), batch["positions"][sel].long()
            if first:
                first = False
                if int(pos.min()) > len(prefix):
                    # the held-out split starts at a document boundary, which may fall inside a context:
                    # its earlier tokens are on the training side, so that context is not rebuilt
                    continue
            if c in pending:  # a context split across two reader batches
                ids = torch.cat([pending[c][0], ids])
                pos = torch.cat([pending[c][1], pos])
            else:
                order.append(c)
            pending[c] = (ids, pos)
        # every context but the last of this batch is complete (rows come in cache order)
        while len(order) > 1 and done < max_contexts:
            t, k = build(order.pop(0))
            out_t.append(t)
            out_k.append(k)
            done += 1
            if len(out_t) == batch_contexts:
                yield ContextBatch(torch.stack(out_t), torch.stack(out_k), special)
                out_t, out_k = [], []
        if done >= max_contexts:
            break
    if done < max_contexts and order:
        t, k = build(order.pop(0))
        out_t.append(t)
        out_k.append(k)
    if out_t:
        yield ContextBatch(torch.stack(out_t), torch.stack(out_k), special)


def corpus_contexts(lm, corpus: str, *, context_length: int = 128, max_contexts: int = 160, batch_contexts: int = 4,
                    seed: int = 0) -> Iterator[ContextBatch]:
    """Contexts packed from any corpus exactly as `sae harvest` packs them (BOS and separators never
    spliced nor scored)."""
    import itertools

    from harvesting import open_documents, pack_contexts

    if lm.tokenizer is None:
        raise WorkbenchError(f"{lm.model_id} has no tokenizer; the spliced evaluation needs a text model")
    docs = open_documents(corpus, seed=seed)
    contexts = pack_contexts(docs, lm.tokenizer, context_length, lm.prefix_ids, lm.suffix_ids, lm.separator_id,
                             lm.pad_id)
    special = special_ids(lm.prefix_ids, lm.suffix_ids, lm.separator_id, lm.pad_id)
    contexts = itertools.islice(contexts, max_contexts)
    while True:
        chunk = list(itertools.islice(contexts, batch_contexts))
        if not chunk:
            return
        tokens = torch.stack([c.input_ids for c in chunk])
        yield ContextBatch(tokens, _text(tokens, torch.stack([c.keep for c in chunk]), special), special)
