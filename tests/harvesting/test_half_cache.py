"""Half-size caches (`sae harvest --dtype bfloat16|float16`): what they store, how they read back,
how `sae cache convert` makes one from a float32 cache, and the one line a dtype the workbench
cannot use gets.

The reference for what a half cache must hold is plain: the float32 activations of the same
harvest, rounded to the half type by torch's round-to-nearest-even cast. On a CPU with a fixed
thread count a harvest is deterministic, so the comparison is exact, not a tolerance.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import harvesting.cache as cache_mod
from harvesting import CacheReader, CacheWriter, HarvestConfig, cache_summary, harvest, verify_cache
from workbench.cli import main
from workbench.errors import WorkbenchError

HOOKS = ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post")
HALF = {"bfloat16": torch.bfloat16, "float16": torch.float16}


@pytest.fixture(autouse=True)
def _fixed_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # the harvests compared bit for bit run with one thread count
    yield
    torch.set_num_threads(old)


def _cfg(model: Path, corpus: Path, out: Path, **kw) -> HarvestConfig:
    base = dict(model=str(model), corpus=str(corpus), hooks=HOOKS, tokens=700, out=str(out), context_length=32,
                batch_size=8, shard_tokens=300, progress=False)
    base.update(kw)
    return HarvestConfig(**base)


def _stored(path: Path, hook: str) -> torch.Tensor:
    r = CacheReader(path)
    return torch.cat([r.load_shard(i, [hook])[hook] for i in range(len(r.shards))])


@pytest.fixture(scope="module")
def f32_cache(tiny_causal_dir, text_corpus, tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return harvest(_cfg(tiny_causal_dir, text_corpus, tmp_path_factory.mktemp("f32") / "acts"))


@pytest.fixture(scope="module")
def half_caches(tiny_causal_dir, text_corpus, tmp_path_factory) -> dict[str, Path]:
    torch.set_num_threads(1)
    return {name: harvest(_cfg(tiny_causal_dir, text_corpus, tmp_path_factory.mktemp(name) / "acts", dtype=name))
            for name in HALF}


@pytest.mark.parametrize("name", list(HALF))
def test_a_half_harvest_stores_the_float32_activations_rounded(f32_cache, half_caches, name) -> None:
    ref = {h: _stored(f32_cache, h) for h in HOOKS}
    half = half_caches[name]
    m = json.loads((half / "manifest.json").read_text())
    assert all(m["hooks"][h]["dtype"] == name for h in HOOKS)
    for h in HOOKS:
        got = _stored(half, h)
        assert got.dtype == HALF[name]
        assert torch.equal(got, ref[h].to(HALF[name]))  # round to nearest even, nothing else
    # half the activation bytes on disk: each hook file is its float32 twin's size less 2 bytes a value
    for s32, s16 in zip(json.loads((f32_cache / "manifest.json").read_text())["shards"], m["shards"]):
        for h in HOOKS:
            rows, d = s16["files"][h]["shapes"]["acts"]
            assert (half / s16["files"][h]["file"]).stat().st_size < (f32_cache / s32["files"][h]["file"]).stat().st_size
            assert s32["files"][h]["bytes"] - s16["files"][h]["bytes"] in range(2 * rows * d - 16, 2 * rows * d + 16)
    assert verify_cache(half).ok  # checksums, shapes and dtypes of half files
    assert cache_summary(half)["hooks"][HOOKS[0]]["dtype"] == name


@pytest.mark.parametrize("name", list(HALF))
def test_the_reader_serves_half_rows_as_stored_or_upcast(half_caches, name) -> None:
    half = half_caches[name]
    r = CacheReader(half)
    stored = _stored(half, HOOKS[1])
    kw = dict(shuffle=True, seed=3, split="all", drop_last=False)
    as_stored = list(r.batches(HOOKS[1], 64, dtype=None, **kw))
    upcast = list(r.batches(HOOKS[1], 64, **kw))  # the default: float32
    assert len(as_stored) > 2 and all(b[HOOKS[1]].dtype == HALF[name] for b in as_stored)
    assert all(b[HOOKS[1]].dtype == torch.float32 for b in upcast)
    for a, b in zip(as_stored, upcast):
        assert torch.equal(a[HOOKS[1]].float(), b[HOOKS[1]])  # the upcast is exact
    # the epoch serves every stored row once, unchanged (no second rounding on the way)
    served = torch.cat([b[HOOKS[1]] for b in as_stored]).float()
    assert torch.equal(torch.unique(served, dim=0), torch.unique(stored.float(), dim=0))
    # the manifest's norms are those of the stored (rounded) rows: a trainer's scale matches what it reads
    want = float(stored.float().norm(dim=1).double().mean())
    assert r.mean_norm(HOOKS[1]) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("name", list(HALF))
def test_convert_gives_the_bytes_a_half_harvest_writes(f32_cache, half_caches, name, tmp_path) -> None:
    from harvesting import convert_cache

    out = convert_cache(f32_cache, tmp_path / "conv", name)
    want = half_caches[name]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in want.iterdir())
    for p in want.iterdir():
        assert (out / p.name).read_bytes() == p.read_bytes(), p.name
    assert convert_cache(f32_cache, tmp_path / "conv", name) == out  # finished: nothing to do


def test_convert_refuses_a_bad_dtype_and_its_own_source(f32_cache, tmp_path) -> None:
    from harvesting import convert_cache

    with pytest.raises(WorkbenchError) as e:
        convert_cache(f32_cache, tmp_path / "c", "int8")
    _one_line_naming(str(e.value), "'int8'")
    assert not (tmp_path / "c").exists()
    with pytest.raises(WorkbenchError, match="is the cache being converted"):
        convert_cache(f32_cache, f32_cache, "float16")
    assert CacheReader(f32_cache).dtype(HOOKS[0]) == "float32"


# -- a cache dtype this workbench cannot use ------------------------------------------------------------

def _synthetic(path: Path, dtype: str) -> Path:
    w = CacheWriter(path, {"h": 4}, dtype, shard_tokens=20, header={"model": {"id": "synthetic"}, "context_length": 5})
    g = torch.Generator().manual_seed(0)
    for i in range(4):
        ids = torch.arange(i * 10, i * 10 + 10)
        w.add({"h": 5 * torch.randn(10, 4, generator=g)},
              {"token_ids": ids.to(torch.int32), "doc_ids": ids.to(torch.int32) // 7, "context_ids": ids // 5,
               "positions": (ids % 5).to(torch.int32)}, contexts=2)
    w.finish()
    return path


@pytest.fixture
def int8_cache(tmp_path, monkeypatch) -> Path:
    """A whole, self-consistent cache in int8 (as a writer that allowed int8 would write it)."""
    monkeypatch.setitem(cache_mod.DTYPES, "int8", torch.int8)
    path = _synthetic(tmp_path / "i8", "int8")
    monkeypatch.delitem(cache_mod.DTYPES, "int8")
    return path


def _one_line_naming(msg: str, value: str) -> None:
    assert "\n" not in msg and "Traceback" not in msg
    assert value in msg and "float32, float16, bfloat16" in msg, msg


def test_a_cache_in_a_dtype_the_reader_cannot_use_is_one_line(int8_cache, tmp_path, capsys) -> None:
    with pytest.raises(WorkbenchError) as e:
        CacheReader(int8_cache)
    _one_line_naming(str(e.value), "'int8'")
    rep = verify_cache(int8_cache)
    assert len(rep.problems) == 1
    _one_line_naming(rep.problems[0], "'int8'")
    for argv in (["train", "--cache", str(int8_cache), "--out", str(tmp_path / "run")], ["cache", "info", str(int8_cache)]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        _one_line_naming(err.rstrip("\n"), "'int8'")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("edit,shown", [
    (lambda m: m["hooks"]["h"].pop("dtype"), "no dtype"),
    (lambda m: m["hooks"]["h"].update(dtype=["float32"]), "['float32']"),
    (lambda m: m["hooks"]["h"].update(dtype="float64"), "'float64'"),
    (lambda m: m["hooks"].update(h="float32"), "'float32'"),
    (lambda m: m.update(hooks=["h"]), "['h']"),
    (lambda m: m["hooks"]["h"].update(d_model="4"), "'4'"),
])
def test_a_hostile_hooks_entry_is_one_line(tmp_path, edit, shown) -> None:
    path = _synthetic(tmp_path / "c", "float32")
    mf = path / "manifest.json"
    m = json.loads(mf.read_text())
    edit(m)
    mf.write_text(json.dumps(m))
    for fn in (CacheReader, cache_summary):
        with pytest.raises(WorkbenchError) as e:
            fn(path)
        assert "\n" not in str(e.value) and shown in str(e.value), str(e.value)
    rep = verify_cache(path)
    assert len(rep.problems) == 1 and shown in rep.problems[0]


def test_old_float32_caches_still_read(tmp_path) -> None:
    """A float32 cache's manifest is unchanged by half caches: the same keys, read as before."""
    path = _synthetic(tmp_path / "c", "float32")
    m = json.loads((path / "manifest.json").read_text())
    assert m["hooks"] == {"h": {"d_model": 4, "dtype": "float32"}} and m["format_version"] == 1
    old = tmp_path / "old"
    shutil.copytree(path, old)
    r = CacheReader(old)
    assert next(iter(r.batches("h", 8, dtype=None)))["h"].dtype == torch.float32


