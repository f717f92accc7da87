"""Feature-parallel training (saes.feature_parallel) over gloo processes equals the one-process run.

Each case trains one TopK SAE (AuxK among dead features, Multi-TopK, gradient clipping, a mid-run
checkpoint) on synthetic continuous activations (no ties at the k-th place) in float32, with the
same global batches: with N ranks holding F/N features each, and with 2 data-parallel replicas of
2 feature shards. Same selections = the per-feature firing counts over the whole run are equal
(integers, every step's picks summed); the saved SAE (one ordinary file, written by rank 0) has
the one-process weights within float tolerance (the shards' matmuls and the decode's all-reduce
sum in another order). Each rank holds ~1/N of the parameters and of the Adam state, and no rank
ever allocates a tensor spanning all F features of a matrix: not at the start (each rank draws its
rows of the one-process initialisation), not on resuming (each reads its rows of the checkpoint),
not when saving (the checkpoint and the SAE are one ordinary file each, written from the shards).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from saes.config import SAEConfig
from saes.storage import load_sae, save_sae
from workbench.io import atomic_save_safetensors
from saes.feature_parallel import check_layout, feature_layout
from workbench.distributed import DistContext
from workbench.errors import WorkbenchError

CASE = Path(__file__).with_name("fp_case.py")
ROOT = CASE.parents[2]
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")


def run_case(out: Path, world: int, fp: int, *extra: str) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    proc = subprocess.run([sys.executable, str(CASE), str(out), str(world), str(fp), *extra], env=env,
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    for r in range(world):  # the whole F x d never exists on a rank (see fp_case.WholeTensors)
        for name in (f"rank{r}.json", f"killed{r}.json"):
            if (out / name).exists():
                whole = json.loads((out / name).read_text())["whole"]
                assert whole == [], f"rank {r} of {world} allocated whole-feature tensors {whole}"
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world) if (out / f"rank{r}.json").exists()]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The reference: the same run in this process (no process group)."""
    out = tmp_path_factory.mktemp("fp-one")
    spec = importlib.util.spec_from_file_location("fp_case", CASE)
    case = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(case)
    args = type("A", (), dict(out=str(out), world=1, fp=1, kill_at=0, expansion=3, tokens=2600, d=16, batch=240))()
    threads = torch.get_num_threads()
    try:
        case.worker(0, args, 0)
    finally:
        torch.set_num_threads(threads)
    ref = json.loads((out / "rank0.json").read_text())
    assert [48, 16] in ref["whole"], "the tracker does not see the one process's whole matrices"
    return out, ref


def saved(out: Path, name: str) -> tuple[dict, dict, dict]:
    d = out / name
    return load_file(str(d / "sae.safetensors")), load_file(str(d / "stats.safetensors")), json.loads((d / "cfg.json").read_text())


