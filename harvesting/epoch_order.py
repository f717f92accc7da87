"""The order of one shuffled epoch over a cache's shards, and the gathers that serve it.

Shuffling is two-level, as for any dataset larger than memory: the shard order is permuted per
(seed, epoch), consecutive shards in that order are grouped into windows of `window_shards`,
and the rows of a window are permuted together. An epoch is therefore an exact permutation of
the rows (none lost, none repeated), each batch is a uniform sample of its window's rows, and
batch `b` of an epoch is a pure function of (seed, epoch, b), so a resumed trainer can skip to
`start_batch` without reading what it skips. Batches are gathered straight from the
memory-mapped shards: a window is never copied.

A window's permutation is drawn in two independent parts that together are a uniform
permutation: how many rows each segment of the window (its stretch of one batch) takes from
each shard piece (sequential multivariate hypergeometric draws, which is how a uniformly
shuffled sequence of piece labels splits), and which rows of each piece, in what order (one
uniform permutation per piece). So a batch's rows come grouped by piece, ready for one
sequential gather per piece, with no sort: preparing a window costs about a third of what
permuting and then grouping its rows did.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import accumulate
from typing import TYPE_CHECKING

import numpy as np
import torch

from harvesting.batch_buffers import BatchBuffers
from harvesting.row_gather import gather_rows
from workbench.errors import WorkbenchError

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
        self.window_starts = list(accumulate(self.window_rows, initial=0))  # where each window begins in the epoch
        total = sum(self.window_rows)
        self.num_batches = total // batch_size if drop_last else math.ceil(total / batch_size)
        self.total = min(total, self.num_batches * batch_size)

    def segments(self, w: int) -> list[int]:
        """Window `w` cut at the epoch's batch boundaries: the stretch of each batch it holds."""
        w0, n, bs = self.window_starts[w], self.window_rows[w], self.batch_size
        cuts = [0, *range(-w0 % bs or bs, n, bs), n]
        return [b - a for a, b in zip(cuts, cuts[1:]) if b > a]

    def _window(self, reader: CacheReader, w: int, hooks: list[str], id_fields: list[str]) -> "_Window":
        """Window `w` as memory-mapped shard tensors (nothing copied yet) and its serving order."""
        pieces: dict[str, list[torch.Tensor]] = {k: [] for k in [*hooks, *id_fields]}
        for p in self.windows[w]:
            for h in hooks:
                pieces[h].append(reader.mapped_acts(p.shard, h)[p.start:p.stop])
            if id_fields:
                ids = reader.row_fields(p.shard, id_fields)
                for k in id_fields:
                    pieces[k].append(ids[k][p.start:p.stop])
            for k, parts in pieces.items():  # the gathers trust the manifest's row counts: hold the files to them
                if parts[-1].shape[0] != p.rows:
                    raise WorkbenchError(f"shard {reader.shards[p.shard]['index']} of the cache at {str(reader.path)!r} "
                                         f"holds fewer {k} rows than its manifest says; run `sae cache verify "
                                         f"{reader.path}` and harvest it again")
        seed = window_seed(self.seed, self.epoch, w) if self.shuffle else None
        return _Window(pieces, [p.rows for p in self.windows[w]], self.segments(w), seed)

    def prepared(self, reader: CacheReader, hooks: list[str], id_fields: list[str],
                 start_batch: int) -> Iterator[tuple["_Window", range]]:
        """Each window from `start_batch` on, mapped and ordered, with the segments of it to serve."""
        pos = start_batch * self.batch_size  # where the epoch resumes: a batch boundary, so a segment boundary
        w0 = 0
        for w, pieces in enumerate(self.windows):
            n = self.window_rows[w]
            if w0 + n <= pos:
                w0 += n
                continue
            if w0 >= self.total:
                return
            if w0 <= pos:  # the first window read: the kernel reads it ahead too
                reader.read_ahead(pieces, hooks)
            if w + 1 < len(self.windows):  # the kernel reads the next window ahead while this one is served
                reader.read_ahead(self.windows[w + 1], hooks)
            segs = self.segments(w)
            bounds = list(accumulate(segs, initial=w0))
            first = bounds.index(max(pos, w0))
            last = next((i for i, b in enumerate(bounds) if b >= self.total), len(segs))
            yield self._window(reader, w, hooks, id_fields), range(first, last)
            w0 += n

    def iterate(self, reader: CacheReader, hooks: list[str], id_fields: list[str], start_batch: int,
                rank: int = 0, world_size: int = 1) -> Iterator[dict[str, torch.Tensor]]:
        """This rank's slice of each batch, gathered straight from the memory-mapped shards into
        tensors of their own (recycled memory, see `harvesting.batch_buffers`).

        No copy of a window is ever made, nothing keeps a window alive after its last batch, and
        a rank gathers only its own rows: `world_size` ranks together read each row once.
        """
        bs = self.batch_size
        pos = start_batch * bs
        buffers = BatchBuffers()
        have, parts = 0, []  # rows of the current batch served so far (some in the previous window), this rank's share
        for win, segs in self.prepared(reader, hooks, id_fields, start_batch):
            for i in segs:
                need = min(bs, self.total - pos)
                lo, hi = need * rank // world_size, need * (rank + 1) // world_size  # this rank's rows of the batch
                n = win.length(i)
                parts.append(win.gather(i, buffers.empty, min(max(lo - have, 0), n), min(max(hi - have, 0), n)))
                have += n
                if have < need:  # the window's last segment: the batch goes on in the next window
                    break
                yield parts[0] if len(parts) == 1 else {k: torch.cat([q[k] for q in parts]) for k in parts[0]}
                pos, have, parts = pos + need, 0, []
            del win
        if parts and pos < self.total:  # only reachable with drop_last=False
            yield {k: torch.cat([q[k] for q in parts]) for k in parts[0]}


