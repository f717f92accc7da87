"""SAELens files: every architecture loads with SAELens's outputs; ours export and load back exactly."""

from __future__ import annotations

import pytest
import torch
from peers import (
    random_weights,
    read_dir,
    relu_topk,
    saelens_cfg,
    saelens_forward,
    saelens_legacy_cfg,
    write_dir,
)

from saes import SAEConfig, build_sae
from saes.formats import export_saelens, load_any
from workbench.errors import WorkbenchError

W = "sae_weights.safetensors"
D, F = 12, 40


def x_batch(n: int = 64, seed: int = 7) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


def assert_matches(sae, cfg, tensors, x, scale: float = 1.0, *, atol: float = 1e-10) -> None:
    """Codes and reconstructions of our SAE equal SAELens's formula (float64 throughout)."""
    f_ref, x_hat_ref = saelens_forward(cfg, tensors, x, scale)
    codes = sae.encode(x.double())
    f = codes.to_dense()
    assert 0 < int((f_ref > 0).sum()) < f_ref.numel()  # a non-trivial code
    torch.testing.assert_close(f, f_ref, atol=atol, rtol=0)
    torch.testing.assert_close(sae.decode(codes), x_hat_ref, atol=atol, rtol=0)


def with_threshold(t, seed=3):
    g = torch.Generator().manual_seed(seed)
    return {**t, "threshold": torch.rand(F, generator=g) * 0.3}


