"""A half-size (bfloat16 / float16) cache round-trips through the reader, the trainer and the evals.

The reference is the same rows written as float32: upcasting a half value is exact, so a trainer
or an eval that reads the half cache and upcasts on the device must give bit for bit what it gives
on the float32 twin. The trainer must also move the rows as stored (half the bytes to the device)
and upcast only there.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from harvesting import CacheReader, CacheWriter
from saes import TensorSource, TrainConfig, Trainer, find_sae_dirs, load_sae, train

pytestmark = pytest.mark.usefixtures("one_thread")

D, N, CTX = 24, 3_000, 10
HALF = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def _rows(dtype: torch.dtype) -> torch.Tensor:
    """Anisotropic rows with a large common offset (as residual streams have), rounded to `dtype`."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g) * torch.linspace(0.2, 3.0, D) + 40.0 * torch.randn(D, generator=g)
    return x.to(dtype)


def _write(path: Path, acts: torch.Tensor, dtype: str) -> Path:
    w = CacheWriter(path, {"h": D}, dtype, shard_tokens=700, header={"model": {"id": "synthetic"}, "context_length": CTX})
    for a in range(0, N, 100):  # forward passes of 10 contexts of 10 rows, documents of 35 rows
        ids = torch.arange(a, a + 100)
        w.add({"h": acts[a:a + 100]}, {"token_ids": ids.to(torch.int32), "doc_ids": (ids // 35).to(torch.int32),
                                       "context_ids": ids // CTX, "positions": (ids % CTX).to(torch.int32)},
              contexts=100 // CTX)
    w.finish()
    return path


@pytest.fixture(scope="module", params=list(HALF))
def twins(request, tmp_path_factory) -> tuple[Path, Path, torch.dtype]:
    """(a half cache, a float32 cache of the very same values, the half dtype)."""
    name = request.param
    half = _rows(HALF[name])
    d = tmp_path_factory.mktemp(name)
    return _write(d / "half", half, name), _write(d / "f32", half.float(), "float32"), HALF[name]


def _cfg(cache: Path, out: Path) -> TrainConfig:
    return TrainConfig(cache=str(cache), out=str(out), arch=("topk",), k=(4,), expansion=(2,), batch_size=100,
                       epochs=2, progress=False, checkpoint_every=0, log_every=5, heldout_fraction=0.1,
                       init_sample_tokens=400, seed=7)


def _weights(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {str(d.relative_to(run)): load_file(str(d / "sae.safetensors")) for d in find_sae_dirs(run)}


def test_the_trainer_on_a_half_cache_equals_it_on_the_float32_twin(twins, tmp_path) -> None:
    half, f32, _ = twins
    a = train(_cfg(half, tmp_path / "half"))
    b = train(_cfg(f32, tmp_path / "f32"))
    wa, wb = _weights(tmp_path / "half"), _weights(tmp_path / "f32")
    assert wa.keys() == wb.keys() and wa
    for k in wa:
        for name in wa[k]:
            assert torch.equal(wa[k][name], wb[k][name]), (k, name)
    assert a["saes"][0]["heldout_fvu"] == b["saes"][0]["heldout_fvu"]
    assert 0.0 < a["saes"][0]["heldout_fvu"] < 1.0  # it learned something: the test is not vacuous


def test_the_trainer_moves_half_rows_and_upcasts_them_on_the_device(twins, tmp_path) -> None:
    half, _, dtype = twins
    trainer = Trainer(_cfg(half, tmp_path / "run"))
    try:
        batch = next(iter(trainer.batches()))
    finally:
        trainer.close()
    assert batch["h"].dtype == dtype  # half the bytes cross to the device; train_step upcasts there


def test_tensor_source_keeps_its_dtype_when_asked(twins) -> None:
    _, _, dtype = twins
    x = _rows(dtype)
    src = TensorSource({"h": x})
    assert next(iter(src.batches(["h"], 50, dtype=None)))["h"].dtype == dtype
    assert next(iter(src.batches(["h"], 50)))["h"].dtype == torch.float32


def test_evals_read_a_half_cache_as_its_float32_twin(twins, tmp_path) -> None:
    from evals.cache_pass import cache_pass
    from evals.features.collect import FeatureCollector
    from evals.features.config import FeatureConfig

    half, f32, _ = twins
    train(_cfg(f32, tmp_path / "run"))
    sae = load_sae(find_sae_dirs(tmp_path / "run")[0])
    ra, rb = CacheReader(half), CacheReader(f32)
    pa = cache_pass(sae, ra, "h", split="heldout", heldout_fraction=0.1, batch_size=128)
    pb = cache_pass(sae, rb, "h", split="heldout", heldout_fraction=0.1, batch_size=128)
    assert pa.reconstruction.n == pb.reconstruction.n > 0
    assert pa.reconstruction.summary() == pb.reconstruction.summary()
    assert torch.equal(pa.features.fired, pb.features.fired) and torch.equal(pa.features.act_sum, pb.features.act_sum)
    # the browser's feature pass (one shard through the collector) sees the same codes
    cfg = FeatureConfig(top_k=3, intervals=2, samples=2, fine_bins=8, histogram_bins=4, corr_features=8)
    states = []
    for r in (ra, rb):
        col = FeatureCollector(sae.num_features, cfg, False, 0, torch.arange(8))
        shard = r.load_shard(1, ["h"])
        acts = shard.pop("h")
        col.consume(sae, acts, shard, r.shards[1]["rows"][0], torch.Generator().manual_seed(0), torch.device("cpu"))
        states.append(col.state())
    assert states[0].keys() == states[1].keys()
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k
