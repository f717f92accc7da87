"""SAELens files (`cfg.json` + `sae_weights.safetensors`) in and out.

Every SAELens inference rule that reads one token at a time maps *exactly* (same function, up to
float rounding) onto one of our classes, so an imported SAE runs on our sparse kernels and every
tool (evaluation, steering, export) treats it like one we trained:

    standard          relu(pre)                               -> ReLUSAE
    topk              relu(topk_k(pre))                       -> TopKSAE
    jumprelu          relu(pre) * (pre > threshold)           -> JumpReLUSAE
    batchtopk         saved as jumprelu, one shared threshold -> JumpReLUSAE
    gated             (gate_pre > 0) * relu(mag_pre)          -> JumpReLUSAE (below)

with `pre = (x - b_dec * apply_b_dec_to_input) @ W_enc + b_enc`. The parts that differ from our
layout are folded into the weights, in float64:
- `apply_b_dec_to_input = false`: our encoders always subtract b_dec, so b_enc += b_dec @ W_enc.
- gated: gate_pre = s @ W + b_gate, mag_pre = s @ (W * exp(r_mag)) + b_mag. Since
  exp(r_mag) > 0, gate_pre > 0 exactly when mag_pre > b_mag - exp(r_mag) * b_gate, so the gated
  SAE *is* a JumpReLU with W_enc * exp(r_mag), b_enc = b_mag and that threshold (clamped at 0,
  where relu already zeroes everything below). A separate gated class would duplicate the
  JumpReLU forward pass and need its own kernels path; the mapping gives identical codes.
- topk `rescale_acts_by_decoder_norm`: SAELens selects on pre * |W_dec row| and divides codes by
  the norm before decoding; folding the norms into W_enc, b_enc and W_dec is the same function.
- files we exported carry our config in `metadata.workbench_cfg`: when it computes what the file
  says, the SAE comes back as its own class (a BatchTopK stays a BatchTopK), tensors unchanged.
- legacy `scaling_factor` (fine-tuning scale of codes before decoding) folds into W_dec rows.
- `normalize_activations = "expected_average_only_in"`: the SAE expects `s * x`, with `s` kept
  outside the SAE files (SAELens's pretrained table); given `norm_scaling_factor=s` it is folded
  the way SAELens folds it. "constant_norm_rescale" and "layer_norm" rescale every token by its own
  statistics, which no fixed weights express: refused.
Pre-6.0 configs (metadata keys at the top level, `hook_point`, `activation_fn_str` "topk" with
`activation_fn_kwargs.k`, boolean `normalize_activations`) are read too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saes import JumpReLUSAE, ReLUSAE, SAEConfig, SparseAutoencoder, TopKSAE, build_sae
from saes.formats.common import (
    CFG_FILE,
    assemble,
    check_finite,
    check_shapes,
    get_bool,
    get_choice,
    get_int,
    get_str,
    read_json,
    read_tensors,
    require,
)
from saes.formats.export_rules import saelens_rule
from workbench.config import config_to_dict, load_config
from workbench.errors import WorkbenchError
from workbench.io import atomic_save_safetensors, atomic_write_json

WEIGHTS_FILE = "sae_weights.safetensors"
ARCHITECTURES = ("standard", "topk", "jumprelu", "gated", "batchtopk", "matryoshka_batchtopk")
NORMALIZATIONS = ("none", "expected_average_only_in")
_REFUSED_NORMALIZATIONS = ("constant_norm_rescale", "layer_norm")
# The format version we write: SAELens reads configs without a 6.x version as pre-6.0 ones.
WRITTEN_VERSION = "6.0.0"


def looks_like_saelens(directory: Path, cfg: dict[str, Any]) -> bool:
    return (directory / WEIGHTS_FILE).is_file() or "d_sae" in cfg


def _settings(raw: dict[str, Any], where: Path) -> dict[str, Any]:
    """The cfg.json of any SAELens version as one flat dict (6.x `metadata` merged over the top level)."""
    meta = raw.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        raise WorkbenchError(f"{where}: {CFG_FILE} metadata must be an object; got {meta!r}")
    flat = {**raw, **(meta or {})}
    flat.pop("metadata", None)
    if "hook_name" not in flat and "hook_point" in flat:  # before 6.0
        flat["hook_name"] = flat["hook_point"]
    if "hook_head_index" not in flat and "hook_point_head_index" in flat:
        flat["hook_head_index"] = flat["hook_point_head_index"]
    norm = flat.get("normalize_activations")
    if isinstance(norm, bool):  # before 6.0: true meant the April-update scaling
        flat["normalize_activations"] = "expected_average_only_in" if norm else "none"
    act = flat.get("activation_fn", flat.get("activation_fn_str"))
    kwargs = flat.get("activation_fn_kwargs") or {}
    if act == "topk" and isinstance(kwargs, dict) and "k" in kwargs and flat.get("architecture", "standard") == "standard":
        flat["architecture"], flat["k"] = "topk", kwargs["k"]
    elif act not in (None, "relu") and flat.get("architecture", "standard") == "standard":
        raise WorkbenchError(f"{where}: SAELens activation function {act!r} is not supported; supported: relu, "
                             f"topk (with activation_fn_kwargs.k)")
    return flat


def load_saelens(directory: Path, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 norm_scaling_factor: float | None = None) -> SparseAutoencoder:
    """One SAELens SAE directory as one of our SAEs, with SAELens's outputs."""
    where = directory
    raw = read_json(directory / CFG_FILE)
    s = _settings(raw, where)
    arch = get_choice(s, "architecture", where, "standard", ARCHITECTURES, "SAELens architecture")
    d_in, d_sae = get_int(s, "d_in", where), get_int(s, "d_sae", where)
    norm = get_choice(s, "normalize_activations", where, "none", NORMALIZATIONS + _REFUSED_NORMALIZATIONS,
                      "normalize_activations")
    if norm in _REFUSED_NORMALIZATIONS:
        raise WorkbenchError(
            f"{where}: normalize_activations {norm!r} rescales each token by its own statistics, which the "
            f"workbench's SAEs cannot express; supported: none, expected_average_only_in (with a norm scaling factor)"
        )
    if s.get("hook_head_index") is not None:
        raise WorkbenchError(f"{where}: SAEs on one attention head (hook_head_index={s['hook_head_index']!r}) "
                             f"are not supported; the workbench splices SAEs on whole hook points")
    apply_b_dec = get_bool(s, "apply_b_dec_to_input", where, True)
    k = get_int(s, "k", where) if arch == "topk" else None
    # Only SAELens's top-k family reads this flag (its other configs drop the key).
    rescale = arch in ("topk", "batchtopk", "matryoshka_batchtopk") and get_bool(
        s, "rescale_acts_by_decoder_norm", where, False)

    t = read_tensors(directory / WEIGHTS_FILE, torch.float64)
    shapes = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,),
              "threshold": (d_sae,), "log_threshold": (d_sae,), "b_gate": (d_sae,), "b_mag": (d_sae,),
              "r_mag": (d_sae,), "scaling_factor": (d_sae,), "topk_threshold": ()}
    check_shapes(t, shapes, where)
    check_finite(t, where, allow_inf=("threshold",))
    if arch == "gated":
        require(t, ("W_enc", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec"), where)
        gain = t["r_mag"].exp()
        w = {"W_enc": t["W_enc"] * gain, "b_enc": t["b_mag"], "W_dec": t["W_dec"], "b_dec": t["b_dec"],
             "threshold": t["b_mag"] - gain * t["b_gate"]}
    else:
        require(t, ("W_enc", "b_enc", "W_dec", "b_dec"), where)
        w = {n: t[n] for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
        if arch in ("jumprelu", "batchtopk", "matryoshka_batchtopk"):
            w["threshold"] = _threshold(t, d_sae, where)
    if rescale:  # SAELens selects on pre * |W_dec row| and decodes codes / |W_dec row|
        norms = w["W_dec"].norm(dim=1)
        w["W_enc"], w["b_enc"], w["W_dec"] = w["W_enc"] * norms, w["b_enc"] * norms, w["W_dec"] / norms[:, None]
    if "scaling_factor" in t:  # legacy fine-tuning scale of the codes before decoding
        w["W_dec"] = w["W_dec"] * t["scaling_factor"][:, None]
    scale = 1.0
    if norm == "expected_average_only_in":
        scale = _norm_factor(norm_scaling_factor, where)
        w["W_enc"], w["W_dec"], w["b_dec"] = w["W_enc"] * scale, w["W_dec"] / scale, w["b_dec"] / scale
    if not apply_b_dec:  # our encoders subtract b_dec: add it back inside the bias
        w["b_enc"] = w["b_enc"] + w["b_dec"] @ w["W_enc"]
    if "threshold" in w:  # relu zeroes everything at or below 0, so a negative threshold acts as 0
        w["threshold"] = w["threshold"].clamp_min(0)
    check_finite(w, where, allow_inf=("threshold",))
    if apply_b_dec and scale == 1.0 and not rescale and "scaling_factor" not in t:
        ours = _our_export(s, w, arch, device, dtype)
        if ours is not None:
            return ours
    cls = {"standard": ReLUSAE, "topk": TopKSAE}.get(arch, JumpReLUSAE)
    source = {"format": "saelens", "path": str(directory), "architecture": arch, "cfg": raw}
    return assemble(cls, w, k=k, hook=get_str(s, "hook_name", where), model_id=get_str(s, "model_name", where),
                    input_scale=scale, source=source, device=device, dtype=dtype)


def _our_export(s: dict[str, Any], w: dict[str, Tensor], arch: str, device: torch.device | str,
                dtype: torch.dtype) -> SparseAutoencoder | None:
    """The SAE we exported, rebuilt as its own class and config (so a BatchTopK comes back a BatchTopK).

    Only when the recorded config computes what the file says (same SAELens rule, sizes and k);
    otherwise None, and the file is read like any SAELens file.
    """
    raw = s.get("workbench_cfg")
    if s.get("exported_by") != "sae-workbench" or not isinstance(raw, dict):
        return None
    try:
        sae = build_sae(load_config(SAEConfig, raw), device=device, dtype=dtype)
        if (saelens_rule(sae) != arch or (arch == "topk" and sae.cfg.k != s.get("k"))
                or sae.cfg.hook != (s.get("hook_name") or "")):
            return None
        sae.load_weight_tensors({n: v.to(device=device, dtype=dtype) for n, v in w.items()})
    except (WorkbenchError, TypeError, ValueError):  # a damaged record: read the file as SAELens says
        return None
    sae.eval()
    return sae


def _threshold(t: dict[str, Tensor], d_sae: int, where: Path) -> Tensor:
    if "threshold" in t:
        return t["threshold"]
    if "log_threshold" in t:  # older JumpReLU files
        return t["log_threshold"].exp()
    if "topk_threshold" in t:  # a BatchTopK training checkpoint: one threshold for every feature
        return t["topk_threshold"].expand(d_sae).clone()
    raise WorkbenchError(f"{where}: a JumpReLU / BatchTopK SAE needs a threshold, log_threshold or topk_threshold "
                         f"tensor; the weights hold {sorted(t)}")


def _norm_factor(factor: float | None, where: Path) -> float:
    if factor is None:
        raise WorkbenchError(
            f"{where}: normalize_activations 'expected_average_only_in' needs the dataset's norm scaling factor, "
            f"which SAELens keeps outside the SAE files; pass norm_scaling_factor (--norm-scaling-factor)"
        )
    if not isinstance(factor, (int, float)) or isinstance(factor, bool) or not 0 < float(factor) < float("inf"):
        raise WorkbenchError(f"norm scaling factor must be a positive finite number; got {factor!r}")
    return float(factor)


# The metadata a SAELens 6 training run writes (`LanguageModelSAETrainingRunner._set_sae_metadata`,
# `SAEMetadata`'s two version fields, and the training architecture with its training-only settings
# that `save_inference_model` adds), in that order. SAELens's `ActivationsStore.from_sae`
# (and so SAEBench) reads model_name, hook_name, context_size, prepend_bos, seqpos_slice,
# dataset_path and the separator settings from here, and refuses a file without prepend_bos.
SAELENS_METADATA_KEYS = (
    "sae_lens_version", "sae_lens_training_version", "dataset_path", "hook_name", "model_name",
    "model_class_name", "hook_head_index", "context_size", "seqpos_slice", "model_from_pretrained_kwargs",
    "prepend_bos", "exclude_special_tokens", "sequence_separator_token", "disable_concat_sequences",
    "training_architecture", "training_architecture_details",
)
# Our architectures under SAELens's name for them, where it has one (else ours is written).
_SAELENS_TRAINING_NAMES = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu", "batchtopk": "batchtopk",
                           "gated": "gated"}
# SAEConfig fields the SAELens cfg already holds (or that are not settings): the rest are training-only.
_INFERENCE_FIELDS = ("architecture", "d_in", "num_features", "k", "hook", "model_id", "dtype", "train",
                     "format_version", "input_scale")


def _recorded_cache(sae: SparseAutoencoder, cache: str | Path | None) -> dict[str, Any] | None:
    """The manifest of the cache `sae` was trained on: `cache` if given (it must be one), else the one
    its training record names, when that path still holds a manifest (relative paths: from here)."""
    if cache is not None:
        path = Path(cache)
        if not (path / "manifest.json").is_file():
            raise WorkbenchError(f"{str(path)!r} is not an activation cache (no manifest.json); give the cache the "
                                 f"SAE was trained on, or none")
        return read_json(path / "manifest.json")
    recorded = (sae.cfg.train or {}).get("cache")
    if isinstance(recorded, str) and recorded and (Path(recorded) / "manifest.json").is_file():
        try:
            return read_json(Path(recorded) / "manifest.json")
        except WorkbenchError:  # a damaged record: write what the SAE alone knows
            return None
    return None


def saelens_metadata(sae: SparseAutoencoder, cache: str | Path | None = None) -> dict[str, Any]:
    """Every metadata field a SAELens 6 save writes, from what the SAE and its training cache know.

    From the cache's manifest: `context_size` (our context_length counts BOS, as SAELens's does),
    `prepend_bos` (the model's prefix is BOS), `exclude_special_tokens` (the prefix/suffix ids,
    never stored, so never trained on), `sequence_separator_token` (the id stored between packed
    documents), `disable_concat_sequences` (False: documents are packed), `dataset_path` (the corpus).
    Without a cache, the metadata of an SAE we imported from SAELens, else None (SAELens's "not
    known"): such a file loads in SAELens, but its ActivationsStore then asks for them.
    """
    imported = (sae.cfg.train or {}).get("imported_from") or {}
    src = imported.get("cfg") if imported.get("format") == "saelens" and isinstance(imported.get("cfg"), dict) else {}
    known: dict[str, Any] = dict(_settings(src, Path(str(imported.get("path", "?"))))) if src else {}
    meta: dict[str, Any] = {k: known.get(k) for k in SAELENS_METADATA_KEYS}
    meta.update({
        "sae_lens_version": WRITTEN_VERSION, "sae_lens_training_version": WRITTEN_VERSION,
        "hook_name": sae.cfg.hook, "model_name": sae.cfg.model_id or known.get("model_name"),
        "model_class_name": known.get("model_class_name") or "HookedTransformer", "hook_head_index": None,
        "seqpos_slice": known.get("seqpos_slice") or [None],  # every position of the context
        "training_architecture": (known.get("training_architecture") if src else None)
        or _SAELENS_TRAINING_NAMES.get(sae.architecture, sae.architecture),
        "training_architecture_details": (known.get("training_architecture_details") if src else None)
        or {k: v for k, v in config_to_dict(sae.cfg).items() if k not in _INFERENCE_FIELDS},
    })
    m = _recorded_cache(sae, cache)
    if m is not None:
        tok = m.get("tokenizer") or {}
        prefix, suffix = list(tok.get("prefix_ids") or []), list(tok.get("suffix_ids") or [])
        corpus = m.get("corpus") or {}
        meta.update({
            "dataset_path": corpus.get("id") if isinstance(corpus, dict) else corpus,
            "context_size": m.get("context_length"),
            "prepend_bos": bool(prefix),
            "exclude_special_tokens": sorted(set(prefix) | set(suffix)) or False,
            "sequence_separator_token": tok.get("separator_id"),
            "disable_concat_sequences": False,
            "model_from_pretrained_kwargs": {},  # activations of the model as loaded, no weight processing
        })
    return meta


def export_saelens(sae: SparseAutoencoder, directory: str | Path, *, cache: str | Path | None = None) -> Path:
    """Write `sae` as a SAELens 6 directory that SAELens's `SAE.load_from_disk` reads with our outputs.

    `cache`: the activation cache the SAE was trained on (default: the one its training record
    names), for the metadata SAELens's activation store needs (`saelens_metadata`).
    """
    arch = saelens_rule(sae)
    d = Path(directory)
    tensors = {n: t.detach().cpu().contiguous() for n, t in sae.weight_tensors().items()
               if n in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")}
    if arch != "jumprelu":
        tensors.pop("threshold", None)
    elif "threshold" not in tensors:
        raise WorkbenchError(f"a {sae.architecture!r} SAE declares a threshold rule but saves no threshold tensor; "
                             f"it cannot be written as a SAELens jumprelu")
    meta = saelens_metadata(sae, cache)
    meta.update({"exported_by": "sae-workbench", "workbench_cfg": config_to_dict(sae.cfg)})
    cfg: dict[str, Any] = {
        "architecture": arch, "d_in": sae.d_in, "d_sae": sae.num_features,
        "dtype": str(tensors["W_dec"].dtype).removeprefix("torch."), "device": "cpu",
        "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
        "metadata": meta,
    }
    if arch == "topk":
        cfg["k"] = sae.cfg.k
        cfg["rescale_acts_by_decoder_norm"] = False
    d.mkdir(parents=True, exist_ok=True)
    atomic_save_safetensors(d / WEIGHTS_FILE, tensors)
    atomic_write_json(d / CFG_FILE, cfg)  # last: its presence marks a complete SAE
    return d
