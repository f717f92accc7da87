"""TensorSource and the cache reader split held-out data by one rule: the last contexts' rows,
the cut moved to a document boundary."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harvesting import CacheReader, CacheWriter
from saes import TensorSource
from workbench.errors import WorkbenchError

D = 4


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """Contexts of uneven length (some store no rows at all), in shards that cut through contexts;
    documents of 9 rows, packed across contexts and shards."""
    path = tmp_path_factory.mktemp("d") / "acts"
    w = CacheWriter(path, {"a": D}, "float32", shard_tokens=23, header={"model": {"id": "synthetic"}, "context_length": 8})
    row, ctx = 0, 0
    for batch in range(15):  # 15 forward passes of 4 contexts
        ids_ctx = torch.cat([torch.full(((c * 5) % 7,), c) for c in range(ctx, ctx + 4)])
        n = ids_ctx.numel()
        ids = torch.arange(row, row + n)
        acts = torch.randn(n, D)
        acts[:, 0] = ids.float()  # column 0 names the row
        w.add({"a": acts}, {"token_ids": ids.to(torch.int32), "doc_ids": ids.to(torch.int32) // 9,
                            "context_ids": ids_ctx, "positions": torch.zeros(n, dtype=torch.int32)}, contexts=4)
        row, ctx = row + n, ctx + 4
    w.finish()
    return path


def rows(batches) -> list[int]:
    return sorted(int(v) for b in batches for v in b["a"][:, 0])


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.1, 0.25, 0.5, 0.9])
def test_tensor_source_holds_out_the_same_rows_as_the_cache(cache, fraction):
    r = CacheReader(cache)
    everything = list(r.batches("a", 1000, split="all", shuffle=False, drop_last=False, with_ids=True))
    acts = torch.cat([b["a"] for b in everything])
    ctx = torch.cat([b["context_ids"] for b in everything])
    docs = torch.cat([b["doc_ids"] for b in everything])
    src = TensorSource({"a": acts}, context_ids=ctx, num_contexts=r.num_contexts, doc_ids=docs)
    for split in ("train", "heldout"):
        if r.num_rows(split, fraction) == 0:
            assert src.num_batches(5, split, fraction, drop_last=False) == 0
            continue
        want = rows(r.batches("a", 5, split=split, heldout_fraction=fraction, shuffle=False, drop_last=False))
        got = rows(src.batches(["a"], 5, split=split, heldout_fraction=fraction, shuffle=False, drop_last=False))
        assert got == want, (split, fraction)
        if split == "heldout":  # no document on both sides
            train = rows(r.batches("a", 5, split="train", heldout_fraction=fraction, shuffle=False, drop_last=False))
            assert not {i // 9 for i in train} & {i // 9 for i in want}
        assert src.num_batches(5, split, fraction, drop_last=False) == r.num_batches(5, split, fraction, drop_last=False)
    if fraction == 0.25:  # the fixture is uneven enough that "the last rows" would be a different split
        n = acts.shape[0]
        by_rows = list(range(n - -(-n // 4), n))
        assert rows(r.batches("a", 5, split="heldout", heldout_fraction=fraction, shuffle=False, drop_last=False)) != by_rows


def test_without_contexts_every_row_is_its_own_context():
    x = torch.arange(50, dtype=torch.float32).view(50, 1).repeat(1, D)
    src = TensorSource(x)
    held = rows({"a": b["x"]} for b in src.batches(["x"], 7, split="heldout", heldout_fraction=0.1, shuffle=False,
                                                    drop_last=False))
    assert held == list(range(45, 50))  # the last ceil(0.1 * 50) rows
    with pytest.raises(WorkbenchError, match="non-decreasing"):
        TensorSource(x, context_ids=torch.arange(50).flip(0))


def test_documents_move_the_cut(cache):
    r = CacheReader(cache)
    everything = list(r.batches("a", 1000, split="all", shuffle=False, drop_last=False, with_ids=True))
    ctx = torch.cat([b["context_ids"] for b in everything])
    acts = torch.cat([b["a"] for b in everything])
    by_context = TensorSource({"a": acts}, context_ids=ctx, num_contexts=r.num_contexts)
    moved = [f for f in (0.1, 0.25, 0.5) if by_context.num_batches(1, "heldout", f) != r.num_rows("heldout", f)]
    assert moved, "the fixture has no document across a cut: the test would prove nothing"
