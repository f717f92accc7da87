"""`sae train --whiten pca|zca`: the whitening is exact, folded exactly, and refused where it cannot be folded.

References are written in their own terms: "whitened" means the sample covariance of the
transformed held-out rows is the identity (numpy's np.cov, not our map); "folded exactly" means
the saved raw-input SAE picks the same features as the SAE that trained on whitened inputs and
its reconstruction equals that SAE's whitened reconstruction mapped back to raw space.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from harvesting import CacheWriter
from saes import TensorSource, TrainConfig, Trainer, load_sae
from saes.config import SAEConfig
from saes.registry import build_sae
from saes.whitening import fit_whitening, fold_whitening
from workbench.cli import main
from workbench.errors import WorkbenchError

pytestmark = pytest.mark.usefixtures("one_thread")

D = 12


def correlated(n: int, seed: int) -> torch.Tensor:
    """Rows with a far-from-identity covariance (variances over two orders of magnitude) and an offset."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(D, D, generator=torch.Generator().manual_seed(99)) * torch.logspace(0, -1, D)[:, None]
    return torch.randn(n, D, generator=g) @ mix + 3.0


FOLDABLE = ("topk", "batchtopk", "feature_choice", "mutual_choice", "relu", "jumprelu")


@pytest.mark.parametrize("kind", ["pca", "zca"])
@pytest.mark.parametrize("arch", FOLDABLE)
def test_folded_sae_matches_the_whitened_sae(arch, kind):
    gen = torch.Generator().manual_seed(1)
    sae = build_sae(SAEConfig(architecture=arch, d_in=D, num_features=48, k=4), generator=gen)
    with torch.no_grad():
        sae.b_enc.copy_(0.05 * torch.randn(48, generator=gen))
        sae.b_dec.copy_(0.1 * torch.randn(D, generator=gen))
    sae.eval()
    w = fit_whitening(correlated(4000, 2), kind)
    x = correlated(512, 3)
    u = w.apply(x)
    white_codes = sae.encode(u)
    ref = w.unapply(sae.decode(white_codes)).float()  # the whitened SAE's reconstruction, back in raw units
    folded = copy.deepcopy(sae)
    fold_whitening(folded, w)
    codes = folded.encode(x)
    assert torch.equal(codes.to_dense() > 0, white_codes.to_dense() > 0)
    x_hat = folded.decode(codes)
    rel = float((x_hat - ref).detach().norm() / ref.norm())
    assert rel <= 1e-5, rel
    assert folded.cfg.whiten == kind


def test_whitened_heldout_covariance_is_identity():
    train, held = correlated(20_000, 4), correlated(20_000, 5)
    assert np.abs(np.cov(held.numpy().T) - np.eye(D)).max() > 0.5  # far from white before
    for kind in ("pca", "zca"):
        w = fit_whitening(train, kind, eps=0.0)
        cov = np.cov(w.apply(held.double()).numpy().T)
        assert np.abs(cov - np.eye(D)).max() < 0.05, kind
    # zca stays nearest the input axes: each whitened coordinate correlates most with its own raw one
    z = fit_whitening(train, "zca", eps=0.0).apply(held.double()).numpy()
    c = np.corrcoef(np.concatenate([z, held.double().numpy()], 1).T)[:D, D:]
    assert (np.abs(c).argmax(1) == np.arange(D)).all()


def _cfg(out: Path, **kw) -> TrainConfig:
    base = dict(arch=("topk",), k=(3,), expansion=(2,), batch_size=128, out=str(out), progress=False,
                checkpoint_every=0, log_every=4, heldout_fraction=0.1, init_sample_tokens=2048, epochs=2)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("kind", ["pca", "zca"])
