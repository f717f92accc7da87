"""A real full disk (a small tmpfs): the harvest stops with a clear error, keeps its shards, and resumes."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from harvesting import CacheReader, HarvestConfig, harvest, read_manifest, verify_cache
from workbench.errors import WorkbenchError


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2400k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {res.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_mid_harvest_then_resume(small_disk: Path, tiny_causal_dir, text_corpus, tmp_path) -> None:
    kw = dict(model=str(tiny_causal_dir), corpus=str(text_corpus), hooks=("blocks.0.hook_resid_post",),
              tokens=10_000, context_length=32, batch_size=2, shard_tokens=120, progress=False)
    out = small_disk / "acts"
    # 10k rows x 48 floats is ~2.2 MB: the up-front check passes, per-file overhead fills the disk mid-run
    with pytest.raises(WorkbenchError, match=r"disk holding .* is full .* finished shard\(s\) are intact.*run the same command"):
        harvest(HarvestConfig(out=str(out), **kw))
    m = read_manifest(out)
    assert m["status"] == "in_progress" and len(m["shards"]) > 5
    rep = verify_cache(out)
    assert rep.problems == [f"manifest.json: status is 'in_progress', not 'complete' (the harvest was interrupted; rerun it)"]
    subprocess.run(["mount", "-o", "remount,size=20m", str(small_disk)], check=True)
    harvest(HarvestConfig(out=str(out), **kw))
    ref = harvest(HarvestConfig(out=str(tmp_path / "ref"), **kw))
    assert verify_cache(out).ok
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {p.name: p.read_bytes() for p in ref.iterdir()}
    assert CacheReader(out).num_tokens >= 10_000
