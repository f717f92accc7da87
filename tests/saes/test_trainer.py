"""The trainer: one read feeds many SAEs, resume equals an uninterrupted run, metrics, checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from saes import TensorSource, TrainConfig, Trainer, find_sae_dirs, load_sae, train
from saes.losses import fvu
from saes.synthetic import random_dictionary, sparse_activations
from workbench.errors import WorkbenchError


pytestmark = pytest.mark.usefixtures("one_thread")


TRUE = random_dictionary(48, 16, seed=1)
X = sparse_activations(TRUE, 6_000, active=3, seed=2, bias=torch.full((16,), 3.0))
X2 = sparse_activations(random_dictionary(40, 24, seed=3), 6_000, active=2, seed=4)


class CountingSource(TensorSource):
    """A TensorSource that counts the batches it hands out (to prove one read feeds every SAE)."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.served = 0

    def batches(self, *a, **kw):
        for b in super().batches(*a, **kw):
            self.served += 1
            yield b


def base_cfg(out: Path, **kw) -> TrainConfig:
    defaults = dict(arch=("topk",), k=(3,), expansion=(2,), batch_size=128, out=str(out), progress=False,
                    checkpoint_every=0, log_every=4, heldout_fraction=0.05, init_sample_tokens=512)
    defaults.update(kw)
    return TrainConfig(**defaults)


