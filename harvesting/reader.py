"""Stream training batches out of an activation cache with bounded memory.

Shuffling is two-level (shard order, then the rows of a window of shards; see
`harvesting.epoch_order`): an epoch is an exact permutation of the rows, memory holds about one
window, and batch `b` of an epoch is a pure function of (seed, epoch, b). Batches are gathered in
the caller's thread unless `prefetch` asks for a background thread (see `CacheReader.batches`),
into memory recycled once nothing refers to it (`harvesting.batch_buffers`), by a compiled loop
that prefetches rows ahead where a C compiler is available (`harvesting.row_gather`).

Held-out rows are those of the last ceil(C * heldout_fraction) of the cache's C contexts, with
the cut then moved forward to the next document boundary (`doc_ids`), so that no document has
rows on both sides: a document packed across the cut stays whole in the training split. The
harvest shuffles documents before packing them, so that tail is a random sample of documents,
and the split needs no extra index. `saes.TensorSource` applies the same rule to its rows.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open

from harvesting.cache import read_manifest
from harvesting.epoch_order import Piece, EpochPlan
from harvesting.integrity import check_opened, checksum_problem, entry_path, expected_keys
from harvesting.prefetch import prefetched
from workbench.errors import WorkbenchError, choices_error

Split = Literal["train", "heldout", "all"]


class CacheReader:
    """Read a finished activation cache (see `harvesting.cache` for the layout).

    Opening runs the cheap checks of `harvesting.integrity` (every file a plain file inside the
    cache, present, with the size and header the manifest states); `verify=True` runs the full
    `sae cache verify` (checksums) first. Either names the first bad shard in one line. Without
    `verify`, each shard file's checksum is checked the first time this reader reads it
    (`checksum=False` skips that, for callers that have checked the files themselves).
    """

    def __init__(self, path: str | Path, allow_incomplete: bool = False, verify: bool = False,
                 checksum: bool = True) -> None:
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
        # files whose checksum has been checked (all of them after verify): each is hashed on its first read
        self._checksummed: set[tuple[int, str]] = set()
        if verify or not checksum:
            self._checksummed = {(i, k) for i, paths in enumerate(self._paths) for k in paths}
        self._checksum_lock = threading.Lock()

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
            out[h] = self.mapped_acts(index, h)
        return out

    def mapped_acts(self, index: int, hook: str) -> torch.Tensor:
        """A shard's activations, memory-mapped (pages are read when rows are gathered)."""
        return self._read(index, hook, ["acts"])["acts"]

    def read_ahead(self, pieces: Sequence[Piece], hooks: Sequence[str]) -> None:
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

    def row_fields(self, index: int, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """Row id fields `names` (see the manifest's `row_fields`) of shard `index`."""
        return self._read(index, "rows", names)

    def _read(self, index: int, key: str, names: Sequence[str] | None) -> dict[str, torch.Tensor]:
        """Tensors `names` (None: all) of one shard file; a damaged file is one line naming it."""
        p = self._paths[index][key]
        if (index, key) not in self._checksummed:
            self._check_checksum(index, key, p)
        try:
            with safe_open(p, framework="pt") as f:
                return {k: f.get_tensor(k) for k in (names if names is not None else list(f.keys()))}
        except Exception as e:  # safetensors raises its own SafetensorError; OSError for a vanished file
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise WorkbenchError(
                f"shard {self.shards[index]['index']} of the cache at {str(self.path)!r} ({p.name}) cannot be read "
                f"({first}); run `sae cache verify {self.path}` and harvest it again"
            ) from None

    def _check_checksum(self, index: int, key: str, p: Path) -> None:
        """The first read of a shard file: its sha256 against the manifest's (see harvesting.integrity)."""
        with self._checksum_lock:  # a prefetch thread may read too: hash each file once
            if (index, key) in self._checksummed:
                return
            try:
                problem = checksum_problem(p, self.shards[index], key)
            except OSError as e:
                problem = f"cannot be read ({e})"
            if problem:
                raise WorkbenchError(f"shard {self.shards[index]['index']} of the cache at {str(self.path)!r} "
                                     f"({p.name}) is damaged: {problem}; run `sae cache verify {self.path}` for "
                                     f"the full list, and harvest it again")
            self._checksummed.add((index, key))

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
                ctx = self.row_fields(i, ["context_ids"])["context_ids"]
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
            ids = self.row_fields(i, ["doc_ids"])["doc_ids"]
            if doc is None:
                if r0 >= start:  # the cut is a shard boundary: the last row before it is in the previous shard
                    prev = next(j for j in range(i - 1, -1, -1) if self.shards[j]["rows"][1] > self.shards[j]["rows"][0])
                    doc = int(self.row_fields(prev, ["doc_ids"])["doc_ids"][-1])
                else:
                    doc = int(ids[start - 1 - r0])
            lo = max(start, r0) - r0
            other = torch.nonzero(ids[lo:] != doc)
            if other.numel():
                return r0 + lo + int(other[0])
            start = r1
        return total

    def _pieces(self, split: Split, heldout_fraction: float) -> list[Piece]:
        if split not in ("train", "heldout", "all"):
            raise choices_error("split", split, ["train", "heldout", "all"])
        cut = self.heldout_start(heldout_fraction) if split != "all" else 0
        pieces = []
        for i, s in enumerate(self.shards):
            r0, r1 = s["rows"]
            n = r1 - r0
            if split == "all":
                piece = Piece(i, 0, n)
            elif split == "train":
                piece = Piece(i, 0, min(max(cut - r0, 0), n))
            else:
                piece = Piece(i, min(max(cut - r0, 0), n), n)
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
        dtype: torch.dtype | None = torch.float32,
        prefetch: int = 0,
        window_shards: int = 4,
        with_ids: bool = False,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Yield `{hook: [batch_size // world_size, d_model]}` batches (plus row ids if `with_ids`).

        Every rank of a data-parallel job iterates the same global batches and takes its own
        contiguous slice of each, so ranks never overlap and together see every row once.

        Rows come as `dtype` (float32 by default: a half cache's rows are upcast exactly), or as
        stored with `dtype=None`, which is how the trainer reads a half cache: half the bytes go to
        the device, and it upcasts them there. `normalize` scales in the returned dtype, so with
        `dtype=None` on a half cache it rounds once more; upcast first where that matters.

        `prefetch=N` gathers N batches ahead in a background thread. That pays when the caller
        mostly waits on a device (the trainer asks for it on CUDA); in a busy CPU process it
        costs: `benchmarks/bench_harvest.py` measures the thread at about half the caller's-thread
        rate on a 2-core machine (the gathers are memory-bound and the thread brings a second
        OpenMP team).
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
        plan = EpochPlan(pieces, batch_size, shuffle, seed, epoch, window_shards, drop_last)
        if start_batch > plan.num_batches:
            raise WorkbenchError(f"start_batch {start_batch} is past the {plan.num_batches} batches of this epoch")
        scales = {h: (self.norm_scale(h) if normalize else 1.0) for h in hooks}
        id_fields = list(self.manifest.get("row_fields", [])) if with_ids else []

        def produce() -> Iterator[dict[str, torch.Tensor]]:
            for batch in plan.iterate(self, hooks, id_fields, start_batch, rank, world_size):
                out = {}
                for k, v in batch.items():
                    if k in scales:
                        v = v if dtype is None else v.to(dtype)
                        if scales[k] != 1.0:
                            v.mul_(scales[k])  # batches are fresh gathers, never views of the cache
                    out[k] = v
                yield out

        return prefetched(produce(), prefetch) if prefetch > 0 else produce()
