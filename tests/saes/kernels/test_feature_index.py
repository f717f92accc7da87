"""The reverse index and token offsets as CUDA builds them: no `bincount`, no host read.

On CUDA `torch.bincount` reads the largest id back to the host (a synchronisation in every
backward pass), so on CUDA tensors `feature_index` and `token_offsets` search sorted ids instead.
Both paths run on the CPU here (`sync_free=True` is what CUDA takes) and must agree exactly.
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

from saes.kernels.codes import feature_index, token_offsets

SYNCING = {torch.bincount, torch.Tensor.bincount, torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__int__,
           torch.Tensor.__bool__, torch.Tensor.nonzero, torch.nonzero, torch.Tensor.max, torch.max}


class Spy(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in SYNCING:
            self.seen.append(func.__name__)
        return func(*args, **(kwargs or {}))


def reference_offsets(ids: torch.Tensor, n: int) -> torch.Tensor:
    """Offsets of each id's run among the sorted ids, counted one by one."""
    counts = [0] * n
    for i in ids.tolist():
        counts[i] += 1
    out = [0]
    for c in counts:
        out.append(out[-1] + c)
    return torch.tensor(out)


def test_sync_free_feature_index_equals_the_counted_one():
    gen = torch.Generator().manual_seed(0)
    for n, f in ((0, 5), (1, 1), (300, 7), (257, 1000)):
        cols = torch.randint(0, f, (n,), generator=gen)
        if n:
            cols[cols == f - 1] = 0  # the last feature never fires
        with Spy() as spy:
            order, fo = feature_index(cols, f, sync_free=True)
        assert spy.seen == [], spy.seen
        ref_order, ref_fo = feature_index(cols, f, sync_free=False)
        assert torch.equal(fo, reference_offsets(cols, f)) and torch.equal(ref_fo, fo)
        assert torch.equal(order, ref_order) and torch.equal(order, torch.argsort(cols, stable=True))
        assert fo.dtype == torch.long and order.dtype == torch.long


def test_sync_free_token_offsets_equal_the_counted_ones():
    gen = torch.Generator().manual_seed(1)
    for n, b in ((0, 3), (50, 9), (400, 64)):
        rows = torch.sort(torch.randint(0, b, (n,), generator=gen)).values
        with Spy() as spy:
            off = token_offsets(rows, b, sync_free=True)
        assert spy.seen == [], spy.seen
        assert torch.equal(off, reference_offsets(rows, b)) and torch.equal(off, token_offsets(rows, b, sync_free=False))