CASES = {
    "standard": (lambda: saelens_cfg("standard", D, F), lambda t: t),
    "topk": (lambda: saelens_cfg("topk", D, F, k=5), lambda t: t),
    "topk_rescaled": (lambda: saelens_cfg("topk", D, F, k=5, rescale_acts_by_decoder_norm=True), lambda t: t),
    "jumprelu": (lambda: saelens_cfg("jumprelu", D, F), with_threshold),
    "jumprelu_log_threshold": (
        lambda: saelens_cfg("jumprelu", D, F),
        lambda t: {**t, "log_threshold": torch.linspace(-4, -1, F)},
    ),
    "batchtopk_as_jumprelu": (lambda: saelens_cfg("jumprelu", D, F), lambda t: {**t, "threshold": torch.full((F,), 0.12)}),
    "no_b_dec_on_input": (lambda: saelens_cfg("jumprelu", D, F, apply_b_dec_to_input=False), with_threshold),
    "legacy_standard": (lambda: saelens_legacy_cfg(D, F), lambda t: t),
    "legacy_topk": (lambda: saelens_legacy_cfg(D, F, activation_fn_str="topk", activation_fn_kwargs={"k": 4}),
                    lambda t: t),
    "legacy_scaling_factor": (
        lambda: saelens_legacy_cfg(D, F, finetuning_scaling_factor=True),
        lambda t: {**t, "scaling_factor": torch.linspace(0.5, 2.0, F)},
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_saelens_file_gives_saelens_outputs(tmp_path, one_thread, case):
    make_cfg, add = CASES[case]
    cfg, tensors = make_cfg(), add(random_weights(D, F, seed=1))
    d = write_dir(tmp_path / case, cfg, tensors, W)
    sae = load_any(d, dtype=torch.float64)
    assert sae.cfg.hook == "blocks.1.hook_resid_post" and sae.cfg.model_id == "tiny"
    assert sae.cfg.train["imported_from"]["format"] == "saelens"
    assert_matches(sae, cfg, tensors, x_batch())


def test_gated_maps_exactly_onto_a_jumprelu(tmp_path, one_thread):
    t = random_weights(D, F, seed=2)
    g = torch.Generator().manual_seed(5)
    t = {"W_enc": t["W_enc"], "W_dec": t["W_dec"], "b_dec": t["b_dec"],
         "b_gate": torch.randn(F, generator=g) * 0.2, "b_mag": torch.randn(F, generator=g) * 0.2,
         "r_mag": torch.randn(F, generator=g) * 0.5}
    for apply in (True, False):
        cfg = saelens_cfg("gated", D, F, apply_b_dec_to_input=apply)
        d = write_dir(tmp_path / f"gated{apply}", cfg, t, W)
        assert_matches(load_any(d, dtype=torch.float64), cfg, t, x_batch(256))


def test_expected_average_scaling_is_folded_like_saelens(tmp_path, one_thread):
    cfg = saelens_cfg("topk", D, F, k=6, normalize_activations="expected_average_only_in")
    t = random_weights(D, F, seed=4)
    d = write_dir(tmp_path / "s", cfg, t, W)
    with pytest.raises(WorkbenchError, match="norm scaling factor"):
        load_any(d)
    sae = load_any(d, dtype=torch.float64, norm_scaling_factor=3.5)
    assert sae.cfg.input_scale == 3.5
    assert_matches(sae, cfg, t, x_batch(), scale=3.5)


def test_float32_load_is_close_to_the_formula(tmp_path, one_thread):
    cfg, t = saelens_cfg("topk", D, F, k=5), random_weights(D, F, seed=6)
    sae = load_any(write_dir(tmp_path / "s", cfg, t, W))
    assert sae.W_dec.dtype == torch.float32
    f_ref, x_hat_ref = saelens_forward(cfg, t, x_batch())
    codes = sae.encode(x_batch())
    torch.testing.assert_close(codes.to_dense().double(), f_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(sae.decode(codes).double(), x_hat_ref, atol=1e-5, rtol=0)


def ours(arch: str, seed: int = 0, **cfg_kw):
    sae = build_sae(SAEConfig(architecture=arch, d_in=D, num_features=F, k=5, hook="blocks.2.hook_resid_post",
                              model_id="tiny-model", **cfg_kw), generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(F, generator=g) * 0.1)
        sae.b_dec.copy_(torch.randn(D, generator=g) * 0.1)
        if "threshold" in sae.weight_tensors():
            sae.load_weight_tensors({**sae.weight_tensors(), "threshold": torch.rand(F, generator=g) * 0.2 + 0.01})
    return sae


@pytest.mark.parametrize("arch", ["topk", "relu", "jumprelu", "batchtopk"])
def test_export_then_load_round_trips_bit_exactly(tmp_path, one_thread, arch):
    sae = ours(arch)
    d = export_saelens(sae, tmp_path / "out")
    cfg, tensors = read_dir(d, W)
    # The files alone, read with SAELens's formula, give our outputs.
    x = x_batch()
    f_ref, x_hat_ref = saelens_forward(cfg, tensors, x)
    codes = sae.encode(x)
    torch.testing.assert_close(codes.to_dense().double(), f_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(sae.decode(codes).double(), x_hat_ref, atol=1e-5, rtol=0)
    assert cfg["metadata"]["hook_name"] == "blocks.2.hook_resid_post" and cfg["metadata"]["model_name"] == "tiny-model"
    back = load_any(d)
    assert type(back) is type(sae) and back.cfg == sae.cfg  # our own class and config come back
    mine, theirs = sae.weight_tensors(), back.weight_tensors()
    for name in tensors:
        if name == "threshold" and hasattr(back, "log_threshold"):
            # JumpReLUSAE keeps log(threshold) (its training parameter), in our own format too:
            # exp(log(t)) can differ from t in the last bit.
            torch.testing.assert_close(theirs[name], mine[name], rtol=2.4e-7, atol=0)
        else:
            assert torch.equal(theirs[name], mine[name]), name
    back_codes = back.encode(x)
    assert torch.equal(back_codes.to_dense(), codes.to_dense())
    assert torch.equal(back.decode(back_codes), sae.decode(codes))
    # And a second export writes the same bytes.
    d2 = export_saelens(back, tmp_path / "again")
    assert (d2 / W).read_bytes() == (d / W).read_bytes()


def test_batch_rules_and_matching_pursuit_refuse_to_export(tmp_path):
    with pytest.raises(WorkbenchError, match="across the batch"):
        export_saelens(ours("batchtopk", inference="batch"), tmp_path / "a")
    with pytest.raises(WorkbenchError, match="cannot be written as SAELens"):
        export_saelens(ours("matching_pursuit"), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _bad(tmp_path, name, cfg, tensors=None):
    return write_dir(tmp_path / name, cfg, random_weights(D, F, 0) if tensors is None else tensors, W)


@pytest.mark.parametrize(
    "name, cfg_change, tensors_change, message",
    [
        ("arch", {"architecture": "transcoder"}, None, "unknown SAELens architecture 'transcoder'; valid choices"),
        ("d_sae", {"d_sae": -3}, None, "d_sae=-3 must be an integer >= 1"),
        ("d_in_str", {"d_in": "12"}, None, "d_in='12' must be an integer"),
        ("k_bool", {"architecture": "topk", "k": True}, None, "k=True must be an integer"),
        ("k_big", {"architecture": "topk", "k": F}, None, "k=40 must be at least 1 and below"),
        ("apply", {"apply_b_dec_to_input": "yes"}, None, "apply_b_dec_to_input='yes' must be true or false"),
        ("ln", {"normalize_activations": "layer_norm"}, None, "cannot express; supported: none"),
        ("norm", {"normalize_activations": "bogus"}, None, "unknown normalize_activations 'bogus'"),
        ("head", {"metadata": {"hook_name": "blocks.0.attn.hook_z", "hook_head_index": 2}}, None, "one attention head"),
        ("shape", {}, lambda t: {**t, "W_enc": t["W_enc"].t().contiguous()}, "tensor W_enc has shape (40, 12)"),
        ("nan", {}, lambda t: {**t, "b_enc": t["b_enc"].clone().fill_(float("nan"))}, "non-finite"),
        ("missing", {}, lambda t: {k: v for k, v in t.items() if k != "b_dec"}, "lack tensors ['b_dec']"),
        ("no_threshold", {"architecture": "jumprelu"}, None, "needs a threshold"),
        ("act", {"metadata": None, "activation_fn_str": "tanh-relu", "hook_point": "h"}, None, "'tanh-relu' is not"),
        ("meta", {"metadata": [1]}, None, "metadata must be an object"),
    ],
)
def test_bad_saelens_files_give_one_clear_line(tmp_path, name, cfg_change, tensors_change, message):
    cfg = {**saelens_cfg("standard", D, F), **cfg_change}
    t = random_weights(D, F, 0)
    d = _bad(tmp_path, name, cfg, tensors_change(t) if tensors_change else t)
    with pytest.raises(WorkbenchError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")) as e:
        load_any(d)
    assert "\n" not in str(e.value)


def test_missing_weights_and_bad_json_give_one_line(tmp_path):
    d = _bad(tmp_path, "w", saelens_cfg("standard", D, F))
    (d / W).unlink()
    with pytest.raises(WorkbenchError, match=f"has cfg.json but no {W}"):
        load_any(d)
    (d / "cfg.json").write_text("{not json")
    with pytest.raises(WorkbenchError, match="is not valid JSON"):
        load_any(d)
    d2 = _bad(tmp_path, "corrupt", saelens_cfg("standard", D, F))
    (d2 / W).write_bytes(b"\x00" * 20)
    with pytest.raises(WorkbenchError, match="not a readable safetensors file"):
        load_any(d2)


def test_relu_topk_reference_is_topk_then_relu():
    # Guard the test's own formula: picks the k largest, keeps only their positive parts.
    pre = torch.tensor([[3.0, -1.0, 2.0, -0.5]])
    assert relu_topk(pre, 3).tolist() == [[3.0, 0.0, 2.0, 0.0]]


@pytest.mark.parametrize("record", [
    {"architecture": "topk", "d_in": D, "num_features": F, "k": 5},   # disagrees with the file's jumprelu rule
    {"architecture": "batchtopk", "d_in": "12", "num_features": F},    # damaged
    {"architecture": "no-such-arch", "d_in": D, "num_features": F},
    [1, 2],
])
def test_a_wrong_or_damaged_export_record_falls_back_to_the_file(tmp_path, one_thread, record):
    sae = ours("batchtopk")
    d = export_saelens(sae, tmp_path / "out")
    cfg, tensors = read_dir(d, W)
    cfg["metadata"]["workbench_cfg"] = record
    write_dir(d, cfg, tensors, W)
    back = load_any(d, dtype=torch.float64)
    assert back.cfg.train["imported_from"]["architecture"] == "jumprelu"  # read as the file says
    assert_matches(back, cfg, tensors, x_batch())
