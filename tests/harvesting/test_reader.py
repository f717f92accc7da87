"""The training reader: exact permutations, seeded order, skip-ahead, rank slices, splits, normalisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from harvesting import CacheReader, CacheWriter
from harvesting.epoch_order import _Window, window_seed
from workbench.errors import WorkbenchError

D = 8
T = 10  # rows per context


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A cache written by the real writer: row value = its global row number, so order is visible."""
    path = tmp_path_factory.mktemp("r") / "acts"
    w = CacheWriter(path, {"a": D, "b": D}, "float32", shard_tokens=97, header={"model": {"id": "synthetic"}, "context_length": T})
    g = torch.Generator().manual_seed(0)
    row = 0
    for batch in range(40):  # 40 forward passes of 3 contexts, shards of ~100 rows
        n = 3 * T
        ids = torch.arange(row, row + n)
        acts = torch.randn(n, D, generator=g) * 3.0
        acts[:, 0] = ids.float()  # column 0 names the row
        w.add({"a": acts, "b": acts * 2}, {
            "token_ids": ids.to(torch.int32), "doc_ids": ids.to(torch.int32) // 25,
            "context_ids": ids // T, "positions": (ids % T).to(torch.int32),
        }, contexts=3)
        row += n
    w.finish()
    return path


def _ids(batches) -> torch.Tensor:
    return torch.cat([b["a"][:, 0] for b in batches]).long()


