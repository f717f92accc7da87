"""Data parallelism: torch.distributed (NCCL on GPUs, gloo on CPUs), started by `torchrun`.

Every rank holds every SAE and reads its slice of the same global batch. Losses are divided by
the global batch's variance, so summing each rank's gradients gives exactly the one-process
gradient of the global batch (up to float summation order); the trainer sums gradients with one
all-reduce per SAE instead of wrapping modules in DDP, which keeps the decoder-gradient
projection, clipping and Adam identical to the single-process step.

Selection rules that look at the whole batch (BatchTopK, Feature Choice, Mutual Choice) select
within each rank's slice: with W ranks, each rank allocates its k*B/W budget over its B/W
tokens. TopK, ReLU, JumpReLU and MP are per-token and therefore match the one-process run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


_OPS = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    started_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def reduce(self, t: Tensor, op: str = "sum") -> Tensor:
        """All-reduce `t` in place over ranks (identity in one process); returns it."""
        if self.enabled:
            dist.all_reduce(t, op=_OPS[op])
        return t

    def broadcast_(self, t: Tensor, src: int = 0) -> Tensor:
        if self.enabled:
            dist.broadcast(t, src)
        return t

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

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
