"""The one sparse format every kernel speaks: the active features of a batch of tokens.

CSR by token (rows sorted ascending, `offsets` delimits each token's entries) because decoding
and the input gradient are per-token reductions, which `F.embedding_bag` and the Triton kernels do
best over contiguous runs. Codes with the same number k of entries per token (TopK) keep `k` so
every kernel can take the fixed-width fast path and skip the CSR bookkeeping entirely.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class SparseCodes:
    """Active features of B tokens: entry n is token `rows[n]`, feature `cols[n]`, value `vals[n]`.

    `vals` stays attached to the autograd graph, so a loss on the codes (or on a decode of them)
    trains the encoder that produced them.
    """

    vals: Tensor
    cols: Tensor
    rows: Tensor
    offsets: Tensor
    num_features: int
    k: int | None = None
    # Lazily built index data (the reverse index by feature), shared with the autograd Functions
    # that produced or consume these codes so both weight gradients sort the entries only once.
    # It never holds `vals`, so keeping it on an autograd context makes no reference cycle.
    cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def batch_size(self) -> int:
        return self.offsets.numel() - 1

    @property
    def nnz(self) -> int:
        return self.cols.numel()

    @classmethod
    def from_topk(cls, vals: Tensor, idx: Tensor, num_features: int) -> "SparseCodes":
        """Fixed-k codes from `[B, k]` values and feature ids (the output of a per-token top-k)."""
        if vals.shape != idx.shape or vals.dim() != 2:
            raise ValueError(f"vals {tuple(vals.shape)} and idx {tuple(idx.shape)} must both be [B, k]")
        b, k = vals.shape
        dev = idx.device
        rows = torch.arange(b, device=dev).repeat_interleave(k)
        offsets = torch.arange(b + 1, device=dev) * k
        return cls(vals.reshape(-1), idx.reshape(-1).long(), rows, offsets, num_features, k=k)

    @classmethod
    def from_rows_cols(
        cls, vals: Tensor, rows: Tensor, cols: Tensor, batch_size: int, num_features: int
    ) -> "SparseCodes":
        """Variable-width codes from entries already sorted by token (`rows` ascending)."""
        return cls(vals, cols.long(), rows.long(), token_offsets(rows, batch_size), num_features)

    def l0(self) -> Tensor:
        """Number of stored entries per token, `[B]` (entries whose value is exactly 0 count too)."""
        return self.offsets[1:] - self.offsets[:-1]

    def to_dense(self) -> Tensor:
        """The `[B, F]` matrix; for tests and small cases only (it is exactly what the kernels avoid)."""
        out = self.vals.new_zeros(self.batch_size, self.num_features)
        return out.index_put((self.rows, self.cols), self.vals, accumulate=True)

    def by_feature(self) -> tuple[Tensor, Tensor]:
        """Reverse index: `(order, feature_offsets)` with entries `order[fo[f]:fo[f+1]]` in feature f.

        Built once per codes and reused by the decoder and encoder weight gradients.
        """
        return cached_feature_index(self.cache, self.cols, self.num_features)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "SparseCodes":
        """The same codes on `device`, values in `dtype` (indices keep theirs); the index cache is not
        carried, since its tensors live on the old device."""
        return SparseCodes(self.vals.to(device, dtype), self.cols.to(device), self.rows.to(device),
                           self.offsets.to(device), self.num_features, self.k)

    def detach(self) -> "SparseCodes":
        return SparseCodes(
            self.vals.detach(), self.cols, self.rows, self.offsets, self.num_features, self.k, self.cache
        )


def feature_index(cols: Tensor, num_features: int, sync_free: bool | None = None) -> tuple[Tensor, Tensor]:
    """Sort entries by feature (stable, so ties keep token order) and delimit each feature's run.

    `sync_free` (default: on CUDA tensors) builds the run offsets by a search of the sorted ids
    instead of `bincount`, which on CUDA reads the largest id back to the host (a synchronisation
    in every backward pass); it also sorts the ids as int32 keys (a radix sort over half the
    bits, same order). On the CPU `bincount` is the faster of the two, and both give the same
    offsets.
    """
    if sync_free is None:
        sync_free = cols.is_cuda
    if sync_free:
        keys = cols.int() if num_features < 2**31 else cols
        sorted_keys, order = torch.sort(keys, stable=True)
        return order, token_offsets(sorted_keys, num_features, sync_free=True)
    return torch.argsort(cols, stable=True), token_offsets(cols, num_features, sync_free=False)


def token_offsets(rows: Tensor, batch_size: int, sync_free: bool | None = None) -> Tensor:
    """CSR offsets `[batch_size + 1]` of entries sorted by token (`rows` ascending); sync-free on
    CUDA as in `feature_index` (which uses it for runs of features: only the search needs the ids
    sorted, `bincount` takes them in any order)."""
    if rows.is_cuda if sync_free is None else sync_free:
        return torch.searchsorted(rows, torch.arange(batch_size + 1, device=rows.device, dtype=rows.dtype))
    counts = torch.bincount(rows, minlength=batch_size)
    offsets = torch.zeros(batch_size + 1, dtype=torch.long, device=rows.device)
    torch.cumsum(counts, 0, out=offsets[1:])
    return offsets


class FeatureIndex:
    """The reverse index of some codes, built on first use: `order, fo = index` unpacks it.

    The autograd Functions hand one to both weight gradients, so the entries are sorted once, and
    not at all when no kernel reads the index (the Triton path's atomic reductions).
    """

    def __init__(self, cache: dict | None, cols: Tensor, num_features: int) -> None:
        self.cache = cache if cache is not None else {}
        self.cols, self.num_features = cols, num_features

    def get(self) -> tuple[Tensor, Tensor]:
        return cached_feature_index(self.cache, self.cols, self.num_features)

    def __iter__(self):
        return iter(self.get())

    @property
    def built(self) -> bool:
        return "by_feature" in self.cache


def cached_feature_index(cache: dict, cols: Tensor, num_features: int) -> tuple[Tensor, Tensor]:
    if "by_feature" not in cache:
        cache["by_feature"] = feature_index(cols, num_features)
    return cache["by_feature"]