def weights(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {str(d.relative_to(run)): load_file(str(d / "sae.safetensors")) for d in find_sae_dirs(run)}


def metric_lines(run: Path) -> list[dict]:
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    for m in lines:
        m.pop("tokens_per_s")
    return lines


class Interrupt(Exception):
    pass


def test_resume_equals_uninterrupted_run(tmp_path):
    """Kill after step 13 (last checkpoint at 10), resume: bit-identical weights, stats and metrics."""
    kw = dict(arch=("topk", "batchtopk", "feature_choice", "jumprelu", "relu"), capacity="zipf",
              checkpoint_every=5, dead_tokens=640, epochs=2, l0_coef=0.1, l1_coef=0.3, multi_topk=True)
    src = TensorSource(X)
    full = train(base_cfg(tmp_path / "full", **kw), src)

    def kill(trainer, step):
        if step == 13:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(base_cfg(tmp_path / "cut", **kw), src, callback=kill)
    ckpt = json.loads((tmp_path / "cut" / "checkpoint" / "latest.json").read_text())
    assert ckpt["step"] == 10
    resumed = train(base_cfg(tmp_path / "cut", **kw), src)
    assert resumed["steps"] == full["steps"] == 2 * (5700 // 128)
    wa, wb = weights(tmp_path / "full"), weights(tmp_path / "cut")
    assert wa.keys() == wb.keys() and len(wa) == 5
    for name in wa:
        for t in wa[name]:
            assert torch.equal(wa[name][t], wb[name][t]), f"{name}/{t} differs after resume"
        sa = load_file(str(tmp_path / "full" / name / "stats.safetensors"))
        sb = load_file(str(tmp_path / "cut" / name / "stats.safetensors"))
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert metric_lines(tmp_path / "full") == metric_lines(tmp_path / "cut")
    for a, b in zip(full["saes"], resumed["saes"]):
        assert a["heldout_fvu"] == b["heldout_fvu"]
    # Running the finished command again trains nothing and reports the same result.
    again = train(base_cfg(tmp_path / "cut", **kw), src)
    assert again["steps"] == full["steps"] and again["saes"][0]["heldout_fvu"] == full["saes"][0]["heldout_fvu"]


def test_one_read_feeds_every_sae_and_each_matches_its_solo_run(tmp_path):
    src = CountingSource(X)
    multi = train(base_cfg(tmp_path / "multi", k=(3, 5), expansion=(2, 3)), src)
    multi_reads = src.served
    src.served = 0
    train(base_cfg(tmp_path / "solo", k=(5,), expansion=(3,)), src)
    assert src.served == multi_reads, "training four SAEs should read the data exactly as often as one"
    assert [r["name"] for r in multi["saes"]] == [
        "x/topk-k3-x2", "x/topk-k3-x3", "x/topk-k5-x2", "x/topk-k5-x3"]
    a = load_file(str(tmp_path / "multi" / "x" / "topk-k5-x3" / "sae.safetensors"))
    b = load_file(str(tmp_path / "solo" / "x" / "topk-k5-x3" / "sae.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a), "an SAE trained alongside others should equal its solo run"


def test_several_hook_points_in_one_pass(tmp_path):
    src = CountingSource({"blocks.0.hook_resid_post": X, "blocks.1.hook_resid_post": X2})
    summary = train(base_cfg(tmp_path, hook=("blocks.0.hook_resid_post", "blocks.1.hook_resid_post")), src)
    dims = {r["hook"]: load_sae(r["dir"]).d_in for r in summary["saes"]}
    assert dims == {"blocks.0.hook_resid_post": 16, "blocks.1.hook_resid_post": 24}
    steps = summary["steps"]
    # Training batches, the b_dec sample and the held-out evaluation: each read once for both SAEs.
    assert src.served == steps + 512 // 128 + -(-300 // 128)


def test_metrics_summary_and_saved_sae_agree(tmp_path):
    src = TensorSource(X)
    summary = train(base_cfg(tmp_path, arch=("topk", "batchtopk"), epochs=2), src)
    lines = metric_lines(tmp_path)
    assert {m["sae"] for m in lines} == {"x/topk-k3-x2", "x/batchtopk-k3-x2"}
    steps = [m["step"] for m in lines if m["sae"] == "x/topk-k3-x2"]
    assert steps == sorted(steps) and steps[-1] == summary["steps"] and steps[0] == 4
    for m in lines:
        assert 0 <= m["fvu"] < 2 and m["l0"] > 0 and 0 <= m["dead_pct"] <= 100 and m["lr"] > 0
    first = [m["fvu"] for m in lines if m["sae"] == "x/topk-k3-x2"]
    assert first[-1] < first[0], "training should lower the FVU"
    # The reported held-out FVU is what the saved SAE (raw inputs, scale folded) gives.
    held = next(iter(src.batches(["x"], 10_000, split="heldout", heldout_fraction=0.05, shuffle=False,
                                 drop_last=False)))["x"]
    for row in summary["saes"]:
        sae = load_sae(row["dir"])
        with torch.no_grad():
            assert float(fvu(held, sae(held))) == pytest.approx(row["heldout_fvu"], rel=1e-4)
        assert row["heldout_tokens"] == held.shape[0] == 300
        assert sae.cfg.train["lr"] > 0 and sae.cfg.train["steps"] == summary["steps"]
        assert sae.cfg.input_scale == pytest.approx(src.norm_scale("x"))
    saved = json.loads((tmp_path / "train_config.json").read_text())
    assert saved["arch"] == ["topk", "batchtopk"] and saved["batch_size"] == 128
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == summary["steps"]


def test_width_scaled_learning_rate_and_warmup(tmp_path):
    t = Trainer(base_cfg(tmp_path, expansion=(2, 8)), TensorSource(X))
    lrs = [s.lr for s in t.slots]
    assert lrs[0] == pytest.approx(8e-4 / (32 / 2**14) ** 0.5)
    assert lrs[0] / lrs[1] == pytest.approx(2.0)  # 4x the features -> half the rate
    t2 = Trainer(base_cfg(tmp_path / "b", lr=1e-3, warmup_fraction=0.5), TensorSource(X))
    assert t2.slots[0].lr == 1e-3 and t2.lr_factor() == pytest.approx(1 / round(0.5 * t2.total_steps))


def test_bad_input_is_named(tmp_path):
    src = TensorSource({"a": X, "b": X})
    with pytest.raises(WorkbenchError, match=r"unknown hook point 'c'; valid choices: a, b"):
        Trainer(base_cfg(tmp_path, hook=("c",)), src)
    with pytest.raises(WorkbenchError, match=r"holds 2 hook points; pass --hooks with one or more of: a, b"):
        Trainer(base_cfg(tmp_path), src)
    with pytest.raises(WorkbenchError, match=r"k=40 must be below the number of features \(32 = expansion 2 x d_model 16"):
        Trainer(base_cfg(tmp_path, k=(40,)), TensorSource(X))
    with pytest.raises(WorkbenchError, match="fewer tokens than one batch of 100000"):
        Trainer(base_cfg(tmp_path, batch_size=100_000), TensorSource(X))
    with pytest.raises(WorkbenchError, match="unknown architecture 'gated'"):
        base_cfg(tmp_path, arch=("gated",))
    with pytest.raises(WorkbenchError, match="batch-size"):
        base_cfg(tmp_path, batch_size=0)


def test_resume_refuses_a_different_config_or_no_resume(tmp_path):
    def stop(trainer, step):
        if step == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(base_cfg(tmp_path, checkpoint_every=2), TensorSource(X), callback=stop)
    with pytest.raises(WorkbenchError, match=r"config differs \(k: checkpoint \[3\], now \[4\]\)"):
        Trainer(base_cfg(tmp_path, checkpoint_every=2, k=(4,)), TensorSource(X))
    with pytest.raises(WorkbenchError, match="already holds a run .* pass --resume"):
        Trainer(base_cfg(tmp_path, checkpoint_every=2, resume=False), TensorSource(X))
    # Logging and checkpoint cadence may change on resume.
    Trainer(base_cfg(tmp_path, checkpoint_every=7, log_every=3), TensorSource(X))


def test_auxk_revives_dead_features(tmp_path):
    """With AuxK fewer features end dead than without (same data, same init, same order).

    Data with more true directions (256, Zipf-distributed frequencies) than SAE features (128),
    so every dead feature is a loss the aux term can recover.
    """
    true = random_dictionary(256, 16, seed=1)
    x = sparse_activations(true, 12_000, active=4, seed=2, bias=torch.full((16,), 3.0), zipf_exponent=0.8)
    kw = dict(k=(4,), expansion=(8,), epochs=3, dead_tokens=1024, lr=1e-2, k_aux=8)
    with_aux = train(base_cfg(tmp_path / "a", aux_coef=1.0, **kw), TensorSource(x))
    without = train(base_cfg(tmp_path / "b", aux_loss="none", **kw), TensorSource(x))
    assert without["saes"][0]["dead_features"] >= 4, "setup should produce dead features without AuxK"
    assert with_aux["saes"][0]["dead_features"] <= without["saes"][0]["dead_features"] // 2


@pytest.mark.parametrize("mode,every,expect", [("auto", 2, True), ("auto", 0, False), ("on", 0, True), ("off", 2, False)])
def test_deterministic_kernels_whenever_the_run_may_be_resumed(tmp_path, mode, every, expect):
    from saes.kernels import is_deterministic

    seen = set()
    train(base_cfg(tmp_path, deterministic=mode, checkpoint_every=every, max_tokens=128 * 4),
          TensorSource(X), callback=lambda t, step: seen.add(is_deterministic()))
    assert seen == {expect}
    assert not is_deterministic()  # restored after the run


def test_resume_inside_the_threshold_calibration_window_equals_uninterrupted_run(tmp_path):
    """Batch-rule SAEs calibrate their threshold on the run's last batches: a checkpoint taken among
    them must carry the ones already seen, or a resumed run calibrates on fewer and saves another threshold."""
    kw = dict(arch=("batchtopk", "mutual_choice"), checkpoint_every=5, epochs=2)
    src = TensorSource(X)
    full = train(base_cfg(tmp_path / "full", **kw), src)
    total = full["steps"]

    def kill(trainer, step):
        if step == total - 5:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(base_cfg(tmp_path / "cut", **kw), src, callback=kill)
    ckpt = json.loads((tmp_path / "cut" / "checkpoint" / "latest.json").read_text())
    assert total - 16 < ckpt["step"] < total - 1, "the checkpoint must fall inside the calibration window"
    train(base_cfg(tmp_path / "cut", **kw), src)
    wa, wb = weights(tmp_path / "full"), weights(tmp_path / "cut")
    assert wa.keys() == wb.keys() and len(wa) == 2
    for name in wa:
        for t in wa[name]:
            assert torch.equal(wa[name][t], wb[name][t]), f"{name}/{t} differs after resume"
