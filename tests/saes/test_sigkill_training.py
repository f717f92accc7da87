"""SIGKILL a real `sae train` process (through the cache reader, every architecture in one sweep),
at random steps and inside checkpoint writes, rerun the same command, and get byte-identical SAEs.

Marked slow: real processes, a few seconds each (the set runs in `.ci/run` too).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from harvesting import CacheWriter
from saes.registry import architectures

pytestmark = pytest.mark.slow
D = 32


def _cache(path: Path) -> Path:
    w = CacheWriter(path, {"h": D}, "float32", shard_tokens=512, header={"model": {"id": "synthetic"}, "context_length": 16})
    g = torch.Generator().manual_seed(0)
    dictionary = torch.nn.functional.normalize(torch.randn(96, D, generator=g), dim=1)
    for i in range(24):  # 24 forward passes of 8 contexts of 16 rows: 3072 rows
        n = 128
        present = torch.rand(n, 96, generator=g) < 0.04
        x = ((torch.rand(n, 96, generator=g) + 0.5) * present) @ dictionary + 0.5
        ids = torch.arange(i * n, (i + 1) * n)
        w.add({"h": x}, {"token_ids": ids.to(torch.int32), "doc_ids": ids.to(torch.int32) // 40,
                         "context_ids": ids // 16, "positions": (ids % 16).to(torch.int32)}, contexts=8)
    w.finish()
    return path


def _cmd(cache: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "workbench.cli", "train", "--cache", str(cache), "--out", str(out),
            "--arch", *architectures(), "--k", "4", "--expansion", "8", "--batch-size", "64", "--epochs", "2",
            "--checkpoint-every", "1", "--log-every", "3", "--heldout-fraction", "0.05", "--init-sample-tokens", "256",
            "--no-progress", "--device", "cpu"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _results(run: Path) -> dict[str, bytes]:
    """Every saved SAE's files (weights, config, statistics): what a user keeps of a run."""
    out = {}
    for p in sorted(run.rglob("*")):
        rel = p.relative_to(run)
        if p.is_file() and "checkpoint" not in rel.parts and p.name in ("sae.safetensors", "cfg.json", "stats.safetensors"):
            out[str(rel)] = p.read_bytes()
    return out


def _mid_checkpoint(run: Path) -> bool:
    """A checkpoint write is under way: a temporary file, or a step directory not yet complete."""
    ck = run / "checkpoint"
    if not ck.is_dir():
        return False
    try:
        for d in ck.iterdir():
            if d.name.startswith(".") and d.name.endswith(".tmp"):
                return True
            if d.is_dir() and (any(p.name.endswith(".tmp") for p in d.iterdir()) or not (d / "trainer.json").exists()):
                return True
    except FileNotFoundError:  # an old step directory removed while we looked: a write just finished
        return False
    return False


def test_sigkill_during_training_and_checkpoint_writes_then_rerun_is_byte_identical(tmp_path) -> None:
    cache = _cache(tmp_path / "acts")
    run = tmp_path / "run"  # the same --out for both runs: cfg.json records it
    cmd = _cmd(cache, run)
    subprocess.run(cmd, check=True, env=_env(), capture_output=True, timeout=300)
    want = _results(run)
    assert len([k for k in want if k.endswith("sae.safetensors")]) == len(architectures())
    run.rename(tmp_path / "uninterrupted")

    kills = {"mid_checkpoint": 0, "between": 0}
    for attempt in range(6):
        if kills["mid_checkpoint"] >= 1 and kills["between"] >= 1:
            break
        proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        target_mid = kills["mid_checkpoint"] == 0
        deadline = time.time() + 60
        killed = False
        started = False
        while time.time() < deadline and proc.poll() is None:
            started = started or (run / "checkpoint").is_dir()
            if started and (_mid_checkpoint(run) if target_mid else True):
                if not target_mid:
                    time.sleep(0.05 * (attempt + 1))  # somewhere between or inside steps
                proc.send_signal(signal.SIGKILL)
                killed = True
                break
            time.sleep(0.0005)
        proc.wait()
        if killed:
            kills["mid_checkpoint" if target_mid else "between"] += 1
    assert kills["mid_checkpoint"] >= 1 and kills["between"] >= 1, kills
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    got = _results(run)
    assert got.keys() == want.keys()
    differ = [k for k in want if got[k] != want[k]]
    assert not differ, f"differ after kill + rerun: {differ}"
