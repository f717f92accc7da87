"""Training straight from the model (`sae train --model`), no cache in between.

The guarantee: a cacheless run equals a run on a cache harvested from the same corpus with the
same shuffle buffer (`--shuffle-buffer`), bit for bit on a CPU with one thread; a SIGKILL
anywhere in a cacheless run, rerun, gives the same bytes; bad input is one line, exit 2.
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

from harvesting.shuffle_buffer import ShuffleBuffer
from tests.evals.conftest import tiny_model_dir  # noqa: F401  (the fixture)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
HERE = Path(__file__).parent
HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def tiny_llama(tiny_model_dir) -> Path:  # noqa: F811
    """The eval tests' 3-layer, 48-wide random Llama with the offline MiniLM tokenizer."""
    return tiny_model_dir


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from harvesting.corpus import wiki_vital_records

    p = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    p.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in wiki_vital_records()[:120]))
    return p


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _weights(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {str(p.parent.relative_to(run)): load_file(str(p)) for p in sorted(run.rglob("sae.safetensors"))
            if "checkpoint" not in p.parts}


# ---------------------------------------------------------------- the shuffle buffer on its own


def test_shuffle_buffer_is_a_permutation_of_the_stream_and_follows_its_definition() -> None:
    """Every row comes out once (none lost at the end but the last partial batch), and each batch is
    the reference rule: b positions drawn without replacement from the B-row buffer by the seeded
    generator, replaced by the next rows of the stream."""
    rows = torch.arange(1000, dtype=torch.float32).unsqueeze(1)
    chunks = [{"h": rows[i:i + 37]} for i in range(0, 1000, 37)]
    buf = ShuffleBuffer(capacity=100, batch_size=10, seed=7)
    got = [b["h"] for b in buf.batches(iter(chunks))]
    out = torch.cat(got).flatten()
    assert len(got) == 100 and sorted(out.tolist()) == list(range(1000))
    # reference, in its own terms: a list of B rows, positions from the same generator stream
    g = torch.Generator().manual_seed(7)
    stream = list(range(1000))
    pool, ref = stream[:100], []
    rest = stream[100:]
    while len(pool) >= 10:
        pos = torch.randperm(len(pool), generator=g)[:10].tolist()
        ref += [pool[p] for p in pos]
        new, rest = rest[:10], rest[10:]
        for p, v in zip(pos, new):
            pool[p] = v
        if len(new) < 10:
            gone = set(pos[len(new):])
            pool = [v for i, v in enumerate(pool) if i not in gone]
    assert out.tolist() == [float(v) for v in ref]


def test_shuffle_buffer_state_round_trip_continues_the_same_order() -> None:
    rows = torch.randn(700, 3)
    chunks = [{"h": rows[i:i + 50]} for i in range(0, 700, 50)]
    whole = [b["h"] for b in ShuffleBuffer(capacity=128, batch_size=16, seed=1).batches(iter(chunks))]
    first = ShuffleBuffer(capacity=128, batch_size=16, seed=1)
    it = first.batches(iter(chunks))
    head = [next(it)["h"] for _ in range(9)]
    state = first.state()  # the stream position is counted in chunks pulled
    second = ShuffleBuffer(capacity=128, batch_size=16, seed=1)
    second.load_state(state)
    tail = [b["h"] for b in second.batches(iter(chunks[state["chunks"]:]))]
    assert all(torch.equal(a, b) for a, b in zip(head + tail, whole)) and len(head + tail) == len(whole)


# ---------------------------------------------------------------- (a) cacheless == cache


def test_training_from_the_model_equals_training_from_its_cache(tiny_llama, corpus, tmp_path) -> None:
    res = subprocess.run([sys.executable, str(HERE / "cacheless_case.py"), str(tiny_llama), str(corpus), str(tmp_path)],
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = _weights(tmp_path / "from_cache"), _weights(tmp_path / "from_model")
    assert len(a) == 4 and a.keys() == b.keys()  # 2 hooks x 2 architectures
    for name in a:
        assert a[name].keys() == b[name].keys()
        differ = [k for k in a[name] if not torch.equal(a[name][k], b[name][k])]
        assert not differ, (name, differ)
    sa = json.loads((tmp_path / "from_cache" / "summary.json").read_text())
    sb = json.loads((tmp_path / "from_model" / "summary.json").read_text())
    assert sa["steps"] == sb["steps"] > 0 and sa["tokens"] == sb["tokens"]
    assert [r["heldout_fvu"] for r in sa["saes"]] == [r["heldout_fvu"] for r in sb["saes"]]


def test_the_model_stream_yields_the_cache_rows_in_harvest_order(tiny_llama, corpus, tmp_path, one_thread) -> None:
    """The rows behind the guarantee, checked against the cache reader itself (train and held-out split)."""
    from harvesting import CacheReader
    from harvesting.harvest import HarvestConfig, harvest
    from harvesting.stream import ModelStream

    hc = HarvestConfig(model=str(tiny_llama), corpus=str(corpus), hooks=(HOOK,), tokens=1500, context_length=32,
                       batch_size=4, out=str(tmp_path / "acts"), device="cpu", progress=False)
    reader = CacheReader(harvest(hc))
    stream = ModelStream(hc, heldout_fraction=0.2, sample_tokens=100)
    for split in ("train", "heldout"):
        want = torch.cat([b[HOOK] for b in reader.batches([HOOK], 100, shuffle=False, split=split,
                                                          heldout_fraction=0.2, drop_last=False)])
        got = torch.cat([c[HOOK] for c in stream.chunks(split)])
        assert got.shape == want.shape and torch.equal(got, want), split
    assert stream.num_batches(64, "train", 0.2) == reader.num_batches(64, "train", 0.2)


def test_under_torchrun_each_rank_streams_its_own_share(tiny_llama, corpus, one_thread) -> None:
    """Ranks take alternate forward passes of the one harvest: disjoint, together the whole training split,
    and a share resumed at its j-th pass continues with the same rows."""
    from harvesting.harvest import HarvestConfig
    from harvesting.stream import ModelStream

    hc = HarvestConfig(model=str(tiny_llama), corpus=str(corpus), hooks=(HOOK,), tokens=640, context_length=32,
                       batch_size=4, device="cpu", progress=False)
    stream = ModelStream(hc, heldout_fraction=0.1, sample_tokens=64)
    whole = list(stream.epoch_chunks("train"))
    shares = [list(stream.epoch_chunks("train", r, 3)) for r in range(3)]
    assert [len(s) for s in shares] == [len(range(r, len(whole), 3)) for r in range(3)]
    for r, share in enumerate(shares):
        assert all(torch.equal(c[HOOK], whole[r + 3 * j][HOOK]) for j, c in enumerate(share))
        assert stream.rank_rows(r, 3) == (sum(c[HOOK].shape[0] for c in share), len(share))
    later = list(stream.epoch_chunks("train", 1, 3, start=2))
    assert all(torch.equal(a[HOOK], b[HOOK]) for a, b in zip(later, shares[1][2:])) and len(later) == len(shares[1]) - 2


# ---------------------------------------------------------------- (b) SIGKILL


def _cmd(model: Path, corpus: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "workbench.cli", "train", "--model", str(model), "--corpus", str(corpus),
            "--tokens", "1800", "--context-length", "32", "--harvest-batch-size", "4", "--hooks", HOOK,
            "blocks.2.hook_resid_post", "--k", "4", "--expansion", "2", "--batch-size", "64", "--shuffle-buffer", "256",
            "--checkpoint-every", "2", "--init-sample-tokens", "128", "--epochs", "2", "--out", str(out),
            "--no-progress", "--device", "cpu"]


@pytest.mark.slow
def test_sigkill_in_a_cacheless_run_then_rerun_gives_the_same_bytes(tiny_llama, corpus, tmp_path, one_thread) -> None:
    """Killed in its second epoch (the stream restarted, the buffer holding rows of both), rerun: the same bytes.

    The uninterrupted run and the rerun run in this process (one thread, as the killed process), so
    only the run that is killed pays for a process start."""
    from workbench.cli import main

    run = tmp_path / "run"
    cmd = _cmd(tiny_llama, corpus, run)
    assert main(cmd[3:]) == 0
    want = {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("sae.safetensors"))
            if "checkpoint" not in p.parts}
    total = json.loads((run / "summary.json").read_text())["steps"]
    assert len(want) == 2 and total > 30
    run.rename(tmp_path / "uninterrupted")
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed_at = None
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        try:
            step = json.loads((run / "checkpoint" / "latest.json").read_text())["step"]
        except (OSError, ValueError, KeyError):
            step = 0
        if step >= total * 2 // 3:
            proc.send_signal(signal.SIGKILL)
            killed_at = step
            break
        time.sleep(0.002)
    proc.wait()
    assert killed_at is not None and not (run / "summary.json").exists()
    assert main(cmd[3:]) == 0
    got = {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("sae.safetensors"))
           if "checkpoint" not in p.parts}
    assert got.keys() == want.keys()
    assert [k for k in want if got[k] != want[k]] == []