# -- values a half type cannot hold ------------------------------------------------------------------

def test_float16_overflow_is_refused_not_stored_as_inf(tmp_path) -> None:
    """float16 ends at 65504; a value beyond it would be stored as inf and poison every norm and
    every SAE trained on the cache. The writer refuses it in one line and says what to use instead."""
    acts = torch.ones(10, 4)
    acts[3, 2] = 7e4
    ids = torch.arange(10)
    rows = {"token_ids": ids.to(torch.int32), "doc_ids": ids.to(torch.int32), "context_ids": ids // 5,
            "positions": (ids % 5).to(torch.int32)}
    w = CacheWriter(tmp_path / "f16", {"h": 4}, "float16", shard_tokens=100)
    with pytest.raises(WorkbenchError) as e:
        w.add({"h": acts}, rows, contexts=2)
    msg = str(e.value)
    assert "\n" not in msg and "'h'" in msg and "70000" in msg and "float16" in msg and "bfloat16" in msg, msg
    w = CacheWriter(tmp_path / "bf16", {"h": 4}, "bfloat16", shard_tokens=100)  # bfloat16 has float32's range
    w.add({"h": acts}, rows, contexts=2)
    w.finish()
    assert torch.isfinite(CacheReader(tmp_path / "bf16").load_shard(0)["h"]).all()


