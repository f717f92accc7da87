"""`sae cache convert --cache IN --dtype D --out OUT`: the verb over `harvesting.convert_cache`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harvesting import CacheReader, CacheWriter
from workbench.cli import main


def _cache(path: Path, scale: float = 1.0) -> Path:
    w = CacheWriter(path, {"h": 8}, "float32", shard_tokens=64, header={"model": {"id": "synthetic"}, "context_length": 4})
    g = torch.Generator().manual_seed(0)
    for i in range(3):
        ids = torch.arange(i * 48, (i + 1) * 48)
        w.add({"h": torch.randn(48, 8, generator=g) * scale},
              {"token_ids": ids.to(torch.int32), "doc_ids": ids.to(torch.int32) // 8, "context_ids": ids // 4,
               "positions": (ids % 4).to(torch.int32)}, contexts=12)
    w.finish()
    return path


def _rows(path: Path) -> torch.Tensor:
    r = CacheReader(path)
    return torch.cat([r.load_shard(i)["h"] for i in range(len(r.shards))])


@pytest.mark.parametrize("dtype, torch_dtype", [("bfloat16", torch.bfloat16), ("float16", torch.float16)])
def test_convert_writes_the_rows_rounded_to_the_dtype(tmp_path, capsys, dtype, torch_dtype) -> None:
    src = _cache(tmp_path / "acts")
    assert main(["cache", "convert", "--cache", str(src), "--dtype", dtype, "--out", str(tmp_path / "half"),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "half") in out and dtype in out
    got = _rows(tmp_path / "half")
    assert got.dtype == torch_dtype and torch.equal(got, _rows(src).to(torch_dtype))
    assert CacheReader(tmp_path / "half").dtype("h") == dtype


@pytest.mark.parametrize("argv_tail, named", [
    (["--dtype", "int8"], ["'int8'", "bfloat16", "float16"]),
    (["--dtype", "bf16"], ["'bf16'", "bfloat16"]),
])
def test_a_bad_dtype_is_one_line_naming_the_choices(tmp_path, capsys, argv_tail, named) -> None:
    src = _cache(tmp_path / "acts")
    assert main(["cache", "convert", "--cache", str(src), "--out", str(tmp_path / "o"), *argv_tail]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(n in err[0] for n in named), err
    assert not (tmp_path / "o").exists()


def test_a_missing_cache_or_a_float16_overflow_is_one_line(tmp_path, capsys) -> None:
    assert main(["cache", "convert", "--cache", str(tmp_path / "nope"), "--dtype", "bfloat16",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0], err
    big = _cache(tmp_path / "big", scale=1e5)  # beyond float16's 65504
    assert main(["cache", "convert", "--cache", str(big), "--dtype", "float16", "--out", str(tmp_path / "f16"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bfloat16" in err[0], err