def assert_same_sae(out: Path, ref: Path, name: str) -> None:
    w, stats, cfg = saved(out, name)
    w_ref, stats_ref, cfg_ref = saved(ref, name)
    assert cfg["num_features"] == cfg_ref["num_features"] == 48
    assert w.keys() == w_ref.keys() and {k: tuple(v.shape) for k, v in w.items()} == {k: tuple(v.shape) for k, v in w_ref.items()}
    assert stats["firing_counts"].sum() > 0
    assert torch.equal(stats["firing_counts"], stats_ref["firing_counts"]), "the picks differ from one process"
    assert torch.equal(stats["tokens_since_fired"], stats_ref["tokens_since_fired"])
    for k in w:
        torch.testing.assert_close(w[k], w_ref[k], rtol=1e-4, atol=2e-5, msg=lambda m: f"{k}: {m}")
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    metrics_ref = [json.loads(line) for line in (ref / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [m["step"] for m in metrics_ref]
    assert any("aux" in m for m in metrics), "AuxK never ran: the case does not test the merged aux selection"
    for m, r in zip(metrics, metrics_ref):  # the logged losses are counted once per replica
        for key in ("fvu", "l0", "multi_topk", "aux"):
            if key in r:
                assert m[key] == pytest.approx(r[key], rel=1e-4, abs=1e-6), (m["step"], key)
    (row,), (row_ref,) = (json.loads((o / "summary.json").read_text())["saes"] for o in (out, ref))
    assert row_ref["heldout_tokens"] > 0
    for key, v in row_ref.items():  # the held-out evaluation of the shards is the one process's
        if key.startswith("heldout_"):
            assert row[key] == pytest.approx(v, rel=1e-4, abs=1e-6), key
    assert_ordinary_file(out / name, out / "resaved")


def assert_ordinary_file(sae_dir: Path, scratch: Path) -> None:
    """The saved SAE loads as any SAE, and its file is byte for byte a one-process save of its weights."""
    sae = load_sae(sae_dir)
    save_sae(sae, scratch, load_file(str(sae_dir / "stats.safetensors")))
    for f in ("sae.safetensors", "stats.safetensors", "cfg.json"):
        assert (sae_dir / f).read_bytes() == (scratch / f).read_bytes(), f


def assert_shard_sizes(ranks: list[dict], ref: dict, fp: int) -> None:
    f, d = ref["num_features"], ref["d_in"]
    for r in ranks:
        # enc_weight, b_enc, W_dec split; b_dec (d values) replicated
        assert r["local_params"] == (2 * f * d + f) // fp + d
        assert r["local_adam"] == 2 * r["local_params"]
        assert r["local_params"] <= ref["local_params"] / fp + d


def test_three_feature_shards_equal_one_process(tmp_path, one_process):
    ref_out, ref = one_process
    world = 3
    ranks = run_case(tmp_path, world, world)
    assert len(ranks) == world and all(r["steps"] == ref["steps"] == 10 for r in ranks)
    assert_shard_sizes(ranks, ref, world)
    assert_same_sae(tmp_path, ref_out, ref["name"])


def test_two_feature_shards_killed_and_resumed_equal_one_process(tmp_path, one_process):
    """Two shards, killed after the step-4 checkpoint (gathered whole), resumed from it (each rank keeps
    its shard): every step ran split in two, and the result is the uninterrupted one-process SAE."""
    ref_out, ref = one_process
    assert run_case(tmp_path, 2, 2, "--kill-at", "6") == []
    assert (tmp_path / "checkpoint").is_dir() and not (tmp_path / ref["name"]).exists()
    ckpt = tmp_path / "checkpoint" / "step-000000004" / "sae-000.safetensors"
    tensors = load_file(str(ckpt))  # one ordinary file: what one process writes for these tensors
    assert tensors["sae.W_dec"].shape == tensors["opt.enc_weight.exp_avg_sq"].shape == (48, 16)
    atomic_save_safetensors(tmp_path / "resaved.safetensors", tensors, {"step": "4"})
    assert ckpt.read_bytes() == (tmp_path / "resaved.safetensors").read_bytes()
    ranks = run_case(tmp_path, 2, 2)
    assert len(ranks) == 2 and all(r["steps"] == ref["steps"] == 10 for r in ranks)
    assert_shard_sizes(ranks, ref, 2)
    assert_same_sae(tmp_path, ref_out, ref["name"])


def test_feature_parallel_with_data_parallel(tmp_path, one_process):
    """4 ranks = 2 data-parallel replicas x 2 feature shards."""
    ref_out, ref = one_process
    ranks = run_case(tmp_path, 4, 2)
    assert len(ranks) == 4
    assert_shard_sizes(ranks, ref, 2)
    assert_same_sae(tmp_path, ref_out, ref["name"])


# ---------------------------------------------------------------------- bad input


def test_feature_count_the_layout_cannot_split():
    cfg = SAEConfig(architecture="topk", d_in=16, num_features=32, k=3)
    with pytest.raises(WorkbenchError) as e:
        check_layout(3, [("h/topk-k3-x2", cfg)])
    msg = str(e.value)
    assert "\n" not in msg and "32 features" in msg and "--feature-parallel 3" in msg and "16" in msg
    check_layout(4, [("h/topk-k3-x2", cfg)])


def test_architecture_without_the_layout_is_refused():
    cfg = SAEConfig(architecture="batchtopk", d_in=16, num_features=32, k=3)
    with pytest.raises(WorkbenchError, match=r"'batchtopk'.*can: topk$"):
        check_layout(2, [("h/batchtopk-k3-x2", cfg)])


def test_world_size_the_layout_cannot_use():
    assert feature_layout(1, DistContext()) is None
    with pytest.raises(WorkbenchError, match=r"--feature-parallel 2 must divide the number of processes of this run \(1;.*valid here: 1$"):
        feature_layout(2, DistContext())
    with pytest.raises(WorkbenchError, match=r"valid here: 1, 2, 3, 6$"):
        feature_layout(4, DistContext(world_size=6))


@pytest.mark.parametrize("value, says", [("2", "must divide the number of processes of this run (1;"),
                                         ("0", "out of range"), ("-1", "out of range")])
def test_cli_bad_feature_parallel_is_one_line_exit_2(tmp_path, value, says):
    from harvesting import CacheWriter
    from workbench.cli import main

    cache = tmp_path / "acts"
    w = CacheWriter(cache, {"h": 4}, "float32", shard_tokens=64, header={"model": {"id": "synthetic"}, "context_length": 4})
    ids = torch.arange(128)
    w.add({"h": torch.randn(128, 4)}, {"token_ids": ids.to(torch.int32), "doc_ids": ids.to(torch.int32) // 8,
                                       "context_ids": ids // 4, "positions": (ids % 4).to(torch.int32)}, contexts=32)
    w.finish()
    err, outs = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(outs):
        code = main(["train", "--cache", str(cache), "--out", str(tmp_path / "out"), "--batch-size", "16",
                     "--no-progress", "--max-tokens", "32", "--expansion", "2", "--k", "2", "--feature-parallel", value],
                    )
    lines = err.getvalue().strip().splitlines()
    assert code == 2 and len(lines) == 1 and "--feature-parallel" in lines[0] and "Traceback" not in err.getvalue()
    assert says in lines[0], lines[0]
    assert not (tmp_path / "out" / "checkpoint").exists()
