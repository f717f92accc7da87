"""Stream training batches out of an activation cache with bounded memory.

Shuffling is two-level, as for any dataset larger than memory: the shard order is permuted per
(seed, epoch), consecutive shards in that order are grouped into windows of `window_shards`,
and the rows of a window are permuted together. An epoch is therefore an exact permutation of
the rows (none lost, none repeated), memory holds at most two windows, and batch `b` of an
epoch is a pure function of (seed, epoch, b), so a resumed trainer can skip to `start_batch`
without reading what it skips. A background thread loads and permutes while the trainer runs.

Held-out rows are those of the last ceil(C * heldout_fraction) of the cache's C contexts, with
the cut then moved forward to the next document boundary (`doc_ids`), so that no document has
rows on both sides: a document packed across the cut stays whole in the training split. The
harvest shuffles documents before packing them, so that tail is a random sample of documents,
and the split needs no extra index. `saes.TensorSource` applies the same rule to its rows.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open

from harvesting.cache import read_manifest
from harvesting.integrity import check_opened, entry_path, expected_keys
from harvesting.prefetch import prefetched
from workbench.errors import WorkbenchError, choices_error

Split = Literal["train", "heldout", "all"]


@dataclass(frozen=True)
class _Piece:
    """Rows [start, stop) of shard `shard` (the part of it that belongs to the split)."""

    shard: int
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


class CacheReader:
    """Read a finished activation cache (see `harvesting.cache` for the layout).

    Opening runs the cheap checks of `harvesting.integrity` (every file a plain file inside the
    cache, present, with the size and header the manifest states); `verify=True` runs the full
    `sae cache verify` (checksums) first. Either names the first bad shard in one line.
    """

    def __init__(self, path: str | Path, allow_incomplete: bool = False, verify: bool = False) -> None:
        self.path = Path(path)
        self.manifest: dict[str, Any] = read_manifest(self.path)
        if self.manifest["status"] != "complete" and not allow_incomplete:
            raise WorkbenchError(
                f"the cache at {str(self.path)!r} is unfinished ({len(self.manifest['shards'])} shard(s) so far); "
                f"run the same `sae harvest` command again to finish it"
            )
        self.shards: list[dict[str, Any]] = self.manifest["shards"]
        self._cuts: dict[float, int] = {}
        if verify:
            from harvesting.inspect_cache import verify_cache

            rep = verify_cache(self.path)
            if not rep.ok:
                more = f" (and {len(rep.problems) - 1} more)" if len(rep.problems) > 1 else ""
                raise WorkbenchError(f"the cache at {str(self.path)!r} failed verification: {rep.problems[0]}{more}")
        else:
            check_opened(self.path, self.manifest)
        # every file entry, checked to be a plain file inside the cache (never trust a manifest's paths)
        self._paths = [{k: entry_path(self.path, s["files"][k]["file"], f"shard {s['index']}")
                        for k in expected_keys(self.manifest)} for s in self.shards]

    # -- what is in it -------------------------------------------------------------------
    @property
    def hooks(self) -> list[str]:
        return list(self.manifest["hooks"])

    @property
    def model_id(self) -> str:
        return self.manifest["model"]["id"]

    @property
    def identity(self) -> str:
        """A hash of the cache's content (hooks and every shard file's checksum): the same path
        holding other data has another identity, so a trainer can refuse to resume on it."""
        import hashlib
        import json

        content = {"hooks": self.manifest["hooks"], "shards": [
            [s["rows"], s["contexts"], {k: f["sha256"] for k, f in sorted(s["files"].items())}] for s in self.shards]}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    @property
    def num_tokens(self) -> int:
        return sum(s["rows"][1] - s["rows"][0] for s in self.shards)

    @property
    def num_contexts(self) -> int:
        return self.shards[-1]["contexts"][1] if self.shards else 0

    def _check_hook(self, hook: str) -> None:
        if hook not in self.manifest["hooks"]:
            raise choices_error(f"hook point in the cache at {str(self.path)!r}:", hook, self.hooks)

    def d_model(self, hook: str) -> int:
        self._check_hook(hook)
        return int(self.manifest["hooks"][hook]["d_model"])

    def dtype(self, hook: str) -> str:
        self._check_hook(hook)
        return self.manifest["hooks"][hook]["dtype"]

    def mean_norm(self, hook: str) -> float:
        self._check_hook(hook)
        return float(self.manifest["totals"]["norms"][hook]["mean_norm"])

    def norm_scale(self, hook: str) -> float:
        """Factor that brings raw activations to mean norm sqrt(d_model)."""
        self._check_hook(hook)
        return float(self.manifest["totals"]["norms"][hook]["norm_scale"])

    # -- random access -------------------------------------------------------------------
    def load_shard(self, index: int, hooks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """All rows of one shard: the hooks' activations plus the row id fields."""
        out = self._read(index, "rows", None)
        for h in hooks if hooks is not None else self.hooks:
            self._check_hook(h)
            out[h] = self._load(index, h)
        return out

    def _load(self, index: int, hook: str) -> torch.Tensor:
        """A shard's activations, memory-mapped (pages are read when rows are gathered)."""
        return self._read(index, hook, ["acts"])["acts"]

    def _will_need(self, pieces: Sequence[_Piece], hooks: Sequence[str]) -> None:
        """Ask the kernel to read these shards' files ahead, asynchronously and sequentially.

        A cache larger than memory is mostly not in the page cache: gathering shuffled rows from
        a cold memory map would fault in scattered pages one at a time. The advice turns that into
        sequential read-ahead of the whole window while the previous one is served (a no-op for
        files already cached, and on systems without posix_fadvise).
        """
        if not hasattr(os, "posix_fadvise"):
            return
        for p in pieces:
            for h in hooks:
                try:
                    fd = os.open(self._paths[p.shard][h], os.O_RDONLY)
                except OSError:
                    continue  # reading it will name the problem
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
                except OSError:
                    pass
                finally:
                    os.close(fd)

    def _read(self, index: int, key: str, names: Sequence[str] | None) -> dict[str, torch.Tensor]:
        """Tensors `names` (None: all) of one shard file; a damaged file is one line naming it."""
        p = self._paths[index][key]
        try:
            with safe_open(p, framework="pt") as f:
                return {k: f.get_tensor(k) for k in (names if names is not None else list(f.keys()))}
        except Exception as e:  # safetensors raises its own SafetensorError; OSError for a vanished file
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise WorkbenchError(
                f"shard {self.shards[index]['index']} of the cache at {str(self.path)!r} ({p.name}) cannot be read "
                f"({first}); run `sae cache verify {self.path}` and harvest it again"
            ) from None

    # -- splits ----------------------------------------------------------------------------
    def heldout_start(self, heldout_fraction: float) -> int:
        """The global row where the held-out split begins (see the module docstring for the rule)."""
        if not 0.0 <= heldout_fraction < 1.0:
            raise WorkbenchError(f"heldout_fraction must be in [0, 1); got {heldout_fraction}")
        if heldout_fraction not in self._cuts:
            self._cuts[heldout_fraction] = self._heldout_start(heldout_fraction)
        return self._cuts[heldout_fraction]

    def _heldout_start(self, heldout_fraction: float) -> int:
        cutoff = self.num_contexts - math.ceil(self.num_contexts * heldout_fraction)
        total = self.num_tokens
        start = total
        for i, s in enumerate(self.shards):  # the first row of context `cutoff`
            c0, c1 = s["contexts"]
            if c0 <= cutoff < c1:
                ctx = self._read(i, "rows", ["context_ids"])["context_ids"]
                start = s["rows"][0] + int(torch.searchsorted(ctx, torch.tensor(cutoff, dtype=ctx.dtype)))
                break
            if c0 >= cutoff:
                start = s["rows"][0]
                break
        if "doc_ids" not in self.manifest.get("row_fields", []) or not 0 < start < total:
            return start
        # a document that straddles the cut stays whole on the training side: move the cut past its rows
        doc = None
        for i, s in enumerate(self.shards):
            r0, r1 = s["rows"]
            if r1 < start or r1 == r0:
                continue
            ids = self._read(i, "rows", ["doc_ids"])["doc_ids"]
            if doc is None:
                if r0 >= start:  # the cut is a shard boundary: the last row before it is in the previous shard
                    prev = next(j for j in range(i - 1, -1, -1) if self.shards[j]["rows"][1] > self.shards[j]["rows"][0])
                    doc = int(self._read(prev, "rows", ["doc_ids"])["doc_ids"][-1])
                else:
                    doc = int(ids[start - 1 - r0])
            lo = max(start, r0) - r0
            other = torch.nonzero(ids[lo:] != doc)
            if other.numel():
                return r0 + lo + int(other[0])
            start = r1
        return total

    def _pieces(self, split: Split, heldout_fraction: float) -> list[_Piece]:
        if split not in ("train", "heldout", "all"):
            raise choices_error("split", split, ["train", "heldout", "all"])
        cut = self.heldout_start(heldout_fraction) if split != "all" else 0
        pieces = []
        for i, s in enumerate(self.shards):
            r0, r1 = s["rows"]
            n = r1 - r0
            if split == "all":
                piece = _Piece(i, 0, n)
            elif split == "train":
                piece = _Piece(i, 0, min(max(cut - r0, 0), n))
            else:
                piece = _Piece(i, min(max(cut - r0, 0), n), n)
            if piece.rows:
                pieces.append(piece)
        return pieces

    def num_rows(self, split: Split = "train", heldout_fraction: float = 0.01) -> int:
        return sum(p.rows for p in self._pieces(split, heldout_fraction))

    def num_batches(self, batch_size: int, split: Split = "train", heldout_fraction: float = 0.01,
                    drop_last: bool = True) -> int:
        n = self.num_rows(split, heldout_fraction)
        return n // batch_size if drop_last else math.ceil(n / batch_size)

    # -- streaming -----------------------------------------------------------------------
    def batches(
        self,
        hooks: str | Sequence[str],
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        epoch: int = 0,
        normalize: bool = False,
        split: Split = "train",
        heldout_fraction: float = 0.01,
        start_batch: int = 0,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
        dtype: torch.dtype = torch.float32,
        prefetch: int = 2,
        window_shards: int = 4,
        with_ids: bool = False,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Yield `{hook: [batch_size // world_size, d_model]}` batches (plus row ids if `with_ids`).

        Every rank of a data-parallel job iterates the same global batches and takes its own
        contiguous slice of each, so ranks never overlap and together see every row once.
        """
        hooks = [hooks] if isinstance(hooks, str) else list(hooks)
        if not hooks:
            raise WorkbenchError(f"batches() needs at least one hook point; the cache has {self.hooks}")
        for h in hooks:
            self._check_hook(h)
        if batch_size < 1:
            raise WorkbenchError(f"batch_size must be at least 1; got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise WorkbenchError(f"rank {rank} is not valid for world_size {world_size}")
        if batch_size % world_size:
            raise WorkbenchError(f"batch_size {batch_size} is not divisible by world_size {world_size}")
        if window_shards < 1:
            raise WorkbenchError(f"window_shards must be at least 1; got {window_shards}")
        pieces = self._pieces(split, heldout_fraction)
        if not pieces:
            raise WorkbenchError(f"the {split!r} split of {str(self.path)!r} is empty (heldout_fraction={heldout_fraction})")
        plan = _Plan(pieces, batch_size, shuffle, seed, epoch, window_shards, drop_last)
        if start_batch > plan.num_batches:
            raise WorkbenchError(f"start_batch {start_batch} is past the {plan.num_batches} batches of this epoch")
        scales = {h: (self.norm_scale(h) if normalize else 1.0) for h in hooks}
        per_rank = batch_size // world_size
        id_fields = list(self.manifest.get("row_fields", [])) if with_ids else []

        def produce() -> Iterator[dict[str, torch.Tensor]]:
            for batch in plan.iterate(self, hooks, id_fields, start_batch):
                out = {}
                lo, hi = rank * per_rank, (rank + 1) * per_rank
                if batch[hooks[0]].shape[0] < batch_size:  # last partial batch (drop_last=False)
                    n = batch[hooks[0]].shape[0]
                    lo, hi = n * rank // world_size, n * (rank + 1) // world_size
                for k, v in batch.items():
                    v = v[lo:hi]
                    if k in scales:
                        v = v.to(dtype)
                        if scales[k] != 1.0:
                            v.mul_(scales[k])  # batches are fresh gathers, never views of the cache
                    out[k] = v
                yield out

        return prefetched(produce(), prefetch) if prefetch > 0 else produce()


class _Plan:
    """The order of one epoch: windows of pieces, each permuted, cut into batches."""

    def __init__(self, pieces: list[_Piece], batch_size: int, shuffle: bool, seed: int, epoch: int,
                 window_shards: int, drop_last: bool) -> None:
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed, self.epoch = seed, epoch
        order = list(range(len(pieces)))
        if shuffle:
            g = torch.Generator().manual_seed(_mix(seed, epoch, -1))
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
            order = torch.randperm(n, generator=torch.Generator().manual_seed(_mix(self.seed, self.epoch, w)))
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


def _mix(seed: int, epoch: int, index: int) -> int:
    """One generator seed per (seed, epoch, window), without collisions between small values."""
    return (seed * 1_000_003 + epoch * 10_007 + index + 1) % (2**63 - 1)
