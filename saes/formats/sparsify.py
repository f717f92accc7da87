"""EleutherAI sparsify files (`{run}/{hookpoint}/cfg.json` + `sae.safetensors`) in and out.

sparsify encodes `topk(relu((x - b_dec) @ encoder.weight.T + encoder.bias))` and decodes
`codes @ W_dec + b_dec`: our TopK SAE exactly, with the encoder stored in nn.Linear layout
`[num_latents, d_in]` (the transpose of our saved W_enc). Hook points are module paths of the
Hugging Face model: `layers.N` (its output is the residual stream after block N, our
`blocks.N.hook_resid_post`), `layers.N.mlp` (`hook_mlp_out`), `layers.N.self_attn` (`hook_attn_out`).

Refused, with one line each: transcoders (`transcode`: they read one hook point and write
another, which no SAE spliced at one hook does), `skip_connection` (a dense `W_skip` term our
decoders lack) and the `groupmax` activation (no selector of ours picks one feature per group).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from saes import SparseAutoencoder, TopKSAE
from saes.formats.common import (
    CFG_FILE,
    assemble,
    check_finite,
    check_shapes,
    get_bool,
    get_choice,
    get_int,
    read_json,
    read_tensors,
    require,
)
from saes.formats.export_rules import sparsify_rule
from workbench.errors import WorkbenchError
from workbench.io import atomic_save_safetensors, atomic_write_json

WEIGHTS_FILE = "sae.safetensors"
RUN_CONFIG = "config.json"  # sparsify's run-level training config (names the model)
ACTIVATIONS = ("topk", "groupmax")
# HF module path -> TransformerLens hook name; model prefixes ("model.", "gpt_neox.") are dropped.
_HOOKPOINT = re.compile(r"^(?:[A-Za-z_]+\.)*?(?:layers|h)\.(\d+)(?:\.(mlp|self_attn|attn|attention))?$")
_SUFFIX = {None: "hook_resid_post", "mlp": "hook_mlp_out", "self_attn": "hook_attn_out", "attn": "hook_attn_out",
           "attention": "hook_attn_out"}
_HOOK = re.compile(r"^blocks\.(\d+)\.(hook_resid_post|hook_mlp_out|hook_attn_out)$")
_MODULE = {"hook_resid_post": "", "hook_mlp_out": ".mlp", "hook_attn_out": ".self_attn"}


def looks_like_sparsify(cfg: dict[str, Any]) -> bool:
    return "num_latents" in cfg or "expansion_factor" in cfg


def hook_from_hookpoint(hookpoint: str) -> str:
    """`layers.10` -> `blocks.10.hook_resid_post`; an unrecognised module path is kept as it is."""
    m = _HOOKPOINT.match(hookpoint)
    return f"blocks.{m.group(1)}.{_SUFFIX[m.group(2)]}" if m else hookpoint


def hookpoint_from_hook(hook: str) -> str:
    """`blocks.10.hook_resid_post` -> `layers.10` (the folder name sparsify gives that SAE)."""
    m = _HOOK.match(hook)
    if not m:
        raise WorkbenchError(
            f"hook {hook!r} has no sparsify hookpoint name; sparsify names blocks.N.hook_resid_post, "
            f"blocks.N.hook_mlp_out and blocks.N.hook_attn_out (as layers.N, layers.N.mlp, layers.N.self_attn)"
        )
    return f"layers.{m.group(1)}{_MODULE[m.group(2)]}"


def load_sparsify(directory: Path, *, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> SparseAutoencoder:
    """One sparsify hookpoint folder as our TopK SAE, with sparsify's outputs."""
    where = directory
    raw = read_json(directory / CFG_FILE)
    act = get_choice(raw, "activation", where, "topk", ACTIVATIONS, "sparsify activation")
    if act != "topk":
        raise WorkbenchError(f"{where}: sparsify activation {act!r} is not supported (no selector of ours picks one "
                             f"feature per group); supported: topk")
    if get_bool(raw, "transcode", where, False):
        raise WorkbenchError(f"{where}: this is a sparsify transcoder (transcode=true): it reads one hook point and "
                             f"writes another, which an SAE spliced at one hook point cannot do")
    if get_bool(raw, "skip_connection", where, False):
        raise WorkbenchError(f"{where}: sparsify skip connections (skip_connection=true, a dense W_skip term) are not "
                             f"supported; the workbench's decoders are sparse codes @ W_dec + b_dec")
    d_in = get_int(raw, "d_in", where)
    f = get_int(raw, "num_latents", where, default=0, minimum=0)
    if f == 0:
        f = d_in * get_int(raw, "expansion_factor", where, default=32)
    k = get_int(raw, "k", where, default=32)
    t = read_tensors(directory / WEIGHTS_FILE, torch.float64)
    require(t, ("encoder.weight", "encoder.bias", "W_dec", "b_dec"), where)
    check_shapes(t, {"encoder.weight": (f, d_in), "encoder.bias": (f,), "W_dec": (f, d_in), "b_dec": (d_in,)}, where)
    check_finite(t, where)
    w = {"W_enc": t["encoder.weight"].t(), "b_enc": t["encoder.bias"], "W_dec": t["W_dec"], "b_dec": t["b_dec"]}
    hookpoint = directory.name
    source = {"format": "sparsify", "path": str(directory), "hookpoint": hookpoint, "cfg": raw}
    return assemble(TopKSAE, w, k=k, hook=hook_from_hookpoint(hookpoint), model_id=_run_model(directory),
                    source=source, device=device, dtype=dtype)


def _run_model(directory: Path) -> str:
    """The model a sparsify run trained on, from the run folder's config.json when it names one."""
    p = directory.parent / RUN_CONFIG
    try:
        model = read_json(p).get("model") if p.is_file() else None
    except WorkbenchError:
        return ""
    return model if isinstance(model, str) else ""


def export_sparsify(sae: SparseAutoencoder, run_dir: str | Path) -> Path:
    """Write `sae` into `run_dir/<hookpoint>/` as sparsify's `SparseCoder.load_many(run_dir)` expects it."""
    act = sparsify_rule(sae)
    d = Path(run_dir) / hookpoint_from_hook(sae.cfg.hook)
    w = sae.weight_tensors()
    f, d_in = sae.num_features, sae.d_in
    tensors = {"encoder.weight": w["W_enc"].t().contiguous(), "encoder.bias": w["b_enc"], "W_dec": w["W_dec"],
               "b_dec": w["b_dec"]}
    tensors = {n: v.detach().cpu().contiguous() for n, v in tensors.items()}
    cfg = {"activation": act, "expansion_factor": max(1, f // d_in), "normalize_decoder": True, "num_latents": f,
           "k": sae.cfg.k, "multi_topk": False, "skip_connection": False, "transcode": False, "d_in": d_in}
    d.mkdir(parents=True, exist_ok=True)
    atomic_save_safetensors(d / WEIGHTS_FILE, tensors)
    atomic_write_json(d / CFG_FILE, cfg)  # last: its presence marks a complete SAE
    return d
