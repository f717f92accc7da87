"""Hostile manifests and damaged shards: refused or named in one line, by the reader and by verify.

Each case edits a copy of a real cache written by the real writer: a manifest entry that points
out of the cache (`../`, an absolute path, a symlink), a truncated or missing shard, a shard
entry lacking a hook's file, totals that disagree, a manifest from a newer format version.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harvesting import CacheReader, CacheWriter, verify_cache
from tests.harvesting.conftest import synthetic_cache
from workbench.errors import WorkbenchError

D = 4


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return synthetic_cache(tmp_path_factory.mktemp("good") / "acts", adds=8, rows_per_add=10, contexts_per_add=2,
                           context_length=5, doc_rows=7, shard_tokens=20, d=D)


@pytest.fixture
def copy(good, tmp_path) -> Path:
    d = tmp_path / "c"
    shutil.copytree(good, d)
    return d


def _edit(path: Path, fn) -> None:
    mf = path / "manifest.json"
    m = json.loads(mf.read_text())
    fn(m)
    mf.write_text(json.dumps(m))


def _read_all(path: Path) -> None:
    r = CacheReader(path)
    for _ in r.batches("h", 8, split="all", window_shards=1):
        pass


def _verify_cli(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workbench.cli", "cache", "verify", str(path)],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


@pytest.mark.parametrize("entry", ["../../../../../../etc/hostname", "/etc/hostname", "sub/../../outside.safetensors"])
def test_an_entry_pointing_out_of_the_cache_is_refused_by_reader_and_verify(copy, entry) -> None:
    _edit(copy, lambda m: m["shards"][1]["files"]["h"].update(file=entry))
    with pytest.raises(WorkbenchError) as e:
        _read_all(copy)
    msg = str(e.value)
    assert entry in msg and "shard 1" in msg and "refusing to read it" in msg and "\n" not in msg
    rep = verify_cache(copy)
    assert len(rep.problems) == 1 and entry in rep.problems[0] and "shard 1" in rep.problems[0]
    res = _verify_cli(copy)
    assert res.returncode == 1 and entry in res.stdout and "Traceback" not in res.stderr


def test_a_symlink_out_of_the_cache_is_refused(copy, tmp_path) -> None:
    outside = tmp_path / "secret.safetensors"
    shard = copy / "shard_00002.h.safetensors"
    shutil.copy(shard, outside)  # a perfectly valid file, but outside the cache
    shard.unlink()
    shard.symlink_to(outside)
    with pytest.raises(WorkbenchError, match=r"shard 2: manifest entry 'shard_00002.h.safetensors' is a symlink leading out"):
        CacheReader(copy)
    rep = verify_cache(copy)
    assert len(rep.problems) == 1 and "symlink leading out of the cache" in rep.problems[0]


def test_a_truncated_shard_is_named_when_the_cache_is_opened(copy) -> None:
    f = copy / "shard_00003.h.safetensors"
    f.write_bytes(f.read_bytes()[:-9])
    with pytest.raises(WorkbenchError) as e:
        CacheReader(copy)
    msg = str(e.value)
    assert "shard 3 (shard_00003.h.safetensors)" in msg and "truncated" in msg and "\n" not in msg


def test_a_missing_shard_is_named_when_the_cache_is_opened(copy) -> None:
    (copy / "shard_00001.rows.safetensors").unlink()
    with pytest.raises(WorkbenchError, match=r"shard 1 \(shard_00001.rows.safetensors\): missing"):
        CacheReader(copy)


def test_a_shard_damaged_after_opening_is_named_in_one_line(copy) -> None:
    r = CacheReader(copy)  # opened while whole
    f = copy / "shard_00002.h.safetensors"
    f.write_bytes(f.read_bytes()[:12])  # then cut inside its header
    with pytest.raises(WorkbenchError) as e:
        _ = [b for b in r.batches("h", 8, split="all", window_shards=1, prefetch=0)]
    assert "shard 2 of the cache" in str(e.value) and "shard_00002.h.safetensors" in str(e.value)


def test_verify_on_open_catches_a_flipped_byte_the_cheap_check_cannot(copy) -> None:
    f = copy / "shard_00000.h.safetensors"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0x10  # same size, same header: only the checksum sees it
    f.write_bytes(bytes(data))
    CacheReader(copy)  # the cheap check passes
    with pytest.raises(WorkbenchError, match=r"failed verification: shard 0 \(shard_00000.h.safetensors\): checksum mismatch"):
        CacheReader(copy, verify=True)


def test_verify_reports_a_missing_hook_file_entry_and_wrong_totals(copy) -> None:
    def damage(m):
        del m["shards"][2]["files"]["h"]
        m["totals"]["rows"] += 3
        m["totals"]["contexts"] -= 1
    _edit(copy, damage)
    probs = verify_cache(copy).problems
    assert any(p == "shard 2: no file for hook h in the manifest entry" for p in probs), probs
    assert any("totals say 83 rows, the shards hold 80" in p for p in probs), probs
    assert any("totals say 15 contexts, the shards hold 16" in p for p in probs), probs
    with pytest.raises(WorkbenchError, match="shard 2: no file for hook h"):
        CacheReader(copy)


def test_verify_reports_a_manifest_from_a_newer_version(copy) -> None:
    _edit(copy, lambda m: m.update(format_version=99))
    rep = verify_cache(copy)
    assert len(rep.problems) == 1 and "newer workbench (cache format version 99)" in rep.problems[0]
    res = _verify_cli(copy)
    assert res.returncode == 1 and "upgrade the workbench" in res.stdout and "Traceback" not in res.stderr
    with pytest.raises(WorkbenchError, match="newer workbench"):
        CacheReader(copy)


def test_damaged_or_foreign_shard_records_are_ignored_and_removed_on_resume(tmp_path) -> None:
    # A multi-process harvest marks each finished shard with a record; a resumed harvest reads them.
    # Records that are not valid JSON, name another shard or a non-integer index are not trusted:
    # the resume keeps only the good one, deletes the rest, and those shards are written again.
    header = {"model": {"id": "synthetic"}, "context_length": 5}
    path = tmp_path / "acts"
    w = CacheWriter(path, {"h": D}, "float32", shard_tokens=10, header=header)
    ids = torch.arange(10)
    fields = {"token_ids": [ids.int()], "doc_ids": [ids.int()], "context_ids": [ids // 5], "positions": [(ids % 5).int()]}
    w.record(w.write_shard(0, (0, 10), (0, 2), {"h": [torch.randn(10, D)]}, fields))
    (path / "shard_00001.done.json").write_text("{not json")
    (path / "shard_00002.done.json").write_text(json.dumps({"index": "2", "files": {}}))
    (path / "shard_00003.done.json").write_text(json.dumps({"index": 5, "files": {}}))
    (path / "shard_00004.done.json").write_text(json.dumps(["index", 4]))
    resumed = CacheWriter(path, {"h": D}, "float32", shard_tokens=10, header=header)
    assert [s["index"] for s in resumed.shards] == [0]
    assert sorted(p.name for p in path.glob("*.done.json")) == []
    assert resumed.resumed_rows == 10 and resumed.resumed_contexts == 2
