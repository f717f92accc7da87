"""sparsify files: hookpoint folders load as our TopK SAE with sparsify's outputs; export round-trips."""

from __future__ import annotations

import json

import pytest
import torch
from peers import read_dir, sparsify_forward, write_dir

from saes import SAEConfig, build_sae
from saes.formats import export_sparsify, find_any, hook_from_hookpoint, hookpoint_from_hook, load_any
from workbench.errors import WorkbenchError

W = "sae.safetensors"
D, F, K = 10, 30, 4


def sparsify_cfg(**extra) -> dict:
    return {"activation": "topk", "expansion_factor": 3, "normalize_decoder": True, "num_latents": 0, "k": K,
            "multi_topk": False, "skip_connection": False, "transcode": False, "d_in": D, **extra}


def sparsify_weights(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"encoder.weight": torch.randn(F, D, generator=g) / D**0.5, "encoder.bias": torch.randn(F, generator=g) * 0.1,
            "W_dec": torch.randn(F, D, generator=g) / D**0.5, "b_dec": torch.randn(D, generator=g) * 0.1}


def x_batch(n: int = 64) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(11))


def test_run_folder_loads_every_hookpoint_with_sparsify_outputs(tmp_path, one_thread):
    run = tmp_path / "run"
    (run).mkdir()
    (run / "config.json").write_text(json.dumps({"model": "EleutherAI/tiny", "batch_size": 8}))
    written = {}
    for i, name in enumerate(["layers.0", "layers.2.mlp", "layers.1"]):
        written[name] = (sparsify_cfg(), sparsify_weights(seed=i))
        write_dir(run / name, *written[name], W)
    found = find_any(run, dtype=torch.float64)
    assert list(found) == ["layers.0", "layers.1", "layers.2.mlp"]
    hooks = {n: s.cfg.hook for n, s in found.items()}
    assert hooks == {"layers.0": "blocks.0.hook_resid_post", "layers.1": "blocks.1.hook_resid_post",
                     "layers.2.mlp": "blocks.2.hook_mlp_out"}
    for name, sae in found.items():
        assert sae.cfg.model_id == "EleutherAI/tiny" and sae.num_features == F and sae.cfg.k == K
        f_ref, x_hat_ref = sparsify_forward(*written[name], x_batch())
        codes = sae.encode(x_batch().double())
        torch.testing.assert_close(codes.to_dense(), f_ref, atol=1e-10, rtol=0)
        torch.testing.assert_close(sae.decode(codes), x_hat_ref, atol=1e-10, rtol=0)
        assert int((f_ref > 0).sum()) > 0


@pytest.mark.parametrize("hookpoint, hook", [
    ("layers.10", "blocks.10.hook_resid_post"), ("model.layers.3", "blocks.3.hook_resid_post"),
    ("gpt_neox.layers.5", "blocks.5.hook_resid_post"), ("h.4", "blocks.4.hook_resid_post"),
    ("layers.7.mlp", "blocks.7.hook_mlp_out"), ("layers.7.self_attn", "blocks.7.hook_attn_out"),
    ("embed_tokens", "embed_tokens"),
])
def test_hookpoint_names(hookpoint, hook):
    assert hook_from_hookpoint(hookpoint) == hook


def test_export_round_trips_bit_exactly_and_reads_with_sparsify_formula(tmp_path, one_thread):
    sae = build_sae(SAEConfig(architecture="topk", d_in=D, num_features=F, k=K, hook="blocks.3.hook_resid_post"),
                    generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
        sae.b_dec.normal_(0, 0.1, generator=torch.Generator().manual_seed(2))
    d = export_sparsify(sae, tmp_path / "run")
    assert d == tmp_path / "run" / "layers.3"
    cfg, tensors = read_dir(d, W)
    assert sorted(tensors) == ["W_dec", "b_dec", "encoder.bias", "encoder.weight"]
    assert tuple(tensors["encoder.weight"].shape) == (F, D) and cfg["num_latents"] == F and cfg["d_in"] == D
    f_ref, x_hat_ref = sparsify_forward(cfg, tensors, x_batch())
    codes = sae.encode(x_batch())
    torch.testing.assert_close(codes.to_dense().double(), f_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(sae.decode(codes).double(), x_hat_ref, atol=1e-5, rtol=0)
    back = load_any(d)
    assert back.cfg.hook == sae.cfg.hook and back.cfg.k == K
    for name, t in sae.weight_tensors().items():
        assert torch.equal(back.weight_tensors()[name], t), name
    assert torch.equal(back.decode(back.encode(x_batch())), sae.decode(codes))


def test_sparsify_export_refusals(tmp_path):
    relu = build_sae(SAEConfig(architecture="relu", d_in=D, num_features=F, hook="blocks.0.hook_resid_post"))
    with pytest.raises(WorkbenchError, match="cannot be written as sparsify"):
        export_sparsify(relu, tmp_path)
    odd = build_sae(SAEConfig(architecture="topk", d_in=D, num_features=F, k=K, hook="blocks.0.ln1.hook_normalized"))
    with pytest.raises(WorkbenchError, match="has no sparsify hookpoint name"):
        export_sparsify(odd, tmp_path)
    assert hookpoint_from_hook("blocks.2.hook_attn_out") == "layers.2.self_attn"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("change, weights, message", [
    ({"transcode": True}, None, "transcoder"),
    ({"skip_connection": True}, None, "skip connections"),
    ({"activation": "groupmax"}, None, "'groupmax' is not supported"),
    ({"activation": "softmax"}, None, "unknown sparsify activation 'softmax'"),
    ({"num_latents": 31}, None, r"tensor encoder.weight has shape \(30, 10\); cfg.json implies \(31, 10\)"),
    ({"k": -1}, None, "k=-1 must be an integer >= 1"),
    ({"k": 30}, None, "k=30 must be at least 1 and below"),
    ({"d_in": None}, None, "d_in=None must be an integer"),
    ({}, lambda t: {n: v for n, v in t.items() if n != "W_dec"}, r"lack tensors \['W_dec'\]"),
    ({}, lambda t: {**t, "encoder.weight": t["encoder.weight"].t().contiguous()}, "encoder.weight has shape"),
])
def test_bad_sparsify_files_give_one_clear_line(tmp_path, change, weights, message):
    t = sparsify_weights(0)
    d = write_dir(tmp_path / "layers.1", {**sparsify_cfg(), **change}, weights(t) if weights else t, W)
    with pytest.raises(WorkbenchError, match=message) as e:
        load_any(d)
    assert "\n" not in str(e.value)
