"""The SAE directory format: round trips, folding of the input scale, errors on bad files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from saes import ARCHITECTURES, SAEConfig, build_sae, find_sae_dirs, load_sae, load_stats, save_sae
from workbench.errors import WorkbenchError

D, F, K = 12, 48, 4


def trained_like(arch: str, seed: int = 0):
    """An SAE with non-trivial weights, biases and (where it has one) threshold."""
    sae = build_sae(SAEConfig(architecture=arch, d_in=D, num_features=F, k=K, hook="blocks.0.hook_resid_post",
                              model_id="tiny"), generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        sae.enc_weight.add_(0.2 * torch.randn(F, D, generator=g))
        sae.b_enc.copy_(0.1 * torch.randn(F, generator=g))
        sae.b_dec.copy_(torch.randn(D, generator=g))
        if hasattr(sae, "threshold") and isinstance(sae.threshold, torch.Tensor) and arch != "jumprelu":
            sae.threshold.copy_(torch.rand(F, generator=g) * 0.3)
        if arch == "jumprelu":
            sae.log_threshold.copy_(torch.log(torch.rand(F, generator=g) * 0.3 + 0.05))
        if arch == "relu":
            sae.W_dec.mul_(torch.rand(F, 1, generator=g) + 0.5)
    return sae.eval()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_save_load_round_trip_gives_identical_outputs(arch, tmp_path):
    sae = trained_like(arch)
    stats = {"firing_counts": torch.arange(F, dtype=torch.long)}
    save_sae(sae, tmp_path / "s", stats)
    loaded = load_sae(tmp_path / "s")
    assert type(loaded) is type(sae) and loaded.cfg == sae.cfg
    x = torch.randn(33, D, generator=torch.Generator().manual_seed(5)) * 3
    with torch.no_grad():
        a, b = sae.encode(x), loaded.encode(x)
        assert torch.equal(a.to_dense(), b.to_dense())
        assert torch.equal(sae(x), loaded(x))
    tensors = load_file(str(tmp_path / "s" / "sae.safetensors"))
    assert tensors["W_enc"].shape == (D, F) and tensors["W_dec"].shape == (F, D)
    assert tensors["b_enc"].shape == (F,) and tensors["b_dec"].shape == (D,)
    has_threshold = arch in ("jumprelu", "batchtopk", "feature_choice", "mutual_choice")
    assert ("threshold" in tensors) == has_threshold
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    assert cfg["architecture"] == arch and cfg["d_in"] == D and cfg["num_features"] == F
    assert cfg["hook"] == "blocks.0.hook_resid_post" and cfg["model_id"] == "tiny"
    assert torch.equal(load_stats(tmp_path / "s")["firing_counts"], stats["firing_counts"])


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_folding_the_input_scale_keeps_choices_and_scales_outputs(arch):
    """An SAE trained on s*x, folded, takes raw x: same active features, codes and x_hat divided by s."""
    sae = trained_like(arch, seed=3)
    s = 7.5
    folded = trained_like(arch, seed=3)
    folded.fold_input_scale(s)
    x = torch.randn(40, D, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ref, got = sae.encode(x * s), folded.encode(x)
        assert torch.equal(ref.cols, got.cols), "folding changed which features are active"
        torch.testing.assert_close(got.vals, ref.vals / s, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(folded(x), sae(x * s) / s, rtol=1e-5, atol=1e-5)
    assert folded.cfg.input_scale == pytest.approx(s)
    if sae.unit_norm_decoder:
        assert torch.equal(folded.W_dec, sae.W_dec), "decoder rows should stay the unit directions"


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(WorkbenchError, match="does not exist"):
        load_sae(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WorkbenchError, match="no cfg.json"):
        load_sae(tmp_path / "empty")
    for i, arch in enumerate(("topk", "relu")):
        save_sae(trained_like(arch), tmp_path / "run" / f"a{i}")
    assert len(find_sae_dirs(tmp_path / "run")) == 2
    with pytest.raises(WorkbenchError, match=r"holds 2 SAEs; load one of: a0, a1"):
        load_sae(tmp_path / "run")
    cfg = json.loads((tmp_path / "run" / "a0" / "cfg.json").read_text())
    cfg["surprise"] = 1
    (tmp_path / "run" / "a0" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(WorkbenchError, match="no field"):
        load_sae(tmp_path / "run" / "a0")
    cfg.pop("surprise")
    cfg["num_features"] = F + 1
    (tmp_path / "run" / "a0" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(WorkbenchError, match=r"W_enc has shape \(12, 48\); cfg.json implies \(12, 49\)"):
        load_sae(tmp_path / "run" / "a0")
