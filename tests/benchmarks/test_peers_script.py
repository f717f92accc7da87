"""The pure parts of `benchmarks/peers/run.py`: the batches export, the common-form scoring, the goals.

No peer venv is built here (that takes minutes and a registry); the workbench's own worker runs
for real on a tiny batches file, since it needs nothing but this venv.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
PEERS = ROOT / "benchmarks" / "peers"
sys.path.insert(0, str(PEERS))

import batches_file  # noqa: E402
import cache_export  # noqa: E402
import common_form  # noqa: E402
import run as driver  # noqa: E402

D = 8
T = 10  # rows per context


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A real cache (the harvester's writer) of 60 contexts; column 0 of each row holds its row number."""
    from harvesting import CacheWriter

    path = tmp_path_factory.mktemp("peers") / "acts"
    w = CacheWriter(path, {"h": D}, "float32", shard_tokens=97, header={"model": {"id": "synthetic"}, "context_length": T})
    g = torch.Generator().manual_seed(0)
    for c in range(0, 60, 3):
        ids = torch.arange(c * T, (c + 3) * T)
        acts = torch.randn(ids.numel(), D, generator=g)
        acts[:, 0] = ids.float()
        w.add({"h": acts}, {"token_ids": ids.to(torch.int32), "doc_ids": ids.to(torch.int32) // 25,
                            "context_ids": ids // T, "positions": (ids % T).to(torch.int32)}, contexts=3)
    w.finish()
    return path


def test_feed_order_passes_are_permutations():
    order = batches_file.feed_order(10, 25, seed=3)
    assert order.numel() == 25
    assert torch.equal(order[:10].sort().values, torch.arange(10))
    assert torch.equal(order[10:20].sort().values, torch.arange(10))
    assert not torch.equal(order[:10], order[10:20])  # a fresh permutation each pass
    assert torch.equal(order, batches_file.feed_order(10, 25, seed=3))
    assert not torch.equal(order, batches_file.feed_order(10, 25, seed=4))


def test_export_keeps_heldout_out_of_training_and_feeds_every_row(cache, tmp_path):
    # 60 contexts, 10% held out = the last 6 contexts from row 540, moved to the next document boundary
    # (documents are 25 rows): rows 550..599 held out, 550 training rows.
    path, what = cache_export.export(cache, "h", tmp_path / "b.safetensors", tokens=1280, batch_size=64,
                                     heldout_fraction=0.1, heldout_tokens=1000, seed=0, params={"k": 2})
    data = batches_file.read(path)
    ids = data.rows[:, 0].long()
    assert ids.numel() == 550 and torch.equal(ids.sort().values, torch.arange(550))
    assert torch.equal(data.heldout[:, 0].long(), torch.arange(550, 600))  # the held-out split, in order
    assert data.num_batches == 20 and data.tokens == 1280 and data.params["k"] == 2
    fed = torch.cat(list(data))[:, 0].long()
    assert fed.numel() == 1280
    assert torch.equal(fed[:550].sort().values, torch.arange(550))  # the first pass sees every row once
    assert torch.equal(data.last_rows(128), torch.cat([data.batch(18), data.batch(19)]))
    assert "2.33 pass(es)" in what


def test_export_takes_a_subset_when_the_cache_is_larger(cache, tmp_path):
    path, _ = cache_export.export(cache, "h", tmp_path / "b.safetensors", tokens=256, batch_size=64,
                                  heldout_fraction=0.1, heldout_tokens=20, seed=1, params={})
    data = batches_file.read(path)
    ids = data.rows[:, 0].long()
    assert ids.numel() == 256 and ids.unique().numel() == 256 and int(ids.max()) < 550
    assert torch.equal(data.order.sort().values, torch.arange(256))
    assert data.heldout.shape == (20, D)


def test_export_rejects_a_partial_batch_and_an_unknown_hook(cache, tmp_path):
    with pytest.raises(SystemExit, match="multiple of the batch size"):
        cache_export.export(cache, "h", tmp_path / "b", tokens=100, batch_size=64, heldout_fraction=0.1,
                            heldout_tokens=10, seed=0, params={})
    with pytest.raises(SystemExit, match="it has"):
        cache_export.d_model(cache, "nope")


def _reference_fvu(w, x, k):
    """Dense, row by row: the formula as written."""
    err = 0.0
    for row in x:
        pre = w["W_enc"] @ (row - w["b_dec"]) + w["b_enc"]
        keep = pre.topk(k).indices
        z = torch.zeros_like(pre)
        z[keep] = pre[keep].clamp_min(0)
        err += float(((z @ w["W_dec"] + w["b_dec"]) - row).pow(2).sum())
    return err / float((x - x.mean(0)).pow(2).sum())


def test_fvu_matches_the_formula_on_random_weights():
    g = torch.Generator().manual_seed(0)
    w = {"W_enc": torch.randn(24, D, generator=g), "b_enc": torch.randn(24, generator=g) * 0.1,
         "W_dec": torch.randn(24, D, generator=g) / 3, "b_dec": torch.randn(D, generator=g)}
    x = torch.randn(50, D, generator=g) * 2 + 1
    assert common_form.fvu(w, x, 5) == pytest.approx(_reference_fvu(w, x, 5), rel=1e-5)


def test_known_weights_give_known_fvu_and_dead_fraction():
    eye = torch.eye(D)
    # identity dictionary plus 4 features that can never win (b_enc far below): x_hat = x for x >= 0
    w = {"W_enc": torch.cat([eye, torch.zeros(4, D)]), "b_enc": torch.cat([torch.zeros(D), torch.full((4,), -1e6)]),
         "W_dec": torch.cat([eye, torch.ones(4, D)]), "b_dec": torch.zeros(D)}
    x = torch.rand(40, D) + 0.1
    assert common_form.fvu(w, x, D) == pytest.approx(0.0, abs=1e-9)
    assert common_form.dead_fraction(w, x, D) == pytest.approx(4 / 12)
    # keeping one feature per token of a one-hot input: still exact
    onehot = torch.eye(D).repeat(3, 1) * 5
    assert common_form.fvu(w, onehot, 1) == pytest.approx(0.0, abs=1e-9)
    # features 0..3 only ever fire: half of the identity part is dead on these rows
    assert common_form.dead_fraction(w, torch.eye(D)[:4] * 5, 1) == pytest.approx(8 / 12)
    with pytest.raises(ValueError, match="b_dec"):
        common_form.check_weights({**w, "b_dec": torch.zeros(D + 1)})


def _results(tok_s: float, fvu: float) -> list[dict]:
    return [{"tokens": 1000, "seconds": 1000 / tok_s, "fvu": fvu, "dead": 0.0, "peak_rss_mib": 1.0,
             "rss_after_load_mib": 1.0, "conversion_max_rel_diff": 0.0, "recipe": "r", "version": "v", "torch": "t"}]


@pytest.mark.parametrize("ours,fast_fvu,floor,met", [
    (30_000.0, 0.30, 32_000.0, ("met", "met")),        # 2.0x the faster peer, better FVU, 94% of the floor
    (30_000.0, 0.20, 32_000.0, ("not met", "met")),    # fast enough, but worse FVU than that peer
    (20_000.0, 0.30, 40_000.0, ("not met", "not met")),
])
def test_goals_name_the_faster_peer_and_judge_both_goals(ours, fast_fvu, floor, met):
    s = driver.summarize({"workbench": _results(ours, 0.25), "sparsify": _results(15_000, fast_fvu),
                          "SAELens": _results(5_000, 0.5)})
    lines = driver.goals(s, list(driver.MAIN), floor)
    assert "Faster peer: sparsify" in lines[0]
    assert [("not met" if "**not met**" in line else "met") for line in lines] == list(met)


def test_the_workbench_worker_trains_on_the_file_and_converts_exactly(tmp_path):
    g = torch.Generator().manual_seed(0)
    rows, held = torch.randn(200, D, generator=g) * 3 + 1, torch.randn(30, D, generator=g) * 3 + 1
    path = batches_file.write(tmp_path / "b.safetensors", rows, batches_file.feed_order(200, 256, 0), held,
                              {"k": 4, "num_features": 32, "lr": 1e-3, "batch_size": 64, "seed": 0, "warmup_steps": 0})
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(PEERS / "train_ours.py"), str(path), str(tmp_path / "out"),
                           "--threads", "1"], capture_output=True, text=True, timeout=300, env={**env, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "out" / "result.json").read_text())
    assert res["steps"] == 4 and res["tokens"] == 256 and res["trainer_steps"] == 4 and res["seconds"] > 0
    assert res["conversion_max_rel_diff"] < 1e-5
    w = load_file(str(tmp_path / "out" / "weights.safetensors"))
    assert common_form.check_weights(w) == (D, 32)
    assert 0 < common_form.fvu(w, held, 4) < 1


def test_a_bad_cache_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, str(PEERS / "run.py"), "--cache", str(tmp_path / "none")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "is not an activation cache" in proc.stderr and "Traceback" not in proc.stderr


def test_a_faster_peer_configuration_among_the_extras_is_the_one_compared():
    runs = list(driver.MAIN) + [driver.EXTRAS["sparsify-signum"], driver.EXTRAS["ours-float32"]]
    s = driver.summarize({"workbench": _results(30_000, 0.25), "sparsify": _results(10_000, 0.4),
                          "SAELens": _results(5_000, 0.5), runs[3].name: _results(16_000, 0.3),
                          runs[4].name: _results(90_000, 0.25)})  # our own extra row is never "the peer"
    lines = driver.goals(s, runs, 32_000)
    assert f"Faster peer: {runs[3].name}; workbench 1.88x" in lines[0] and "**not met**" in lines[0]