def test_trained_run_saves_a_raw_input_sae_equal_to_the_whitened_one(tmp_path, kind):
    x = correlated(6000, 6)
    t = Trainer(_cfg(tmp_path, whiten=kind), TensorSource(x))
    t.train()
    saved = load_sae(tmp_path / "x/topk-k3-x2")
    cfg = json.loads((tmp_path / "x/topk-k3-x2/cfg.json").read_text())
    assert cfg["whiten"] == kind and cfg["train"]["whiten"] == kind and cfg["train"]["whiten_source"] == "init"
    held = x[-600:]
    w = t.whitening["x"]
    live = t.slots[0].sae.eval()  # the SAE as trained: it takes scaled, whitened inputs
    white = live.encode(w.apply(held * t.scales["x"]))
    ref = w.rescaled(t.scales["x"]).unapply(live.decode(white)).float()
    codes = saved.encode(held)
    assert torch.equal(codes.to_dense() > 0, white.to_dense() > 0)
    assert float((saved.decode(codes) - ref).norm() / ref.norm()) <= 1e-5
    # the map is kept beside the run, in raw units: it whitens the held-out rows
    rec = load_file(str(tmp_path / "whitening" / "x.safetensors"))
    u = (held.double() - rec["mean"].double()) @ rec["matrix"].double()
    assert np.abs(np.cov(u.numpy().T) - np.eye(D)).max() < 0.3


def test_whitening_from_a_control_cache(tmp_path):
    ctrl = tmp_path / "ctrl"
    w = CacheWriter(ctrl, {"x": D}, "float32", shard_tokens=1000, header={"model": {"id": "m"}, "context_length": 20})
    xc = correlated(2000, 7) + 5.0  # another mean: the fit must come from here, not the training rows
    ids = torch.arange(2000)
    w.add({"x": xc}, {"token_ids": ids.to(torch.int32), "doc_ids": (ids // 100).to(torch.int32),
                      "context_ids": ids // 20, "positions": (ids % 20).to(torch.int32)}, contexts=100)
    w.finish()
    t = Trainer(_cfg(tmp_path / "run", whiten="pca", whiten_source=str(ctrl), max_tokens=256), TensorSource(correlated(3000, 8)))
    raw = t.whitening["x"].rescaled(t.scales["x"])
    assert torch.allclose(raw.mean.float(), xc.mean(0), atol=1e-4)
    with pytest.raises(WorkbenchError, match="neither 'init' nor a cache directory"):
        Trainer(_cfg(tmp_path / "run2", whiten="pca", whiten_source=str(tmp_path / "nope")), TensorSource(correlated(3000, 8)))


def test_refuses_an_architecture_it_cannot_fold():
    with pytest.raises(WorkbenchError, match="cannot be folded into matching_pursuit") as e:
        TrainConfig(arch=("topk", "matching_pursuit"), whiten="pca")
    assert "\n" not in str(e.value)
    TrainConfig(arch=("matching_pursuit",), whiten="none")


def test_bad_whiten_value_is_one_line_exit_2(tmp_path, capsys):
    rc = main(["train", "--cache", str(tmp_path), "--out", str(tmp_path / "o"), "--whiten", "bogus"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "'bogus'" in err[0] and "none, pca, zca" in err[0]


class _Stop(Exception):
    pass


def test_resumed_whitened_run_equals_uninterrupted(tmp_path):
    """The whitening is refitted on resume from the same rows: the resumed run ends bit-identical."""
    from safetensors.torch import load_file as load

    x = correlated(4000, 9)
    kw = dict(whiten="zca", checkpoint_every=5, epochs=1)
    Trainer(_cfg(tmp_path / "full", **kw), TensorSource(x)).train()

    def stop(trainer, step):
        if step == 7:
            raise _Stop

    with pytest.raises(_Stop):
        Trainer(_cfg(tmp_path / "cut", **kw), TensorSource(x), callback=stop).train()
    Trainer(_cfg(tmp_path / "cut", **kw), TensorSource(x)).train()
    a = load(str(tmp_path / "full/x/topk-k3-x2/sae.safetensors"))
    b = load(str(tmp_path / "cut/x/topk-k3-x2/sae.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
