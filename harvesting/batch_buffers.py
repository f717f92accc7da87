"""Fresh batch tensors on memory that is reused once no tensor refers to it any more.

A consumer loop (`for batch in reader.batches(...)`, the trainer's too) still holds batch i while
batch i+1 is gathered, so two batches of several MB are alive at once, and glibc hands the freed
one back to the system: every new batch had its pages faulted in and zeroed again. Recycling the
memory removes that (see `benchmarks/bench_harvest.py`). A buffer goes back to the pool only when
the last tensor, view or storage over it is gone, so a batch the caller keeps is never reused.
"""

from __future__ import annotations

import math
import threading
import weakref

import numpy as np
import torch

_SMALL = 1 << 20  # below this, the allocator's own free lists already reuse memory


class BatchBuffers:
    """Hands out uninitialised tensors; keeps up to `keep` freed buffers of each size for reuse."""

    def __init__(self, keep: int = 4) -> None:
        self._free: dict[int, list[np.ndarray]] = {}
        self._keep = keep
        self._lock = threading.Lock()  # a buffer can come back in whichever thread drops its last tensor

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes < _SMALL:
            return torch.empty(shape, dtype=dtype)
        with self._lock:
            free = self._free.get(nbytes)
            buf = free.pop() if free else None
        if buf is None:
            buf = np.empty(nbytes, dtype=np.uint8)
        owner = buf[:]  # the tensor's storage holds this view; its death returns `buf`
        weakref.finalize(owner, self._release, buf)
        return torch.frombuffer(owner, dtype=dtype).view(shape)

    def _release(self, buf: np.ndarray) -> None:
        with self._lock:
            free = self._free.setdefault(buf.nbytes, [])
            if len(free) < self._keep:
                free.append(buf)
