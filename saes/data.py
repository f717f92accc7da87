"""Where training batches come from: the activation cache, or tensors already in memory.

The trainer reads through one interface, the cache reader's (`harvesting.CacheReader`):
`hooks`, `d_model(hook)`, `model_id`, `norm_scale(hook)`, `num_batches(...)` and
`batches(hooks, batch_size, *, seed, epoch, start_batch, split, rank, world_size, ...)`, which
yields `dict[hook, Tensor]` in an order fixed by (seed, epoch), so a resumed run reads exactly
the batches it would have read; `dtype=None` asks for the rows as stored (a half cache's stay
half until the trainer has moved them to its device, where it upcasts them to float32). `TensorSource` implements the same interface over in-memory
tensors (benchmarks, tests, notebooks).

Both pick the held-out split by one rule: the rows of the last ceil(C * heldout_fraction) of
the C contexts, the cut then moved to the next document boundary, so neither a context nor a
document straddles the split. In a cache every row records its
context (`context_ids`); a `TensorSource` is told its rows' contexts the same way, and without
them each row is its own context (then the split is the last ceil(N * heldout_fraction) rows).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from workbench.errors import WorkbenchError, choices_error

SPLITS = ("train", "heldout", "all")


class ActivationSource(Protocol):
    hooks: list[str]
    model_id: str

    def d_model(self, hook: str) -> int: ...

    def norm_scale(self, hook: str) -> float: ...

    def num_batches(self, batch_size: int, split: str = "train", heldout_fraction: float = 0.01,
                    drop_last: bool = True) -> int: ...

    def batches(self, hooks: list[str], batch_size: int, **kw: Any) -> Iterator[dict[str, Tensor]]: ...


def heldout_start(context_ids: Tensor, num_contexts: int, heldout_fraction: float,
                  doc_ids: Tensor | None = None) -> int:
    """First held-out row (the cache reader's rule): rows are in context order, held out are those
    of the last ceil(num_contexts * heldout_fraction) contexts, with the cut moved forward past the
    document that straddles it (`doc_ids`, one per row), so no document is on both sides."""
    cutoff = num_contexts - math.ceil(num_contexts * heldout_fraction)
    start = int(torch.searchsorted(context_ids, torch.tensor(cutoff, dtype=context_ids.dtype)))
    if doc_ids is None or not 0 < start < doc_ids.numel():
        return start
    other = torch.nonzero(doc_ids[start:] != doc_ids[start - 1])
    return start + int(other[0]) if other.numel() else doc_ids.numel()


class TensorSource:
    """In-memory activations `{hook: [N, d]}` behind the cache reader's interface.

    The held-out split is either given (`heldout=`) or, as in a cache, the rows of the last
    `heldout_fraction` of the contexts: `context_ids [N]` (non-decreasing) says which context
    each row came from, out of `num_contexts` (default: the last id + 1); without them every row
    is its own context. `doc_ids [N]` (a cache's row field) keeps documents whole on one side.
    Batches are drawn from a permutation seeded by (seed, epoch);
    `rank`/`world_size` give each data-parallel rank its contiguous slice of the same global batch.
    """

    def __init__(self, data: Mapping[str, Tensor] | Tensor, *, heldout: Mapping[str, Tensor] | Tensor | None = None,
                 model_id: str = "", hook: str = "x", context_ids: Tensor | None = None,
                 num_contexts: int | None = None, doc_ids: Tensor | None = None) -> None:
        self.data = {hook: data} if isinstance(data, Tensor) else dict(data)
        self.heldout = None if heldout is None else ({hook: heldout} if isinstance(heldout, Tensor) else dict(heldout))
        if not self.data:
            raise WorkbenchError("TensorSource needs at least one hook's activations")
        n = {t.shape[0] for t in self.data.values()}
        if len(n) != 1 or any(t.dim() != 2 for t in self.data.values()):
            raise WorkbenchError("TensorSource tensors must all be [N, d] with the same N")
        self.hooks = list(self.data)
        self.model_id = model_id
        self.num_tokens = n.pop()
        if context_ids is None:
            context_ids = torch.arange(self.num_tokens)
        context_ids = torch.as_tensor(context_ids).flatten().to(torch.int64)
        if context_ids.numel() != self.num_tokens or bool((context_ids[1:] < context_ids[:-1]).any()):
            raise WorkbenchError(f"context_ids must hold one non-decreasing id per row ({self.num_tokens} rows)")
        self.context_ids = context_ids
        last = int(context_ids[-1]) + 1 if self.num_tokens else 0
        self.num_contexts = last if num_contexts is None else int(num_contexts)
        if self.num_contexts < last:
            raise WorkbenchError(f"num_contexts {self.num_contexts} is below the largest context id + 1 ({last})")
        self.doc_ids = None if doc_ids is None else torch.as_tensor(doc_ids).flatten().to(torch.int64)
        if self.doc_ids is not None and self.doc_ids.numel() != self.num_tokens:
            raise WorkbenchError(f"doc_ids must hold one id per row ({self.num_tokens} rows); got {self.doc_ids.numel()}")
        self._scales: dict[str, float] = {}

    def d_model(self, hook: str) -> int:
        self._check_hook(hook)
        return int(self.data[hook].shape[1])

    def _check_hook(self, hook: str) -> None:
        if hook not in self.data:
            raise choices_error("hook point", hook, self.hooks)

    def _rows(self, split: str, heldout_fraction: float) -> tuple[dict[str, Tensor], int, int]:
        if split not in SPLITS:
            raise choices_error("split", split, SPLITS)
        if self.heldout is not None:
            if split == "heldout":
                return self.heldout, 0, next(iter(self.heldout.values())).shape[0]
            return self.data, 0, self.num_tokens
        cut = heldout_start(self.context_ids, self.num_contexts, heldout_fraction, self.doc_ids)
        if split == "train":
            return self.data, 0, cut
        if split == "heldout":
            return self.data, cut, self.num_tokens
        return self.data, 0, self.num_tokens

    def norm_scale(self, hook: str) -> float:
        """Factor making the mean activation norm sqrt(d) (estimated on up to 64k training rows)."""
        self._check_hook(hook)
        if hook not in self._scales:
            data, lo, hi = self._rows("train", 0.0 if self.heldout is not None else 0.01)
            x = data[hook][lo:min(hi, lo + 65536)].float()
            mean_norm = float(x.norm(dim=1).mean())
            self._scales[hook] = math.sqrt(x.shape[1]) / mean_norm if mean_norm > 0 else 1.0
        return self._scales[hook]

    def num_batches(self, batch_size: int, split: str = "train", heldout_fraction: float = 0.01,
                    drop_last: bool = True) -> int:
        _, lo, hi = self._rows(split, heldout_fraction)
        n = hi - lo
        return n // batch_size if drop_last else -(-n // batch_size)

    def batches(self, hooks: list[str], batch_size: int, *, shuffle: bool = True, seed: int = 0, epoch: int = 0,
                normalize: bool = False, split: str = "train", heldout_fraction: float = 0.01, start_batch: int = 0,
                drop_last: bool = True, rank: int = 0, world_size: int = 1, dtype: torch.dtype | None = torch.float32,
                prefetch: int = 0) -> Iterator[dict[str, Tensor]]:
        """Batches as the cache reader yields them: `dtype` (None: as stored), this rank's slice of each."""
        if batch_size % world_size:
            raise WorkbenchError(f"batch size {batch_size} is not divisible by the world size {world_size}")
        data, lo, hi = self._rows(split, heldout_fraction)
        for h in hooks:
            if h not in data:
                raise choices_error("hook point", h, list(data))
        n = hi - lo
        if shuffle:
            g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
            order = torch.randperm(n, generator=g) + lo
        else:
            order = torch.arange(lo, hi)
        nb = self.num_batches(batch_size, split, heldout_fraction, drop_last)
        for b in range(start_batch, nb):
            idx = order[b * batch_size:(b + 1) * batch_size]
            per = -(-idx.numel() // world_size)
            idx = idx[rank * per:(rank + 1) * per]
            out = {}
            for h in hooks:
                x = data[h].index_select(0, idx)
                x = x if dtype is None else x.to(dtype)
                out[h] = x * self.norm_scale(h) if normalize else x
            yield out


def open_source(cfg: Any, device: Any) -> ActivationSource:
    """What a `TrainConfig` trains on: the model's forward passes (`model`), the cache read as that
    stream (`cache` with `shuffle_buffer`), or the cache reader. The two streams (harvesting.stream,
    harvesting.shuffle_buffer) also hand the trainer the shuffle buffer it draws from
    (`source.shuffle_buffer(...)`): the trainer asks, and never knows which source feeds it."""
    if cfg.model:
        try:
            from harvesting.stream import model_stream
        except ImportError as e:
            raise WorkbenchError(f"training from a model needs the harvesting package ({e})") from None
        return model_stream(cfg, device)
    if not cfg.cache:
        raise WorkbenchError("--cache DIR is required (an activation cache written by `sae harvest`), "
                             "or --model M to train from a model's forward passes")
    reader = open_cache(cfg.cache, verify=cfg.verify)
    if cfg.shuffle_buffer:
        from harvesting.shuffle_buffer import CacheStream

        return CacheStream(reader, cfg.heldout_fraction, cfg.init_sample_tokens, cfg.epochs)
    return reader


def open_cache(path: str | Path, verify: bool = False) -> ActivationSource:
    """The cache reader for `path`, with a clear error when there is no cache there (`verify`: checksums first)."""
    p = Path(path)
    if not str(path):
        raise WorkbenchError("no cache given: pass --cache DIR (a directory written by `sae harvest`)")
    if not p.is_dir():
        raise WorkbenchError(f"cache directory {str(p)!r} does not exist")
    try:
        from harvesting import CacheReader  # saes imports from harvesting here and in open_source only
    except ImportError as e:
        raise WorkbenchError(f"the activation cache reader is unavailable ({e})") from None
    return CacheReader(p, verify=verify)
