"""Training from a stream of activations through a seeded shuffle buffer (`--shuffle-buffer`).

A cacheless run (`sae train --model M --corpus C`) never stores its activations: the harvest loop
runs one forward pass per batch of contexts, every hook point at once, and hands the rows on in
harvest order. Rows that arrive in document order would make every batch a few documents, so
they pass through a shuffle buffer first (sparsify's way): B rows are held; each step draws b of
them uniformly without replacement with a generator seeded from the run's seed, and the next b
rows of the stream take their places. When the stream ends, the drawn places are removed instead
(order kept), until fewer than b rows are left.

The order is therefore a pure function of (the row stream, B, b, seed), and a cache holds the
same row stream: `harvesting.CacheReader` read in row order (`shuffle=False`) yields exactly the
rows a harvest of the same config produced, in harvest order. So a cache run given the same
`--shuffle-buffer` reads through the same buffer and trains on the same batches, bit for bit
(`CacheStream`): that is the guarantee the tests check, with the buffer in both runs rather than a
cacheless run made to imitate the cache reader's window shuffle, because it covers the order a
cacheless run really trains in. A buffer of b rows (B = b) trains in harvest order.

The rest of what a run reads from its data is defined on the stream too, so both kinds agree:
the held-out split is the cache reader's (the rows of the last ceil(C * heldout_fraction) of the C
contexts, the cut moved past the document straddling it), and the input scale, like b_dec, comes
from the first `init_sample_tokens` training rows in harvest order (a cacheless run has no
manifest holding the norms of all rows).

Resuming: the buffer's rows, the rows of the last chunk not yet taken, the generator state and
the number of chunks pulled (the corpus position) are checkpointed with the SAEs
(`saes.checkpoint.save_stream_state`), so a resumed run continues the same stream. Under torchrun
each data-parallel rank streams its own share (`shard`) through a buffer of its own, seeded by
rank, drawing batch_size / ranks rows per step.

The live source and the buffer live here, beside the cache reader, behind the reader's interface:
the trainer asks a source for its buffer (`StreamSource.shuffle_buffer`) and never knows which
kind feeds it, and harvesting never imports saes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from workbench.errors import WorkbenchError, choices_error

DEFAULT_BUFFER_ROWS = 131_072  # 32 batches of 4096: rows of about 1000 documents of wiki length mixed per batch


def buffer_seed(seed: int, rank: int) -> int:
    return (int(seed) * 1_000_003 + 7_919 * int(rank) + 17) % 2**63


class ShuffleBuffer:
    """B rows, b drawn per step, replaced from the stream (the module docstring's rule)."""

    def __init__(self, capacity: int, batch_size: int, seed: int) -> None:
        if batch_size < 1 or capacity < batch_size:
            raise WorkbenchError(f"--shuffle-buffer {capacity} must hold at least one batch ({batch_size} rows per rank)")
        self.capacity, self.batch_size = int(capacity), int(batch_size)
        self.generator = torch.Generator().manual_seed(seed)
        self.rows: dict[str, Tensor] = {}  # [capacity, d] per hook, the first `n` filled
        self.n = 0
        self.pending: dict[str, Tensor] = {}  # the rest of the last chunk pulled
        self.chunks = 0  # chunks pulled from the stream so far: where a resumed stream starts

    # ---------------------------------------------------------------- state

    def state(self) -> dict[str, Any]:
        return {"chunks": self.chunks, "n": self.n, "rng": self.generator.get_state(),
                "rows": {h: v[:self.n].clone() for h, v in self.rows.items()},
                "pending": {h: v.clone() for h, v in self.pending.items()}}

    def load_state(self, state: dict[str, Any]) -> None:
        self.chunks, self.n = int(state["chunks"]), int(state["n"])
        self.generator.set_state(state["rng"])
        self.rows = {}
        for h, v in state["rows"].items():
            self.rows[h] = torch.empty(self.capacity, *v.shape[1:], dtype=v.dtype)
            self.rows[h][:self.n] = v
        self.pending = {h: v.clone() for h, v in state["pending"].items()}

    # ---------------------------------------------------------------- drawing

    def _take(self, chunks: Iterator[dict[str, Tensor]], m: int) -> dict[str, Tensor] | None:
        """Up to `m` next rows of the stream (None when it has ended)."""
        parts: list[dict[str, Tensor]] = []
        got = 0
        while got < m:
            left = next(iter(self.pending.values())).shape[0] if self.pending else 0
            if left == 0:
                nxt = next(chunks, None)
                if nxt is None:
                    break
                self.chunks += 1
                self.pending = dict(nxt)
                continue
            k = min(left, m - got)
            parts.append({h: v[:k] for h, v in self.pending.items()})
            self.pending = {h: v[k:] for h, v in self.pending.items()}
            got += k
        if not parts:
            return None
        return {h: torch.cat([p[h] for p in parts]) if len(parts) > 1 else parts[0][h] for h in parts[0]}

    def batches(self, chunks: Iterator[dict[str, Tensor]]) -> Iterator[dict[str, Tensor]]:
        """Batches of `batch_size` rows from the stream `chunks` (which continues where `chunks` says)."""
        chunks = iter(chunks)
        b = self.batch_size
        while self.n < self.capacity:
            new = self._take(chunks, self.capacity - self.n)
            if new is None:
                break
            k = next(iter(new.values())).shape[0]
            for h, v in new.items():
                if h not in self.rows:
                    self.rows[h] = torch.empty(self.capacity, *v.shape[1:], dtype=v.dtype)
                self.rows[h][self.n:self.n + k] = v
            self.n += k
        while self.n >= b:
            pos = torch.randperm(self.n, generator=self.generator)[:b]
            out = {h: v.index_select(0, pos) for h, v in self.rows.items()}
            new = self._take(chunks, b)
            k = 0 if new is None else next(iter(new.values())).shape[0]
            if k:
                for h, v in new.items():
                    self.rows[h][pos[:k]] = v
            if k < b:  # the stream ended: the places not refilled go, the others keep their order
                keep = torch.ones(self.n, dtype=torch.bool)
                keep[pos[k:]] = False
                for h, v in self.rows.items():
                    v[:int(keep.sum())] = v[:self.n][keep]
                self.n = int(keep.sum())
            yield out


class StreamSource:
    """The trainer's data interface (`saes.data.ActivationSource`) over a row stream in harvest order.

    Subclasses give `hooks`, `model_id`, `d_model`, `identity`, `_rows(split)` (rows of the train
    or held-out split: (total, per-rank chunk counts)) and `_epoch_chunks(split, rank, world, start)`
    (one pass of the split, from chunk `start` of this rank's share). `batches` serves whole
    splits in harvest order (the initial sample and the held-out evaluation read them; `shuffle`
    is ignored: shuffling is the buffer's), `train_chunks` the stream the buffer draws from.
    """

    hooks: list[str]
    model_id: str

    def __init__(self, heldout_fraction: float, sample_tokens: int, epochs: int = 1) -> None:
        self.heldout_fraction = float(heldout_fraction)
        self.sample_tokens = int(sample_tokens)
        self.epochs = int(epochs)
        self.rank, self.world_size = 0, 1
        self._scales: dict[str, float] = {}
        # the first chunks of the training split, kept once read (the input scale and b_dec's sample read
        # them before training does): replayed instead of running their forward passes again
        self._head: list[dict[str, Tensor]] = []
        self._head_rows = 0
        self._head_it: Iterator[dict[str, Tensor]] | None = None

    # ---------------------------------------------------------------- for subclasses

    def d_model(self, hook: str) -> int:
        raise NotImplementedError

    def split_rows(self, split: str) -> int:
        """Rows of `split` ("train" or "heldout") in the whole stream."""
        raise NotImplementedError

    def rank_rows(self, rank: int, world_size: int) -> tuple[int, int]:
        """(training rows, chunks) of one rank's share of one epoch."""
        raise NotImplementedError

    def epoch_chunks(self, split: str, rank: int = 0, world_size: int = 1, start: int = 0) -> Iterator[dict[str, Tensor]]:
        raise NotImplementedError

    # ---------------------------------------------------------------- the interface

    def shard(self, rank: int, world_size: int) -> None:
        """This process streams the share of data-parallel rank `rank` of `world_size`."""
        self.rank, self.world_size = int(rank), int(world_size)

    def shuffle_buffer(self, capacity: int, batch_size: int, seed: int) -> ShuffleBuffer:
        """The buffer this rank's share passes through (`capacity` 0: DEFAULT_BUFFER_ROWS), seeded by (seed, rank).

        The trainer asks the source for it, so it never needs to know which kind of source feeds it."""
        return ShuffleBuffer(capacity or DEFAULT_BUFFER_ROWS, batch_size, buffer_seed(seed, self.rank))

    def chunks(self, split: str = "train") -> Iterator[dict[str, Tensor]]:
        """One pass of `split`, every rank's rows, in harvest order."""
        return self._replayed(split, 0, 1, 0)

    def _replayed(self, split: str, rank: int, world_size: int, start: int) -> Iterator[dict[str, Tensor]]:
        """`epoch_chunks`, its first chunks served from those `head` kept (rank r's j-th chunk is chunk r + j * ranks)."""
        j = start
        if split == "train":
            while rank + j * world_size < len(self._head):
                yield self._head[rank + j * world_size]
                j += 1
        yield from self.epoch_chunks(split, rank, world_size, j)

    def train_chunks(self, start: int = 0) -> Iterator[dict[str, Tensor]]:
        """This rank's training stream, `epochs` passes, from chunk `start` (counted over the passes)."""
        per = self.rank_rows(self.rank, self.world_size)[1]
        if per == 0:
            return
        epoch, first = divmod(start, per)
        for e in range(epoch, self.epochs):
            yield from self._replayed("train", self.rank, self.world_size, first if e == epoch else 0)

    def _check_fraction(self, heldout_fraction: float) -> None:
        if float(heldout_fraction) != self.heldout_fraction:
            raise WorkbenchError(f"this stream was split with heldout_fraction {self.heldout_fraction}, "
                                 f"not {heldout_fraction}")

    def num_batches(self, batch_size: int, split: str = "train", heldout_fraction: float = 0.01,
                    drop_last: bool = True) -> int:
        """Training: the batches every rank can draw in one epoch (the fewest over ranks), as a cache run counts."""
        self._check_fraction(heldout_fraction)
        if split == "train" and drop_last:
            if batch_size % self.world_size:
                raise WorkbenchError(f"--batch-size {batch_size} must be divisible by the number of ranks ({self.world_size})")
            per = batch_size // self.world_size
            return min(self.rank_rows(r, self.world_size)[0] // per for r in range(self.world_size))
        n = self.split_rows(split)
        return n // batch_size if drop_last else math.ceil(n / batch_size)

    def norm_scale(self, hook: str) -> float:
        """sqrt(d) / the mean norm of the first `sample_tokens` training rows in harvest order."""
        if hook not in self.hooks:
            raise choices_error("hook point", hook, self.hooks)
        if not self._scales:
            sample = self.head(self.sample_tokens)
            for h, x in sample.items():
                mean_norm = float(x.float().norm(dim=1).mean())
                self._scales[h] = math.sqrt(x.shape[1]) / mean_norm if mean_norm > 0 else 1.0
        return self._scales[hook]

    def head(self, n: int) -> dict[str, Tensor]:
        """The first `n` training rows (all ranks', harvest order); their chunks are kept for replay."""
        if self._head_it is None:
            self._head_it = self.epoch_chunks("train")
        while self._head_rows < n:
            c = next(self._head_it, None)
            if c is None:
                break
            self._head.append(c)
            self._head_rows += next(iter(c.values())).shape[0]
        return {h: torch.cat([c[h] for c in self._head])[:n] for h in self.hooks} if self._head else {}

    def batches(self, hooks: list[str], batch_size: int, *, split: str = "train", heldout_fraction: float = 0.01,
                drop_last: bool = True, rank: int = 0, world_size: int = 1, start_batch: int = 0,
                dtype: torch.dtype | None = torch.float32, **_: Any) -> Iterator[dict[str, Tensor]]:
        """Whole-split batches in harvest order (rank's contiguous slice of each), as the cache reader's with shuffle off."""
        self._check_fraction(heldout_fraction)
        buf: dict[str, list[Tensor]] = {h: [] for h in hooks}
        have, index = 0, 0

        def emit(rows: dict[str, Tensor]) -> dict[str, Tensor]:
            per = -(-rows[hooks[0]].shape[0] // world_size)
            return {h: (v if dtype is None else v.to(dtype))[rank * per:(rank + 1) * per] for h, v in rows.items()}

        for c in self._replayed(split, 0, 1, 0):
            for h in hooks:
                buf[h].append(c[h])
            have += c[hooks[0]].shape[0]
            while have >= batch_size:
                whole = {h: torch.cat(v) for h, v in buf.items()}
                rows = {h: v[:batch_size] for h, v in whole.items()}
                buf = {h: [v[batch_size:]] for h, v in whole.items()}
                have -= batch_size
                if index >= start_batch:
                    yield emit(rows)
                index += 1
        if have and not drop_last and index >= start_batch:
            yield emit({h: torch.cat(v) for h, v in buf.items()})


class CacheStream(StreamSource):
    """A cache read in row order, as the stream its harvest produced (a cache run with --shuffle-buffer)."""

    CHUNK = 4096

    def __init__(self, reader: Any, heldout_fraction: float, sample_tokens: int, epochs: int = 1) -> None:
        super().__init__(heldout_fraction, sample_tokens, epochs)
        self.reader = reader
        self.hooks = list(reader.hooks)
        self.model_id = reader.model_id

    def identity(self) -> Any:
        ident = getattr(self.reader, "identity", None)
        return ident() if callable(ident) else ident

    def d_model(self, hook: str) -> int:
        return self.reader.d_model(hook)

    def split_rows(self, split: str) -> int:
        return self.reader.num_rows(split, self.heldout_fraction)

    def rank_rows(self, rank: int, world_size: int) -> tuple[int, int]:
        n = self.split_rows("train")
        full, last = divmod(n, self.CHUNK)
        chunks = full + (1 if last else 0)
        mine = len(range(rank, chunks, world_size))
        rows = mine * self.CHUNK - (self.CHUNK - last if last and (chunks - 1) % world_size == rank else 0)
        return rows, mine

    def epoch_chunks(self, split: str, rank: int = 0, world_size: int = 1, start: int = 0) -> Iterator[dict[str, Tensor]]:
        """Chunks of CHUNK rows in row order; rank r takes chunks r, r + world, ... (from its `start`-th)."""
        n = self.split_rows(split)
        if rank + start * world_size >= -(-n // self.CHUNK):
            return
        it = self.reader.batches(self.hooks, self.CHUNK, shuffle=False, split=split,
                                 heldout_fraction=self.heldout_fraction, drop_last=False, dtype=None,
                                 start_batch=rank + start * world_size)
        try:
            for i, c in enumerate(it):
                if i % world_size == 0:
                    yield c
        finally:
            if hasattr(it, "close"):
                it.close()
