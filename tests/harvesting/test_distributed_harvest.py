"""`torchrun` harvest over 2 gloo processes writes the very cache one process writes, and either resumes the other.

The config gives 13 shards (odd, so the round-robin split is uneven), a last shard shorter than
the others and a last batch trimmed to the budget (307 contexts in batches of 4), so the shard
plan is exercised where it could go wrong.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from harvesting.cache import shard_is_full
from harvesting.plan import PlannedBatch, ShardEnd, plan_shards

ROOT = Path(__file__).parents[2]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
HOOKS = ["blocks.0.hook_resid_post", "blocks.2.hook_resid_post"]
BATCH = 4

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")


def _cmd(launcher: list[str], model: Path, corpus: Path, out: Path) -> list[str]:
    return launcher + ["-m", "workbench.cli", "harvest", "--model", str(model), "--corpus", str(corpus),
                       "--hooks", *HOOKS, "--tokens", "9500", "--context-length", "32", "--batch-size", str(BATCH),
                       "--shard-tokens", "700", "--out", str(out), "--no-progress"]


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def _finished(out: Path) -> set[int]:
    """Shards a killed run finished: listed in the manifest or recorded beside it."""
    try:
        listed = {s["index"] for s in json.loads((out / "manifest.json").read_text())["shards"]}
    except (FileNotFoundError, json.JSONDecodeError):
        listed = set()
    return listed | {int(p.name.split(".")[0].removeprefix("shard_")) for p in out.glob("shard_*.done.json")}


def _kill_after(cmd: list[str], out: Path, shards: int) -> set[int]:
    """Start `cmd`, SIGKILL it (and every process it started) once `shards` shards are finished."""
    proc = subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and len(_finished(out)) < shards:
        time.sleep(0.005)
    assert proc.poll() is None, "the harvest ended before it could be killed; make it longer"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert json.loads((out / "manifest.json").read_text())["status"] == "in_progress"
    return _finished(out)


def _stamps(out: Path, shards: set[int]) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of the finished shards' files: a rerun that rewrote one would change them."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for i in shards for p in out.glob(f"shard_{i:05d}.*.safetensors")}


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


@pytest.fixture(scope="module")
def one_process(tiny_causal_dir, text_corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "acts"
    _run(_cmd([sys.executable], tiny_causal_dir, text_corpus, out))
    return out


def test_two_processes_write_the_one_process_cache(one_process, tiny_causal_dir, text_corpus, tmp_path) -> None:
    out = tmp_path / "acts"
    proc = _run(_cmd(TORCHRUN, tiny_causal_dir, text_corpus, out))
    assert proc.stdout.count("(complete)") == 1  # only rank 0 prints the summary
    # each rank ran its own share (round-robin), not the whole harvest
    assert "rank 0 of 2 wrote 7 of 13 shards" in proc.stderr and "rank 1 of 2 wrote 6 of 13 shards" in proc.stderr
    one, two = (json.loads((d / "manifest.json").read_text()) for d in (one_process, out))
    assert two["status"] == "complete" and len(one["shards"]) == 13  # odd: rank 0 writes 7, rank 1 writes 6
    assert one["shards"][-1]["contexts"][1] % BATCH != 0  # the last batch was trimmed to the budget
    assert one["shards"][-1]["rows"][1] - one["shards"][-1]["rows"][0] < 700  # a short last shard
    for a, b in zip(one["shards"], two["shards"], strict=True):
        assert (a["index"], a["rows"], a["contexts"]) == (b["index"], b["rows"], b["contexts"])
        assert {k: f["shapes"] for k, f in a["files"].items()} == {k: f["shapes"] for k, f in b["files"].items()}
        for key, f in a["files"].items():
            ta, tb = load_file(str(one_process / f["file"])), load_file(str(out / b["files"][key]["file"]))
            for name in ta:  # row ids and activations alike: same batches, same threads, same bits
                assert torch.equal(ta[name], tb[name]), f"shard {a['index']} {key}/{name}"
    assert one == two
    assert _files(out) == _files(one_process)  # nothing more on disk either (no per-rank leftovers)


def test_a_killed_one_process_harvest_finished_by_two(one_process, tiny_causal_dir, text_corpus, tmp_path) -> None:
    out = tmp_path / "acts"
    done = _kill_after(_cmd([sys.executable], tiny_causal_dir, text_corpus, out), out, 1)
    before = _stamps(out, done)
    _run(_cmd(TORCHRUN, tiny_causal_dir, text_corpus, out))
    assert _stamps(out, done) == before  # finished shards were skipped, not recomputed
    assert _files(out) == _files(one_process)


def test_a_killed_two_process_harvest_finished_by_one(one_process, tiny_causal_dir, text_corpus, tmp_path) -> None:
    out = tmp_path / "acts"
    done = _kill_after(_cmd(TORCHRUN, tiny_causal_dir, text_corpus, out), out, 3)
    before = _stamps(out, done)
    _run(_cmd([sys.executable], tiny_causal_dir, text_corpus, out))
    assert _stamps(out, done) == before
    assert _files(out) == _files(one_process)


def _reference_plan(counts: list[list[int]], tokens: int, shard_tokens: int) -> list[tuple]:
    """The single-process rule written out plainly: trim the last batch, cut after a batch that fills a shard."""
    shards, done, ctx, start = [], 0, 0, (0, 0)
    for batch in counts:
        if done >= tokens:
            break
        for c in batch:
            done, ctx = done + c, ctx + 1
            if done >= tokens:
                break
        if done - start[0] >= shard_tokens:
            shards.append((start, (done, ctx)))
            start = (done, ctx)
    if ctx > start[1]:
        shards.append((start, (done, ctx)))
    return [((r0, r1), (c0, c1)) for (r0, c0), (r1, c1) in shards]


def test_the_plan_follows_the_single_process_rule_on_random_batches() -> None:
    g = torch.Generator().manual_seed(0)
    for trial in range(200):
        b, t = int(torch.randint(1, 6, (1,), generator=g)), int(torch.randint(1, 9, (1,), generator=g))
        n_batches = int(torch.randint(0, 12, (1,), generator=g))
        keeps = [torch.rand(b, t, generator=g) < 0.7 for _ in range(n_batches)]
        if keeps and trial % 3 == 0:
            keeps[-1] = keeps[-1][: max(1, b // 2)]  # the corpus ends inside a batch
        tokens, shard_tokens = int(torch.randint(1, 120, (1,), generator=g)), int(torch.randint(1, 40, (1,), generator=g))
        batches = [(torch.zeros(k.shape), k, {"token_ids": torch.zeros(k.shape, dtype=torch.long)}) for k in keeps]
        steps = list(plan_shards(batches, tokens, shard_tokens, positions=True))
        got = [(s.rows, s.contexts) for s in steps if isinstance(s, ShardEnd)]
        assert got == _reference_plan([k.sum(1).tolist() for k in keeps], tokens, shard_tokens), trial
        ctx, shard = 0, 0
        for s in steps:  # every batch is tagged with its shard, in order, with its own context ids
            if isinstance(s, PlannedBatch):
                assert s.shard == shard and s.first_context == ctx
                assert torch.equal(s.ids["context_ids"][:, 0], torch.arange(ctx, ctx + len(s.keep)))
                ctx += len(s.keep)
            else:
                assert s.index == shard
                shard += 1
    assert shard_is_full(5, 5) and not shard_is_full(4, 5)