def test_an_epoch_is_a_permutation_of_the_train_rows(cache: Path) -> None:
    r = CacheReader(cache)
    train = r.num_rows("train", 0.1)
    got = _ids(r.batches("a", 64, seed=1, heldout_fraction=0.1, drop_last=False))
    assert got.numel() == train
    assert torch.equal(got.sort().values, torch.arange(train))  # none lost, none repeated
    assert not torch.equal(got, torch.arange(train))  # and actually shuffled
    # shuffling spans shards: early batches mix rows from several shards
    assert len(set((got[:64] // 100).tolist())) > 2


def test_order_is_a_function_of_seed_and_epoch(cache: Path) -> None:
    r = CacheReader(cache)
    a = _ids(r.batches("a", 50, seed=3, epoch=0))
    assert torch.equal(a, _ids(r.batches("a", 50, seed=3, epoch=0, prefetch=0)))
    assert not torch.equal(a, _ids(r.batches("a", 50, seed=3, epoch=1)))
    assert not torch.equal(a, _ids(r.batches("a", 50, seed=4, epoch=0)))


def test_start_batch_resumes_the_same_order(cache: Path) -> None:
    r = CacheReader(cache)
    full = list(r.batches("a", 48, seed=2, window_shards=2))
    for start in (1, 5, len(full) - 1):
        tail = list(r.batches("a", 48, seed=2, window_shards=2, start_batch=start))
        assert len(tail) == len(full) - start
        assert all(torch.equal(x["a"], y["a"]) for x, y in zip(tail, full[start:]))


def test_hooks_stay_row_aligned_and_ids_come_along(cache: Path) -> None:
    r = CacheReader(cache)
    for b in r.batches(["a", "b"], 40, seed=0, with_ids=True):
        torch.testing.assert_close(b["b"], 2 * b["a"])
        assert torch.equal(b["a"][:, 0].long(), b["token_ids"].long())
        assert torch.equal(b["context_ids"], b["token_ids"].long() // T)


@pytest.mark.parametrize("batch,world,window,drop_last", [(64, 2, 4, True), (60, 3, 2, False), (96, 4, 1, False)])
def test_ranks_take_disjoint_slices_of_the_same_global_batch(cache: Path, batch, world, window, drop_last) -> None:
    # each rank gathers only its own rows, also of batches that span two windows and of a short last batch
    r = CacheReader(cache)
    kw = dict(seed=7, window_shards=window, drop_last=drop_last, with_ids=True, split="all")
    glob = list(r.batches(["a", "b"], batch, **kw))
    ranks = [list(r.batches(["a", "b"], batch, rank=k, world_size=world, **kw)) for k in range(world)]
    assert all(len(x) == len(glob) for x in ranks)
    for i, g in enumerate(glob):
        for key in ("a", "b", "token_ids"):
            assert torch.equal(torch.cat([ranks[k][i][key] for k in range(world)]), g[key])
        sizes = [ranks[k][i]["a"].shape[0] for k in range(world)]
        assert max(sizes) - min(sizes) <= 1
    with pytest.raises(WorkbenchError, match="not divisible by world_size 3"):
        next(r.batches("a", 64, world_size=3))


def test_heldout_is_whole_contexts_and_whole_documents_disjoint_from_train(cache: Path) -> None:
    r = CacheReader(cache)
    train = set(_ids(r.batches("a", 7, split="train", heldout_fraction=0.2, drop_last=False)).tolist())
    held = _ids(r.batches("a", 7, split="heldout", heldout_fraction=0.2, shuffle=False, drop_last=False))
    assert not train & set(held.tolist())
    assert len(train) + held.numel() == r.num_tokens
    # the last ceil(0.2 * 120) contexts start at row 960, inside document 38 (rows 950-974, doc = row // 25):
    # that document stays whole on the training side, so the split starts at its end
    assert held.numel() == r.num_tokens - 975
    assert torch.equal(held, torch.arange(975, r.num_tokens))
    train_docs = {i // 25 for i in train}
    assert not train_docs & {i // 25 for i in held.tolist()}
    for frac in (0.01, 0.05, 0.3, 0.5):  # documents never straddle, whatever the fraction
        cut = r.heldout_start(frac)
        assert cut % 25 == 0 or cut == r.num_tokens, (frac, cut)


def test_normalize_gives_mean_norm_sqrt_d(cache: Path) -> None:
    r = CacheReader(cache)
    x = torch.cat([b["b"] for b in r.batches("b", 100, normalize=True, split="all")])
    assert abs(float(x.norm(dim=1).mean()) - D**0.5) < 1e-3 * D**0.5


def test_bad_requests_name_the_value(cache: Path) -> None:
    r = CacheReader(cache)
    with pytest.raises(WorkbenchError, match=r"unknown hook point .*'c'.*valid choices: a, b"):
        next(r.batches("c", 10))
    with pytest.raises(WorkbenchError, match=r"unknown split 'test'"):
        next(r.batches("a", 10, split="test"))  # type: ignore[arg-type]


def test_an_unfinished_cache_is_refused_unless_asked(tmp_path: Path) -> None:
    w = CacheWriter(tmp_path / "u", {"a": 4}, header={"model": {"id": "x"}})
    w.add({"a": torch.ones(5, 4)}, {k: torch.zeros(5, dtype=torch.int64) for k in w.row_fields}, contexts=1)
    w.flush()
    with pytest.raises(WorkbenchError, match="unfinished .* run the same `sae harvest` command again"):
        CacheReader(tmp_path / "u")
    assert CacheReader(tmp_path / "u", allow_incomplete=True).num_tokens == 5


def _reference_epoch(r: CacheReader, batch: int, seed: int, epoch: int, window: int, split: str,
                     frac: float) -> list[list[int]]:
    """The documented order, written plainly: shards permuted, grouped into windows; in each
    window, every piece's rows permuted and each stretch of a batch drawing its count per piece
    (hypergeometric); the epoch's rows cut into batches (drop_last)."""
    pieces = r._pieces(split, frac)  # (shard, start, stop) of the split
    order = torch.randperm(len(pieces), generator=torch.Generator().manual_seed(window_seed(seed, epoch, -1))).tolist()
    rows: list[int] = []
    for w, j in enumerate(range(0, len(order), window)):
        ps = [pieces[q] for q in order[j:j + window]]
        s = window_seed(seed, epoch, w)
        g = torch.Generator().manual_seed(s)
        perms = [[r.shards[p.shard]["rows"][0] + p.start + i for i in torch.randperm(p.rows, generator=g).tolist()]
                 for p in ps]
        rng = np.random.Generator(np.random.PCG64(s))
        left = [p.rows for p in ps]
        n = sum(left)
        while n:
            take = min(batch - len(rows) % batch, n)  # to the next batch boundary of the epoch
            counts = rng.multivariate_hypergeometric(left, take).tolist()
            for k, c in enumerate(counts):
                rows += perms[k][:c]
                perms[k] = perms[k][c:]
                left[k] -= c
            n -= take
    return [sorted(rows[i:i + batch]) for i in range(0, len(rows) - batch + 1, batch)]


def test_a_window_is_a_uniform_permutation() -> None:
    # 8 rows in pieces of 3 and 5, served in stretches of 1, 4 and 3 (a window that starts one
    # row before a batch boundary): every ordered split of the rows into those three sets must be
    # equally likely, 1 / (8! / (1! 4! 3!)) = 1/280. Counted over 28,000 window seeds.
    pieces = {"x": [torch.arange(0, 3).float()[:, None], torch.arange(3, 8).float()[:, None]]}
    seen: dict[tuple, int] = {}
    for seed in range(28_000):
        win = _Window(pieces, [3, 5], [1, 4, 3], seed)
        key = tuple(frozenset(win.gather(i)["x"][:, 0].long().tolist()) for i in range(3))
        seen[key] = seen.get(key, 0) + 1
    assert len(seen) == 280 and all(len(a | b | c) == 8 for a, b, c in seen)
    chi2 = sum((v - 100) ** 2 / 100 for v in seen.values())
    assert chi2 < 279 + 6 * (2 * 279) ** 0.5  # mean 279, sd 23.6 for a uniform draw; far above for a biased one


@pytest.mark.parametrize("batch,window,split", [(64, 4, "train"), (37, 2, "all"), (200, 3, "train"), (7, 1, "heldout")])
def test_batches_hold_the_rows_a_plain_reference_gives(cache: Path, batch: int, window: int, split: str) -> None:
    # the reader precomputes each window's gathers; every batch must still be exactly the
    # reference's rows, including batches that span two windows
    r = CacheReader(cache)
    for seed, epoch in ((0, 0), (5, 3)):
        ref = _reference_epoch(r, batch, seed, epoch, window, split, 0.1)
        got = [sorted(b["a"][:, 0].long().tolist()) for b in
               r.batches("a", batch, seed=seed, epoch=epoch, window_shards=window, split=split, heldout_fraction=0.1)]
        assert got == ref
        tail = [sorted(b["a"][:, 0].long().tolist()) for b in
                r.batches("a", batch, seed=seed, epoch=epoch, window_shards=window, split=split, heldout_fraction=0.1,
                          start_batch=len(ref) // 2)]
        assert tail == ref[len(ref) // 2:]
