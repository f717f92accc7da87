"""The order of one shuffled epoch over a cache's shards, and the gathers that serve it.

Shuffling is two-level, as for any dataset larger than memory: the shard order is permuted per
(seed, epoch), consecutive shards in that order are grouped into windows of `window_shards`,
and the rows of a window are permuted together. An epoch is therefore an exact permutation of
the rows (none lost, none repeated), each batch is a uniform sample of its window's rows, and
batch `b` of an epoch is a pure function of (seed, epoch, b), so a resumed trainer can skip to
`start_batch` without reading what it skips. Batches are gathered straight from the
memory-mapped shards: a window is never copied.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from harvesting.reader import CacheReader


@dataclass(frozen=True)
class Piece:
    """Rows [start, stop) of shard `shard` (the part of it that belongs to the split)."""

    shard: int
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


class EpochPlan:
    """The order of one epoch: windows of pieces, each permuted, cut into batches."""

    def __init__(self, pieces: list[Piece], batch_size: int, shuffle: bool, seed: int, epoch: int,
                 window_shards: int, drop_last: bool) -> None:
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed, self.epoch = seed, epoch
        order = list(range(len(pieces)))
        if shuffle:
            g = torch.Generator().manual_seed(window_seed(seed, epoch, -1))
            order = torch.randperm(len(pieces), generator=g).tolist()
        self.windows = [[pieces[i] for i in order[j:j + window_shards]] for j in range(0, len(order), window_shards)]
        self.window_rows = [sum(p.rows for p in w) for w in self.windows]
        total = sum(self.window_rows)
        self.num_batches = total // batch_size if drop_last else math.ceil(total / batch_size)
        self.total = min(total, self.num_batches * batch_size)

    def _window(self, reader: CacheReader, w: int, hooks: list[str], id_fields: list[str]) -> "_Window":
        """Window `w` as memory-mapped shard tensors (nothing copied yet) and its serving order."""
        pieces: dict[str, list[torch.Tensor]] = {k: [] for k in [*hooks, *id_fields]}
        for p in self.windows[w]:
            for h in hooks:
                pieces[h].append(reader._load(p.shard, h)[p.start:p.stop])
            if id_fields:
                ids = reader._read(p.shard, "rows", id_fields)
                for k in id_fields:
                    pieces[k].append(ids[k][p.start:p.stop])
        n = self.window_rows[w]
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(window_seed(self.seed, self.epoch, w)))
        else:
            order = torch.arange(n)
        return _Window(pieces, [p.rows for p in self.windows[w]], order)

    def iterate(self, reader: CacheReader, hooks: list[str], id_fields: list[str],
                start_batch: int) -> Iterator[dict[str, torch.Tensor]]:
        """Batches gathered straight from the memory-mapped shards into fresh tensors: no copy
        of the window is ever made, and nothing keeps a window alive after its last batch."""
        bs = self.batch_size
        pos = start_batch * bs  # position in the epoch's virtual row order
        w, w0 = 0, 0
        while w < len(self.windows) and w0 + self.window_rows[w] <= pos:
            w0 += self.window_rows[w]
            w += 1
        skip = pos - w0
        carry: dict[str, torch.Tensor] | None = None  # fewer than batch_size rows from the previous window
        if w < len(self.windows):
            reader._will_need(self.windows[w], hooks)
        while pos < self.total and w < len(self.windows):
            win = self._window(reader, w, hooks, id_fields)
            if w + 1 < len(self.windows):  # the kernel reads the next window ahead while this one is served
                reader._will_need(self.windows[w + 1], hooks)
            w += 1
            # the window's chunks: the rest of a carried batch, then whole batches, then a carry or the end
            have = 0 if carry is None else next(iter(carry.values())).shape[0]
            sizes, p, left = [], pos, win.order.numel() - skip
            while p < self.total and left > 0:
                take = min(min(bs, self.total - p) - (have if not sizes else 0), left)
                sizes.append(take)
                left -= take
                p += take + (have if len(sizes) == 1 else 0)
            chunks = win.chunks(skip, sizes)
            skip = 0
            for c, take in enumerate(sizes):
                need = min(bs, self.total - pos)
                rows = chunks.gather(c)
                if carry is not None:
                    rows = {k: torch.cat([carry[k], rows[k]]) for k in rows}
                    carry = None
                if have + take < need:  # window exhausted mid-batch: carry into the next one
                    carry = rows
                    break
                have = 0
                yield rows
                pos += need
            del win, chunks
        if carry is not None and pos < self.total:  # only reachable with drop_last=False
            yield carry


class _Window:
    """Consecutive shard pieces seen as one row space, gathered from without concatenating."""

    def __init__(self, pieces: dict[str, list[torch.Tensor]], sizes: list[int], order: torch.Tensor) -> None:
        self.pieces = pieces
        self.bounds = torch.tensor(sizes).cumsum(0)
        self.starts = torch.tensor([0, *self.bounds[:-1].tolist()])
        self.order = order

    def chunks(self, skip: int, sizes: list[int]) -> "_Chunks":
        """Rows order[skip:] cut into consecutive chunks of `sizes`, each grouped by shard piece.

        Within a chunk, rows come piece by piece, each piece's rows in `order`: the chunk is the
        same set of rows, and its order stays a pure function of (seed, epoch, batch). The
        grouping is one stable sort per window instead of one per batch.
        """
        idx = self.order[skip:skip + sum(sizes)]
        piece = torch.bucketize(idx, self.bounds, right=True)
        n_pieces = len(self.bounds)
        chunk = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes, dtype=torch.long))
        key = chunk * n_pieces + piece
        key, perm = torch.sort(key, stable=True)
        local = idx[perm] - self.starts[key % n_pieces]
        counts = torch.bincount(key, minlength=len(sizes) * n_pieces).view(len(sizes), n_pieces).tolist()
        return _Chunks(self.pieces, local, counts, [0, *torch.tensor(sizes).cumsum(0).tolist()])


class _Chunks:
    """A window's serving order, precomputed: chunk `c` is one sequential gather per shard piece."""

    def __init__(self, pieces: dict[str, list[torch.Tensor]], local: torch.Tensor, counts: list[list[int]],
                 offsets: list[int]) -> None:
        self.pieces, self.local, self.counts, self.offsets = pieces, local, counts, offsets

    def gather(self, c: int) -> dict[str, torch.Tensor]:
        lo, hi = self.offsets[c], self.offsets[c + 1]
        out = {}
        for k, parts in self.pieces.items():
            o = torch.empty((hi - lo, *parts[0].shape[1:]), dtype=parts[0].dtype)
            a = 0
            for p, n in enumerate(self.counts[c]):
                if n:
                    torch.index_select(parts[p], 0, self.local[lo + a:lo + a + n], out=o[a:a + n])
                    a += n
            out[k] = o
        return out


def window_seed(seed: int, epoch: int, index: int) -> int:
    """One generator seed per (seed, epoch, window), without collisions between small values."""
    return (seed * 1_000_003 + epoch * 10_007 + index + 1) % (2**63 - 1)
