"""Process groups: torch.distributed (NCCL on GPUs, gloo on CPUs), started by `torchrun`.

Both `sae train` (data parallel, see `saes.distributed`) and `sae harvest` (shards round-robin
over ranks, see `harvesting.plan`) join the group torchrun describes through this one module, so
the floor holds it and neither package imports the other. Outside torchrun everything here is a
no-op for one process.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from workbench.errors import WorkbenchError

T = TypeVar("T")

_OPS = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    started_here: bool = False
    # A sub-group of the run (see `split`): rank and world_size are then within it, and the
    # collectives below act on it only. None: the whole run.
    group: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def reduce(self, t: Tensor, op: str = "sum") -> Tensor:
        """All-reduce `t` in place over ranks (identity in one process); returns it."""
        if self.enabled:
            dist.all_reduce(t, op=_OPS[op], group=self.group)
        return t

    def broadcast_(self, t: Tensor, src: int = 0) -> Tensor:
        if self.enabled:
            dist.broadcast(t, src)
        return t

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier(group=self.group)

    def all_gather(self, t: Tensor) -> list[Tensor]:
        """Every rank's `t` (same shape on all ranks), in rank order; [t] in one process."""
        if not self.enabled:
            return [t]
        out = [torch.empty_like(t) for _ in range(self.world_size)]
        dist.all_gather(out, t.contiguous(), group=self.group)
        return out

    def gather_to_first(self, t: Tensor) -> list[Tensor] | None:
        """Every rank's `t` on the group's first rank (in rank order), None elsewhere; [t] in one process."""
        if not self.enabled:
            return [t]
        first = self.global_ranks[0]
        out = [torch.empty_like(t) for _ in range(self.world_size)] if self.rank == 0 else None
        dist.gather(t.contiguous(), out, dst=first, group=self.group)
        return out

    @property
    def global_ranks(self) -> list[int]:
        """The run-wide ranks of this group's members, in group-rank order."""
        if self.group is None:
            return list(range(self.world_size))
        return list(dist.get_process_group_ranks(self.group))

    def split(self, inner: int) -> tuple["DistContext", "DistContext"]:
        """Split the run into (outer, inner) groups: run rank r is inner rank r % inner of outer replica r // inner.

        Ranks of one inner group are consecutive (on one machine under torchrun, where NCCL is
        fastest); the outer group joins the ranks with the same inner rank. Every rank must call
        this, in the same order (torch.distributed creates groups collectively). `inner` must
        divide the world size (the caller says why, in its own terms).
        """
        if inner < 1 or self.world_size % inner:
            raise ValueError(f"{inner} does not divide {self.world_size}")
        outer = self.world_size // inner
        mine_in = mine_out = None
        for o in range(outer):  # inner groups: consecutive ranks
            ranks = [o * inner + i for i in range(inner)]
            g = dist.new_group(ranks) if self.enabled else None
            if self.rank in ranks:
                mine_in = DistContext(ranks.index(self.rank), inner, self.local_rank, False, g)
        for i in range(inner):  # outer groups: the same inner rank in every replica
            ranks = [o * inner + i for o in range(outer)]
            g = dist.new_group(ranks) if self.enabled else None
            if self.rank in ranks:
                mine_out = DistContext(ranks.index(self.rank), outer, self.local_rank, False, g)
        assert mine_in is not None and mine_out is not None
        return mine_out, mine_in

    def all_ok(self, ok: bool) -> bool:
        """Whether `ok` holds on every rank: a barrier that also tells each rank if another one failed."""
        if not self.enabled:
            return ok
        dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        flag = torch.tensor([1 if ok else 0], dtype=torch.int32, device=dev)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=self.group)
        return bool(flag.item())

    def together(self, fn: Callable[[], T]) -> T:
        """Run `fn` here, then meet the other ranks; if it failed on any rank, every rank raises.

        Without this, a rank whose step failed would leave the others waiting forever at their next
        collective. The failing rank re-raises its own error; the others name it as elsewhere.
        """
        try:
            result = fn()
        except Exception:
            self.all_ok(False)
            raise
        if not self.all_ok(True):
            raise WorkbenchError(f"another process of this run failed (this is rank {self.rank} of "
                                 f"{self.world_size}); its error is printed above")
        return result

    def close(self) -> None:
        if self.started_here and dist.is_initialized():
            dist.destroy_process_group()


def setup_distributed(device: torch.device) -> DistContext:
    """Join the process group torchrun describes (or one already initialised); one process otherwise."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return DistContext()
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), True)


def is_main_process() -> bool:
    """Rank 0 of a torchrun launch, or a lone process: the one that prints summaries."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0