class _Window:
    """Consecutive shard pieces seen as one row space, served segment by segment (see the module
    docstring for how the order is drawn) without concatenating them."""

    def __init__(self, pieces: dict[str, list[torch.Tensor]], sizes: list[int], segments: list[int],
                 seed: int | None) -> None:
        self.pieces = pieces
        if seed is None:  # in file order: piece after piece
            self.rows = [torch.arange(n) for n in sizes]
            p_end, s_end = np.cumsum(sizes), np.cumsum(segments)
            lo = np.maximum((s_end - segments)[:, None], (p_end - sizes)[None, :])
            counts = np.clip(np.minimum(s_end[:, None], p_end[None, :]) - lo, 0, None)
        else:
            g = torch.Generator().manual_seed(seed)
            self.rows = [torch.randperm(n, generator=g) for n in sizes]
            rng = np.random.Generator(np.random.PCG64(seed))
            counts = np.empty((len(segments), len(sizes)), dtype=np.int64)
            left = np.array(sizes, dtype=np.int64)
            for i, s in enumerate(segments):
                counts[i] = rng.multivariate_hypergeometric(left, s)
                left -= counts[i]
        self.counts = counts.tolist()
        self.starts = (np.cumsum(counts, axis=0) - counts).tolist()  # where segment i begins in each piece's rows

    def length(self, i: int) -> int:
        return sum(self.counts[i])

    def gather(self, i: int, empty: Callable[..., torch.Tensor] = torch.empty, lo: int = 0,
               hi: int | None = None) -> dict[str, torch.Tensor]:
        """Rows [lo, hi) of segment `i` (its rows run piece after piece): one sequential gather per
        shard piece into a fresh tensor from `empty`."""
        counts, starts = self.counts[i], self.starts[i]
        hi = sum(counts) if hi is None else hi
        srcs, rows, a = [], [], 0  # a: where piece p's rows begin in the segment
        for p, c in enumerate(counts):
            s0, s1 = max(lo, a), min(hi, a + c)
            if s1 > s0:
                srcs.append(p)
                rows.append(self.rows[p][starts[p] + s0 - a:starts[p] + s1 - a])
            a += c
        out = {}
        for k, parts in self.pieces.items():
            o = empty((hi - lo, *parts[0].shape[1:]), dtype=parts[0].dtype)
            gather_rows([parts[p] for p in srcs], rows, o, checked=False)  # rows: permutations of each piece's rows
            out[k] = o
        return out


def window_seed(seed: int, epoch: int, index: int) -> int:
    """One generator seed per (seed, epoch, window), without collisions between small values."""
    return (seed * 1_000_003 + epoch * 10_007 + index + 1) % (2**63 - 1)
