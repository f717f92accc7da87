"""Recycled batch memory: reused once nothing refers to it, never while a tensor or view still does."""

from __future__ import annotations

import gc
from pathlib import Path

import torch

from harvesting import CacheReader, CacheWriter
from harvesting.batch_buffers import BatchBuffers

D = 1024  # 256-row batches of 1024 float32 are 1 MiB: large enough to be recycled


def test_a_dropped_buffer_is_reused_and_a_held_one_is_not() -> None:
    pool = BatchBuffers()
    a = pool.empty((256, D), torch.float32)
    pa = a.data_ptr()
    b = pool.empty((256, D), torch.float32)
    assert b.data_ptr() != pa  # `a` is alive
    view = a[3:5]
    del a
    gc.collect()
    c = pool.empty((256, D), torch.float32)
    assert c.data_ptr() != pa  # a view of `a` still holds its memory
    del view
    gc.collect()
    d = pool.empty((256, D), torch.float32)
    assert d.data_ptr() == pa  # now it comes back
    assert pool.empty((4, 4), torch.float32).shape == (4, 4)  # small tensors come from the allocator


def test_batches_a_caller_keeps_are_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "acts"
    w = CacheWriter(path, {"h": D}, "float32", shard_tokens=1024, header={"model": {"id": "synthetic"}})
    g = torch.Generator().manual_seed(0)
    for start in range(0, 4096, 512):
        ids = torch.arange(start, start + 512)
        x = torch.randn(512, D, generator=g)
        x[:, 0] = ids.float()
        w.add({"h": x}, {"token_ids": ids.int(), "doc_ids": ids.int(), "context_ids": ids // 64,
                         "positions": (ids % 64).int()}, contexts=8)
    w.finish()
    r = CacheReader(path)
    kept, copies, ptrs = [], [], set()
    for i, b in enumerate(r.batches("h", 256, split="all", seed=1)):
        ptrs.add(b["h"].data_ptr())
        if i % 3 == 0:  # keep every third batch whole, and a view of every third one after it
            kept.append(b["h"])
            copies.append(b["h"].clone())
        elif i % 3 == 1:
            kept.append(b["h"][10:20])
            copies.append(b["h"][10:20].clone())
    assert all(torch.equal(k, c) for k, c in zip(kept, copies))
    assert len(ptrs) < 16  # the 16 batches did reuse memory (the batches dropped at once)