# ---------------------------------------------------------------- (c) bad input


@pytest.mark.parametrize("extra, named", [
    (["--cache", "CACHE"], "--cache"),
    (["--corpus", "zz-no-such-corpus"], "zz-no-such-corpus"),
    (["--shuffle-buffer", "16"], "--shuffle-buffer"),
    (["--tokens", "10"], "--tokens"),
    (["--hooks", "blocks.9.hook_resid_post"], "blocks.9.hook_resid_post"),
])
def test_bad_cacheless_input_is_one_line_exit_2(tiny_llama, corpus, tmp_path, capsys, extra, named) -> None:
    from harvesting import CacheWriter
    from workbench.cli import main

    cache = tmp_path / "acts"
    w = CacheWriter(cache, {HOOK: 48}, "float32", shard_tokens=64, header={"model": {"id": "x"}, "context_length": 4})
    ids = torch.arange(64)
    w.add({HOOK: torch.randn(64, 48)}, {"token_ids": ids.to(torch.int32), "doc_ids": ids.to(torch.int32) // 8,
                                        "context_ids": ids // 4, "positions": (ids % 4).to(torch.int32)}, contexts=16)
    w.finish()
    base = ["train", "--model", str(tiny_llama), "--corpus", str(corpus), "--tokens", "600", "--context-length", "32",
            "--hooks", HOOK, "--batch-size", "32", "--out", str(tmp_path / "run"), "--no-progress", "--device", "cpu"]
    extra = [str(cache) if e == "CACHE" else e for e in extra]
    assert main(base + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0], err


def test_cache_only_flags_need_model(tmp_path, capsys) -> None:
    """--corpus or --tokens without --model would be silently ignored on a cache run: refused instead."""
    from workbench.cli import main

    assert main(["train", "--cache", str(tmp_path), "--corpus", "wiki-vital", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--corpus" in err[0] and "--model" in err[0], err


def test_a_checkpoint_from_before_the_stream_fields_still_resumes(tmp_path, one_thread) -> None:
    """Fields added to TrainConfig since a checkpoint was written held their defaults then: not a config change."""
    from saes import TensorSource, TrainConfig, Trainer, train

    x = torch.randn(600, 8, generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(k=(2,), expansion=(2,), batch_size=50, checkpoint_every=3, progress=False, out=str(tmp_path),
                      max_tokens=300, init_sample_tokens=100)
    train(cfg, TensorSource(x))
    step_dir = next((tmp_path / "checkpoint").glob("step-*"))
    state = json.loads((step_dir / "trainer.json").read_text())
    for name in ("model", "corpus", "tokens", "context_length", "harvest_batch_size", "corpus_seed", "model_dtype",
                 "shuffle_buffer"):
        del state["config"][name]
    (step_dir / "trainer.json").write_text(json.dumps(state))
    trainer = Trainer(cfg, TensorSource(x))
    try:
        assert trainer.step == state["step"] > 0
    finally:
        trainer.close()
