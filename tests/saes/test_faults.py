"""Faults met while training through the real cache reader: NaN/inf, a changed cache, another
device type, a consumer that stops early or raises (no prefetch thread left behind), --verify."""

from __future__ import annotations

import gc
import json
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from harvesting import CacheReader, CacheWriter
from saes import TrainConfig, Trainer, train
from saes.checkpoint import latest_checkpoint
from saes.guards import NonFiniteError
from workbench.errors import WorkbenchError

pytestmark = pytest.mark.usefixtures("one_thread")
D = 8


def write_cache(path: Path, seed: int = 0, poison_row: int | None = None, value: float = float("nan")) -> Path:
    w = CacheWriter(path, {"h": D}, "float32", shard_tokens=64, header={"model": {"id": "synthetic"}, "context_length": 8})
    g = torch.Generator().manual_seed(seed)
    for i in range(32):
        ids = torch.arange(i * 16, i * 16 + 16)
        x = torch.randn(16, D, generator=g) + 1.0
        if poison_row is not None and i * 16 <= poison_row < i * 16 + 16:
            x[poison_row - i * 16, 3] = value
        w.add({"h": x}, {"token_ids": ids.to(torch.int32), "doc_ids": ids.to(torch.int32) // 8,
                         "context_ids": ids // 8, "positions": (ids % 8).to(torch.int32)}, contexts=2)
    w.finish()
    return path


def cfg_for(cache: Path, out: Path, **kw) -> TrainConfig:
    base = dict(cache=str(cache), out=str(out), arch=("topk",), k=(2,), expansion=(2,), batch_size=32, progress=False,
                checkpoint_every=3, log_every=2, heldout_fraction=0.1, init_sample_tokens=64, normalize=False)
    base.update(kw)
    return TrainConfig(**base)


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "cache-prefetch"]


def wait_no_prefetch(timeout: float = 3.0) -> list[threading.Thread]:
    deadline = time.time() + timeout
    while prefetch_threads() and time.time() < deadline:
        gc.collect()
        time.sleep(0.02)
    return prefetch_threads()


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return write_cache(tmp_path_factory.mktemp("c") / "acts")


# ------------------------------------------------------------------ NaN / inf

@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_nan_in_the_activations_stops_at_once_naming_step_and_hook(tmp_path, value) -> None:
    cache = write_cache(tmp_path / "acts", poison_row=300, value=value)
    r = CacheReader(cache)
    # which step reads row 300: the reader's order is a pure function of (seed, epoch, batch)
    bad_step = next(i for i, b in enumerate(r.batches("h", 32, seed=0, heldout_fraction=0.1, with_ids=True))
                    if bool((b["token_ids"] == 300).any())) + 1
    assert bad_step > 3, "plant the bad row after the first checkpoint"
    cfg = cfg_for(cache, tmp_path / "run", init_sample_tokens=32, prefetch=2)  # a reader thread to clean up
    with pytest.raises(NonFiniteError) as e:
        train(cfg)
    msg = str(e.value)
    assert msg.startswith(f"step {bad_step}: the activations of hook h hold NaN or inf"), msg
    last = (bad_step - 1) // 3 * 3
    assert f"last good checkpoint (step-{last:09d}) is kept" in msg
    assert latest_checkpoint(tmp_path / "run").name == f"step-{last:09d}"
    assert not wait_no_prefetch()


def test_a_diverging_loss_stops_naming_the_sae(tmp_path, cache) -> None:
    def blow_up(trainer: Trainer, step: int) -> None:
        if step == 4:
            with torch.no_grad():
                trainer.slots[0].sae.W_dec[0, 0] = float("inf")

    with pytest.raises(NonFiniteError, match=r"^step 5: SAE h/topk-k2-x2 \(hook h\): the loss is NaN or inf; "
                                             r"training stopped \(the last good checkpoint \(step-000000003\) is kept"):
        train(cfg_for(cache, tmp_path / "run", prefetch=2), callback=blow_up)
    # the checkpoint on disk is the good one: it resumes cleanly
    assert latest_checkpoint(tmp_path / "run").name == "step-000000003"
    assert not wait_no_prefetch()


# ------------------------------------------------------------------ resume identity

def test_resume_refuses_the_same_path_with_other_content(tmp_path) -> None:
    cache = write_cache(tmp_path / "acts", seed=0)

    def stop(trainer: Trainer, step: int) -> None:
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg_for(cache, tmp_path / "run"), callback=stop)
    shutil.rmtree(cache)
    write_cache(cache, seed=1)  # same path, same shapes, other activations
    with pytest.raises(WorkbenchError, match=r"cannot resume .*holds other data than the run was trained on"):
        Trainer(cfg_for(cache, tmp_path / "run"))


