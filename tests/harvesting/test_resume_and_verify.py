"""Kill a real `sae harvest` process with SIGKILL, run it again, and get the same bytes; verify finds damage."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harvesting import verify_cache


def _cmd(model: Path, corpus: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "workbench.cli", "harvest", "--model", str(model), "--corpus", str(corpus),
            "--hooks", "blocks.0.hook_resid_post", "blocks.2.hook_resid_post", "--tokens", "24000",
            "--context-length", "32", "--batch-size", "4", "--shard-tokens", "600", "--out", str(out), "--no-progress"]


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


@pytest.fixture(scope="module")
def reference(tiny_causal_dir, text_corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "acts"
    subprocess.run(_cmd(tiny_causal_dir, text_corpus, out), check=True, env=_env(), capture_output=True)
    return out


def test_resume_after_sigkill_gives_a_byte_identical_cache(reference, tiny_causal_dir, text_corpus, tmp_path) -> None:
    out = tmp_path / "acts"
    cmd = _cmd(tiny_causal_dir, text_corpus, out)
    kills = 0
    for wait_shards in (2, 5):  # kill twice, at different points
        proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            mf = out / "manifest.json"
            try:
                if mf.exists() and len(json.loads(mf.read_text())["shards"]) >= wait_shards:
                    break
            except json.JSONDecodeError:  # pragma: no cover - the manifest is written atomically
                pytest.fail("a reader saw a half-written manifest")
            time.sleep(0.01)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 1, "the harvest finished before it could be killed; make it longer"
    state = json.loads((out / "manifest.json").read_text())
    assert state["status"] == "in_progress"
    subprocess.run(cmd, check=True, env=_env(), capture_output=True)
    assert _files(out) == _files(reference)


def test_verify_passes_a_good_cache_and_names_a_flipped_byte_and_a_truncated_shard(reference, tmp_path) -> None:
    assert verify_cache(reference).ok
    bad = tmp_path / "bad"
    shutil.copytree(reference, bad)
    flipped = bad / "shard_00001.blocks.2.hook_resid_post.safetensors"
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0x01
    flipped.write_bytes(bytes(data))
    truncated = bad / "shard_00003.rows.safetensors"
    truncated.write_bytes(truncated.read_bytes()[:-7])
    rep = verify_cache(bad)
    assert not rep.ok and len(rep.problems) == 2
    assert "shard 1 (shard_00001.blocks.2.hook_resid_post.safetensors): checksum mismatch" in rep.problems[0]
    assert "shard 3 (shard_00003.rows.safetensors)" in rep.problems[1] and "truncated" in rep.problems[1]
    # and the CLI says so with a failing exit code
    res = subprocess.run([sys.executable, "-m", "workbench.cli", "cache", "verify", str(bad)], env=_env(),
                         capture_output=True, text=True)
    assert res.returncode == 1 and "checksum mismatch" in res.stdout and "2 problem(s)" in res.stdout
    ok = subprocess.run([sys.executable, "-m", "workbench.cli", "cache", "info", str(reference)], env=_env(),
                        capture_output=True, text=True, check=True)
    assert "blocks.2.hook_resid_post" in ok.stdout and "24,0" in ok.stdout
