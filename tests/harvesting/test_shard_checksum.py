"""A byte flipped inside a shard's data keeps its size and header, so the cheap check on open
cannot see it; the reader checks each shard file's sha256 against the manifest the first time it
reads that file, so training and evaluation stop with one line instead of learning from it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harvesting import CacheReader
from tests.harvesting.conftest import synthetic_cache
from workbench.cli import main
from workbench.errors import WorkbenchError

D = 4


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return synthetic_cache(tmp_path_factory.mktemp("good") / "acts", adds=8, rows_per_add=32, contexts_per_add=4,
                           context_length=8, doc_rows=16, shard_tokens=64, d=D)


@pytest.fixture
def flipped(good, tmp_path) -> Path:
    d = tmp_path / "c"
    shutil.copytree(good, d)
    f = d / "shard_00001.h.safetensors"
    data = bytearray(f.read_bytes())
    data[-5] ^= 0x10  # same size, same header: a flipped bit in one activation
    f.write_bytes(bytes(data))
    return d


def _read_all(path: Path, **kw) -> int:
    r = CacheReader(path, **kw)
    return sum(b["h"].shape[0] for b in r.batches("h", 16, split="all", window_shards=1))


def test_a_flipped_byte_is_named_on_first_read(flipped) -> None:
    with pytest.raises(WorkbenchError, match=r"shard 1 .*shard_00001.h.safetensors.*checksum"):
        _read_all(flipped)


def test_training_on_it_stops_with_one_line(flipped, tmp_path, capsys) -> None:
    rc = main(["train", "--cache", str(flipped), "--hooks", "h", "--arch", "topk", "--k", "2", "--expansion", "2",
               "--batch-size", "16", "--epochs", "1", "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and "checksum" in err and "shard_00001.h.safetensors" in err, err


def test_each_file_is_hashed_once_per_reader_and_a_whole_cache_reads(good, monkeypatch) -> None:
    import harvesting.integrity as integrity

    seen: list[str] = []
    real = integrity.sha256_file
    monkeypatch.setattr(integrity, "sha256_file", lambda p, *a, **k: seen.append(Path(p).name) or real(p, *a, **k))
    r = CacheReader(good)
    n = 0
    for _ in range(2):  # two epochs
        n += sum(b["h"].shape[0] for b in r.batches("h", 16, split="all", window_shards=1, with_ids=True))
    assert n == 2 * 256
    assert sorted(seen) == sorted(set(seen)) and len(seen) == 2 * len(r.shards)  # rows + h, once each


def test_verify_on_open_already_checked_every_file(good, monkeypatch) -> None:
    import harvesting.integrity as integrity

    r = CacheReader(good, verify=True)
    monkeypatch.setattr(integrity, "sha256_file", lambda *a, **k: pytest.fail("hashed twice"))
    assert sum(b["h"].shape[0] for b in r.batches("h", 16, split="all")) == 256