def test_resume_refuses_another_device_type(tmp_path, cache) -> None:
    def stop(trainer: Trainer, step: int) -> None:
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg_for(cache, tmp_path / "run"), callback=stop)
    state_file = latest_checkpoint(tmp_path / "run") / "trainer.json"
    state = json.loads(state_file.read_text())
    assert state["identity"]["device_type"] == "cpu"
    state["identity"]["device_type"] = "cuda"  # as if written by a GPU run
    state_file.write_text(json.dumps(state))
    with pytest.raises(WorkbenchError, match=r"it was trained on cuda, this run is on cpu .*--device cuda"):
        Trainer(cfg_for(cache, tmp_path / "run"))


# ------------------------------------------------------------------ prefetch thread

def test_the_reader_thread_changes_nothing_but_where_batches_are_gathered(tmp_path, cache) -> None:
    runs = {p: train(cfg_for(cache, tmp_path / f"p{p}", prefetch=p)) for p in (0, 2)}
    assert runs[0]["steps"] == runs[2]["steps"] > 0
    a, b = (load_file(str(next((tmp_path / f"p{p}").rglob("sae.safetensors")))) for p in (0, 2))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert runs[0]["saes"][0]["heldout_fvu"] == runs[2]["saes"][0]["heldout_fvu"]


def test_prefetch_thread_ends_when_the_consumer_closes_early(cache) -> None:
    r = CacheReader(cache)
    assert not prefetch_threads()
    it = r.batches("h", 16, split="all", prefetch=2, window_shards=1)
    next(it)
    time.sleep(0.3)  # let the thread fill its queue and reach the end of the epoch
    assert prefetch_threads()
    it.close()
    assert not prefetch_threads()  # joined by close()


def test_prefetch_thread_ends_when_the_consumer_drops_the_iterator(cache) -> None:
    r = CacheReader(cache)
    for _ in r.batches("h", 16, split="all", prefetch=2):
        break
    assert not wait_no_prefetch()


def test_prefetch_thread_ends_when_the_consumer_raises(cache) -> None:
    r = CacheReader(cache)

    def consume() -> None:
        for i, _ in enumerate(r.batches("h", 16, split="all", prefetch=2)):
            if i == 1:
                raise ValueError("consumer failed")

    with pytest.raises(ValueError):
        consume()
    assert not wait_no_prefetch()
    with pytest.raises(ValueError):
        with r.batches("h", 16, split="all", prefetch=2) as it:
            next(it)
            raise ValueError("inside with")
    assert not prefetch_threads()


def test_the_trainer_leaves_no_prefetch_thread_when_a_step_raises(tmp_path, cache) -> None:
    def fail(trainer: Trainer, step: int) -> None:
        if step == 2:
            raise RuntimeError("boom")

    try:
        train(cfg_for(cache, tmp_path / "run"), callback=fail)
    except RuntimeError as e:
        err = e
    assert str(err) == "boom"
    assert not prefetch_threads()  # closed by the trainer itself, while the traceback is still alive


# ------------------------------------------------------------------ --verify

def test_train_verify_runs_the_checksums_first(tmp_path, cache) -> None:
    bad = tmp_path / "acts"
    shutil.copytree(cache, bad)
    f = bad / "shard_00002.h.safetensors"
    data = bytearray(f.read_bytes())
    data[-5] ^= 0x04
    f.write_bytes(bytes(data))
    with pytest.raises(WorkbenchError, match=r"failed verification: shard 2 \(shard_00002.h.safetensors\): checksum"):
        Trainer(cfg_for(bad, tmp_path / "run", verify=True))
    assert not (tmp_path / "run").exists()
