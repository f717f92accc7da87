"""Gather rows of memory-mapped shards into a batch: a small C loop that prefetches rows ahead.

A shuffled batch is thousands of separate row reads at random places in a window of hundreds of
MB, so it is bound by memory latency. `torch.index_select` copies one row after another and waits
for each. This loop asks for row i + 8 while it copies row i, on every thread of an OpenMP team
(libgomp goes by the same soname as the copy torch loads, so the process keeps one runtime and one
thread pool). On a 2-core EPYC it gathers 4,096 x 576 float32 rows in 0.35 ms, where
`index_select` takes 0.51 ms (`benchmarks/bench_harvest.py` prints both floors).

The C source below is compiled once per machine with the system C compiler (`$CC`, else `cc`),
which the Triton path needs anyway, into the user's cache directory. Without a compiler or OpenMP,
with `SAE_NATIVE_GATHER=0`, or for tensors the loop does not handle, `torch.index_select` does the
same work. The compiled file is named by a hash of its source and flags, and written atomically,
so processes sharing a home directory (data-parallel ranks) never see half a library.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

_SOURCE = r"""
#include <omp.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    int64_t n_pieces; const char *const *srcs; const int64_t *const *idxs; const int64_t *counts;
    int64_t row; char *dst; int64_t lo, hi;
} job_t;

#define AHEAD 8

static void run(const job_t *j) {
    int64_t base = 0;  /* first output row of the current piece */
    for (int64_t p = 0; p < j->n_pieces; base += j->counts[p], p++) {
        int64_t a = j->lo > base ? j->lo : base, b = j->hi < base + j->counts[p] ? j->hi : base + j->counts[p];
        const char *src = j->srcs[p];
        const int64_t *idx = j->idxs[p];
        for (int64_t i = a; i < b; i++) {
            if (i + AHEAD < b) {
                const char *q = src + idx[i + AHEAD - base] * j->row;
                for (int64_t o = 0; o < j->row; o += 64) __builtin_prefetch(q + o, 0, 0);
            }
            memcpy(j->dst + i * j->row, src + idx[i - base] * j->row, (size_t)j->row);
        }
    }
}

/* dst[r] = srcs[p][idxs[p][r - start of p]] for the rows of every piece in turn, on n_threads threads */
int gather_rows(int64_t n_pieces, const char *const *srcs, const int64_t *const *idxs, const int64_t *counts,
                int64_t row, char *dst, int64_t n_threads) {
    int64_t total = 0;
    for (int64_t p = 0; p < n_pieces; p++) total += counts[p];
    if (n_threads < 1) n_threads = 1;
    if (total < 256 * n_threads) n_threads = 1;
    #pragma omp parallel num_threads(n_threads)
    {
        int64_t t = omp_get_thread_num(), n = omp_get_num_threads();
        job_t j = {n_pieces, srcs, idxs, counts, row, dst, total * t / n, total * (t + 1) / n};
        run(&j);
    }
    return 0;
}
"""
_FLAGS = ["-O2", "-shared", "-fPIC", "-fopenmp"]
_lib: ctypes.CDLL | None | bool = False  # False: not tried yet; None: unavailable
_lock = threading.Lock()


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "sae-workbench"


def _build() -> ctypes.CDLL | None:
    if os.environ.get("SAE_NATIVE_GATHER", "1") == "0":
        return None
    cc = os.environ.get("CC") or "cc"
    if shutil.which(cc) is None:
        return None
    tag = hashlib.sha256((_SOURCE + " ".join(_FLAGS) + cc).encode()).hexdigest()[:16]
    path = _cache_dir() / f"row_gather-{tag}.so"
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
                src, out = Path(tmp) / "row_gather.c", Path(tmp) / "row_gather.so"
                src.write_text(_SOURCE)
                subprocess.run([cc, *_FLAGS, str(src), "-o", str(out)], check=True, capture_output=True, timeout=120)
                os.replace(out, path)  # atomic: another process sees the whole library or none
        lib = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError):
        return None
    f = lib.gather_rows
    f.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
                  ctypes.c_int64]
    f.restype = ctypes.c_int
    return lib


def native_available() -> bool:
    """Whether the compiled loop is in use (it is built on the first call)."""
    global _lib
    with _lock:
        if _lib is False:
            _lib = _build()
    return _lib is not None


@contextmanager
def torch_gathers() -> Iterator[None]:
    """Gather with `torch.index_select` inside the block, as a machine without a C compiler does
    (for benchmarks that compare the two; the compiled loop stays loaded for afterwards)."""
    global _lib
    native_available()
    with _lock:
        saved, _lib = _lib, None
    try:
        yield
    finally:
        with _lock:
            _lib = saved


def gather_rows(pieces: Sequence[torch.Tensor], indices: Sequence[torch.Tensor], out: torch.Tensor, *,
                checked: bool = True) -> None:
    """out = cat([pieces[p][indices[p]] for p]), rows of every piece in turn, written in place.

    `checked=False` skips the range check of the indices (two reductions per piece) for a caller
    whose indices are in range by construction, as the epoch order's permutations are.
    """
    native = (native_available() and out.device.type == "cpu" and out.is_contiguous()
              and all(p.device.type == "cpu" and p.is_contiguous() and p.dtype == out.dtype
                      and p.shape[1:] == out.shape[1:] for p in pieces)
              and all(i.dtype == torch.int64 and i.is_contiguous() for i in indices)
              and sum(i.numel() for i in indices) == out.shape[0])
    if not native:
        a = 0
        for p, i in zip(pieces, indices):
            torch.index_select(p, 0, i, out=out[a:a + i.numel()])
            a += i.numel()
        return
    for p, i in zip(pieces, indices) if checked else ():  # the C loop trusts its indices
        if i.numel() and (int(i.min()) < 0 or int(i.max()) >= p.shape[0]):
            raise IndexError(f"row index out of range for a piece of {p.shape[0]} rows")
    n = len(pieces)
    srcs = (ctypes.c_void_p * n)(*[p.data_ptr() for p in pieces])
    idxs = (ctypes.c_void_p * n)(*[i.data_ptr() for i in indices])
    counts = (ctypes.c_int64 * n)(*[i.numel() for i in indices])
    row = out[0].numel() * out.element_size() if out.shape[0] else 0
    _lib.gather_rows(n, srcs, idxs, counts, row, out.data_ptr(), torch.get_num_threads())  # type: ignore[union-attr]
