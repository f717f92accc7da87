"""Writers of the peers' file layouts and their encode/decode formulas, written from their
documented definitions (EVALS_AND_STEERING.md), independent of saes.formats, so a bug shared by
our reader and our writer cannot pass the tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor


def write_dir(d: Path, cfg: dict, tensors: dict[str, Tensor], weights: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    save_file({n: t.contiguous() for n, t in tensors.items()}, str(d / weights))
    (d / "cfg.json").write_text(json.dumps(cfg))
    return d


def read_dir(d: Path, weights: str) -> tuple[dict, dict[str, Tensor]]:
    return json.loads((d / "cfg.json").read_text()), load_file(str(d / weights))


def saelens_cfg(arch: str, d_in: int, d_sae: int, hook: str = "blocks.1.hook_resid_post", **extra) -> dict:
    """A SAELens 6 cfg.json (metadata nested)."""
    return {"architecture": arch, "d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu",
            "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
            "metadata": {"model_name": "tiny", "hook_name": hook, "hook_head_index": None,
                         "sae_lens_version": "6.5.0", "context_size": 128, "prepend_bos": True},
            **extra}


def saelens_legacy_cfg(d_in: int, d_sae: int, hook: str = "blocks.1.hook_resid_post", **extra) -> dict:
    """A pre-6.0 cfg.json: metadata at the top level, `hook_point`, no architecture key."""
    return {"d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu", "model_name": "tiny",
            "hook_point": hook, "hook_point_layer": 1, "hook_point_head_index": None, "context_size": 128,
            "activation_fn_str": "relu", "apply_b_dec_to_input": True, "normalize_activations": False,
            "sae_lens_training_version": "3.12.0", **extra}


def random_weights(d_in: int, d_sae: int, seed: int) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "W_enc": torch.randn(d_in, d_sae, generator=g) / d_in**0.5,
        "b_enc": torch.randn(d_sae, generator=g) * 0.1,
        "W_dec": torch.randn(d_sae, d_in, generator=g) / d_in**0.5,
        "b_dec": torch.randn(d_in, generator=g) * 0.1,
    }


def relu_topk(pre: Tensor, k: int) -> Tensor:
    v, i = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, i, v.relu())


def saelens_forward(cfg: dict, t: dict[str, Tensor], x: Tensor, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """SAELens's encode and decode in float64, for the cfg keys the tests use."""
    t = {n: v.double() for n, v in t.items()}
    arch = cfg.get("architecture", "standard")
    if arch == "standard" and cfg.get("activation_fn_str") == "topk":
        arch = "topk"
    x = x.double() * scale  # expected_average_only_in: the SAE sees the scaled input
    s = x - t["b_dec"] * float(cfg.get("apply_b_dec_to_input", True))
    if arch == "gated":
        gate = (s @ t["W_enc"] + t["b_gate"] > 0).double()
        f = gate * (s @ (t["W_enc"] * t["r_mag"].exp()) + t["b_mag"]).relu()
    else:
        pre = s @ t["W_enc"] + t["b_enc"]
        norms = t["W_dec"].norm(dim=-1)
        if cfg.get("rescale_acts_by_decoder_norm"):
            pre = pre * norms
        if arch == "standard":
            f = pre.relu()
        elif arch == "topk":
            k = cfg.get("k") or cfg["activation_fn_kwargs"]["k"]
            f = relu_topk(pre, k)
        else:  # jumprelu and BatchTopK saved as jumprelu
            th = t["threshold"] if "threshold" in t else t["log_threshold"].exp()
            f = (pre > th).double() * pre.relu()
    g = f / t["W_dec"].norm(dim=-1) if cfg.get("rescale_acts_by_decoder_norm") else f
    if "scaling_factor" in t:
        g = g * t["scaling_factor"]
    x_hat = (g @ t["W_dec"] + t["b_dec"]) / scale
    return f, x_hat


def sparsify_forward(cfg: dict, t: dict[str, Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    """sparsify: topk(relu((x - b_dec) W^T + b)), decoded as codes @ W_dec + b_dec (float64)."""
    t = {n: v.double() for n, v in t.items()}
    pre = torch.nn.functional.linear(x.double() - t["b_dec"], t["encoder.weight"], t["encoder.bias"]).relu()
    v, i = pre.topk(cfg["k"], dim=-1)
    f = torch.zeros_like(pre).scatter(-1, i, v)
    return f, f @ t["W_dec"] + t["b_dec"]