def test_a_float16_harvest_or_conversion_that_would_overflow_is_refused(tiny_causal_dir, text_corpus, tmp_path) -> None:
    from harvesting import convert_cache, load_model

    lm = load_model(str(tiny_causal_dir))
    with torch.no_grad():
        for name, p in lm.bridge.named_parameters():
            if "embed" in name:
                p.mul_(1e7)  # a residual stream far beyond float16's range, as no float32 value is
    f32 = harvest(_cfg(tiny_causal_dir, text_corpus, tmp_path / "f32", tokens=200), model=lm)
    assert float(_stored(f32, HOOKS[0]).abs().max()) > 65504
    for attempt in (lambda: harvest(_cfg(tiny_causal_dir, text_corpus, tmp_path / "f16", tokens=200, dtype="float16"), model=lm),
                    lambda: convert_cache(f32, tmp_path / "conv", "float16")):
        with pytest.raises(WorkbenchError) as e:
            attempt()
        assert "\n" not in str(e.value) and "float16" in str(e.value) and "bfloat16" in str(e.value), str(e.value)
    assert torch.isfinite(_stored(convert_cache(f32, tmp_path / "bf", "bfloat16"), HOOKS[0]).float()).all()
    assert not any((tmp_path / "conv").glob("shard_*")), "a refused conversion leaves no shard file behind"
