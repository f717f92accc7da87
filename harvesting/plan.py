"""Which forward passes make which shard: the one place a harvest's shard boundaries are decided.

A shard's boundaries depend only on how many rows each batch keeps, and that is known before the
forward pass (text: the keep mask of the packed contexts; vision: a fixed number of rows per
image). So every process can walk the whole (cheap) context stream and compute the same plan,
then run the forward passes only for the shards it owns: shard i belongs to rank i % world,
round-robin, so ranks stay balanced whatever the shard count. One process is world 1 and owns
every shard; the same walk, cut by the same rule (`harvesting.cache.shard_is_full`), makes the
single-process cache, which is why a multi-process cache is identical to it, row for row.

The last batch is trimmed to the token budget before it runs (a cache never holds a batch more),
and every shard starts on a batch boundary, so the batches a rank runs are exactly the batches a
single process runs: on a CPU with the same thread count the activations are bitwise equal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch

from harvesting.cache import shard_is_full


@dataclass
class PlannedBatch:
    """One forward pass: contexts `first_context ...` of shard `shard`.

    `inputs` may be a function producing them, so that a process that does not own the shard
    never pays for preparing them (vision preprocessing). `keep` [b, t] marks the positions
    stored; `ids` holds each position's ids [b, t] (row fields), `context_ids` and text
    `positions` included.
    """

    shard: int
    first_context: int
    inputs: torch.Tensor | Callable[[], torch.Tensor]
    keep: torch.Tensor
    ids: dict[str, torch.Tensor]

    def load_inputs(self) -> torch.Tensor:
        return self.inputs() if callable(self.inputs) else self.inputs


@dataclass
class ShardEnd:
    """Shard `index` ends here: it holds rows [rows[0], rows[1]) of contexts [contexts[0], contexts[1])."""

    index: int
    rows: tuple[int, int]
    contexts: tuple[int, int]


Batch = tuple["torch.Tensor | Callable[[], torch.Tensor]", torch.Tensor, dict[str, torch.Tensor]]


def contexts_needed(keep: torch.Tensor, remaining: int) -> int:
    """How many leading contexts of a batch fill the rest of the budget (the cache never holds a batch more)."""
    per_ctx = keep.sum(1).cumsum(0)
    return min(int(torch.searchsorted(per_ctx, torch.tensor(remaining), right=False)) + 1, keep.shape[0])


def plan_shards(batches: Iterable[Batch], tokens: int, shard_tokens: int,
                positions: bool) -> Iterator[PlannedBatch | ShardEnd]:
    """Walk the batches (inputs, keep [b, t], ids [b, t]) of a harvest from its first context.

    Yields each batch tagged with its shard, and a `ShardEnd` after a shard's last batch.
    `positions` adds each position's index to the ids (text caches store it).
    """
    index, done, ctx = 0, 0, 0  # shard index, rows planned, contexts planned
    row0, ctx0 = 0, 0  # where the open shard starts
    for inputs, keep, ids in batches:
        if done >= tokens:
            break
        n_ctx = contexts_needed(keep, tokens - done)
        if n_ctx < keep.shape[0]:  # the budget ends inside this batch: trim it before it runs
            full = inputs
            inputs = (lambda f=full, n=n_ctx: f()[:n]) if callable(full) else full[:n_ctx]
            keep, ids = keep[:n_ctx], {k: v[:n_ctx] for k, v in ids.items()}
        b, t = keep.shape
        ids = {**ids, "context_ids": torch.arange(ctx, ctx + b).unsqueeze(1).expand(b, t)}
        if positions:
            ids["positions"] = torch.arange(t).unsqueeze(0).expand(b, t)
        yield PlannedBatch(index, ctx, inputs, keep, ids)
        done += int(keep.sum())
        ctx += b
        if shard_is_full(done - row0, shard_tokens):
            yield ShardEnd(index, (row0, done), (ctx0, ctx))
            index, row0, ctx0 = index + 1, done, ctx
    if ctx > ctx0:
        yield ShardEnd(index, (row0, done), (ctx0, ctx))


def owner(shard: int, world_size: int) -> int:
    """The rank that runs and writes shard `shard`."""
    return shard % world_size
