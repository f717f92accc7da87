"""The one file every run trains from: training rows, the order they are fed in, held-out rows.

Written once by the driver, read by each worker in its own venv (so: torch + safetensors only).
Tensors: `rows [M, d]` float32 (the training rows used), `order [T]` int64 (row indices in feed
order: T = training tokens, a multiple of the batch size; when the cache holds fewer rows than T
the rows repeat, each pass in a fresh permutation), `heldout [H, d]` float32. The run's shared
settings (batch size, k, F, learning rate, seed, where the data came from) are JSON under the
metadata key "params", so no worker can disagree with another about them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor


@dataclass
class Batches:
    rows: Tensor
    order: Tensor
    heldout: Tensor
    params: dict[str, Any]

    @property
    def batch_size(self) -> int:
        return int(self.params["batch_size"])

    @property
    def num_batches(self) -> int:
        return self.order.numel() // self.batch_size

    @property
    def tokens(self) -> int:
        return self.num_batches * self.batch_size

    def batch(self, b: int) -> Tensor:
        """Batch b as a fresh contiguous [B, d] tensor (every library gets its own copy, as from a loader)."""
        bs = self.batch_size
        return self.rows.index_select(0, self.order[b * bs:(b + 1) * bs])

    def __iter__(self) -> Iterator[Tensor]:
        for b in range(self.num_batches):
            yield self.batch(b)

    def last_rows(self, n: int) -> Tensor:
        """The last n training rows in feed order (the window the dead-feature rule looks at)."""
        return self.rows.index_select(0, self.order[self.tokens - n:self.tokens])


def feed_order(num_rows: int, tokens: int, seed: int) -> Tensor:
    """Indices of `tokens` rows: pass after pass over num_rows rows, each pass a seeded permutation."""
    if num_rows < 1 or tokens < 1:
        raise ValueError(f"need at least one row and one token (rows {num_rows}, tokens {tokens})")
    parts, got, p = [], 0, 0
    while got < tokens:
        g = torch.Generator().manual_seed(seed * 1_000_003 + p)
        parts.append(torch.randperm(num_rows, generator=g))
        got += num_rows
        p += 1
    return torch.cat(parts)[:tokens]


def write(path: str | Path, rows: Tensor, order: Tensor, heldout: Tensor, params: dict[str, Any]) -> Path:
    """Atomically write the batches file (temporary name, then rename)."""
    path = Path(path)
    if order.numel() % int(params["batch_size"]):
        raise ValueError(f"{order.numel()} tokens is not a multiple of the batch size {params['batch_size']}")
    if int(order.max()) >= rows.shape[0] or int(order.min()) < 0:
        raise ValueError("order holds indices outside the rows")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({"rows": rows.float().contiguous(), "order": order.to(torch.int64).contiguous(),
               "heldout": heldout.float().contiguous()}, str(tmp), metadata={"params": json.dumps(params)})
    os.replace(tmp, path)
    return path


def read(path: str | Path) -> Batches:
    with safe_open(str(path), framework="pt") as f:
        params = json.loads(f.metadata()["params"])
        return Batches(f.get_tensor("rows"), f.get_tensor("order"), f.get_tensor("heldout"), params)
