"""The compiled row gather against torch.index_select on random inputs, and its fallbacks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harvesting import row_gather
from harvesting.row_gather import gather_rows, native_available

ROOT = Path(__file__).resolve().parents[2]
needs_cc = pytest.mark.skipif(not native_available(), reason="no C compiler: the reader uses torch.index_select")


def _reference(pieces, indices):
    return torch.cat([torch.index_select(p, 0, i) for p, i in zip(pieces, indices)])


@needs_cc
@pytest.mark.parametrize("dtype,width", [(torch.float32, 576), (torch.bfloat16, 24), (torch.float16, 7),
                                         (torch.int32, None), (torch.int64, None), (torch.float64, 3)])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_native_gather_equals_index_select(dtype, width, threads) -> None:
    g = torch.Generator().manual_seed(threads)
    torch.set_num_threads(threads)
    try:
        for trial in range(6):
            sizes = torch.randint(1, 400, (int(torch.randint(1, 5, (1,), generator=g)),), generator=g).tolist()
            shape = (lambda n: (n,)) if width is None else (lambda n: (n, width))
            pieces = [(torch.randn(shape(n), generator=g) * 1000).to(dtype) for n in sizes]
            takes = [int(torch.randint(0, 2 * n, (1,), generator=g)) for n in sizes]  # some empty, some repeats
            indices = [torch.randint(0, n, (t,), generator=g) for n, t in zip(sizes, takes)]
            out = torch.empty((sum(takes), *pieces[0].shape[1:]), dtype=dtype)
            gather_rows(pieces, indices, out)
            assert torch.equal(out, _reference(pieces, indices)), (trial, sizes, takes)
    finally:
        torch.set_num_threads(2)


@needs_cc
def test_a_large_gather_splits_across_threads_and_stays_exact() -> None:
    g = torch.Generator().manual_seed(0)
    pieces = [torch.randn(5000, 33, generator=g) for _ in range(3)]
    indices = [torch.randperm(5000, generator=g)[:3000] for _ in range(3)]
    out = torch.empty(9000, 33)
    gather_rows(pieces, indices, out)
    assert torch.equal(out, _reference(pieces, indices))


def test_out_of_range_rows_are_refused_on_both_paths(monkeypatch) -> None:
    pieces, out = [torch.zeros(4, 2)], torch.empty(1, 2)
    for lib in (row_gather._lib, None):
        monkeypatch.setattr(row_gather, "_lib", lib)
        with pytest.raises(IndexError):
            gather_rows(pieces, [torch.tensor([4])], out)


def test_without_the_compiled_loop_index_select_does_the_same_work(monkeypatch) -> None:
    monkeypatch.setattr(row_gather, "_lib", None)  # as without a compiler, or with SAE_NATIVE_GATHER=0
    g = torch.Generator().manual_seed(1)
    pieces = [torch.randn(50, 5, generator=g), torch.randn(30, 5, generator=g)]
    indices = [torch.randint(0, 50, (20,), generator=g), torch.randint(0, 30, (9,), generator=g)]
    out = torch.empty(29, 5)
    gather_rows(pieces, indices, out)
    assert torch.equal(out, _reference(pieces, indices))


def test_no_compiler_means_the_fallback_not_an_error(tmp_path) -> None:
    code = ("import torch; from harvesting.row_gather import gather_rows, native_available; "
            "o = torch.empty(2, 3); gather_rows([torch.arange(12.).view(4, 3)], [torch.tensor([3, 1])], o); "
            "print(native_available(), o[:, 0].tolist())")
    env = {**os.environ, "CC": "no-such-compiler", "XDG_CACHE_HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", "[9.0,", "3.0]"]
    assert not list(tmp_path.rglob("*.so"))


@needs_cc
def test_torch_gathers_switches_the_loop_off_for_its_block_only() -> None:
    with row_gather.torch_gathers():
        assert row_gather._lib is None
        out = torch.empty(2, 3)
        gather_rows([torch.arange(12.).view(4, 3)], [torch.tensor([3, 1])], out)
        assert out[:, 0].tolist() == [9.0, 3.0]
    assert native_available()
