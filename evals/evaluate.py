"""`evaluate`: every measure of one SAE, from a cache (reconstruction, health, probing) and a model (spliced loss).

    from evals import evaluate
    r = evaluate("cache/saes/run1/topk_k32_x8", cache="cache/acts", model="smollm2-135m")
    print(r)                 # a table; in a notebook `r` renders as HTML
    r.save("cache/saes/run1/topk_k32_x8")    # eval.json (+ per-feature tensors)

The held-out split is the one training used (the SAE's `heldout_fraction`, else 1%): the last
contexts of the cache, documents the SAE never saw. The spliced evaluation runs on those same
held-out contexts, rebuilt from the cache's token ids, or on any corpus given by name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from evals.cache_pass import cache_pass
from evals.contexts import cache_contexts, corpus_contexts
from evals.health import weight_stats
from evals.loading import load_for_eval
from evals.probing import KS, DocPool, cache_labels, sparse_probing
from evals.result import EvalResult
from evals.splice import SPLICE_POSITIONS, VARIANTS, spliced_losses
from harvesting import CacheReader
from workbench.device import resolve_device
from workbench.errors import WorkbenchError


@dataclass
class EvalConfig:
    """How to evaluate. Every field is also a `sae eval` flag."""

    cache: str = field(default="", metadata={"help": "activation cache with the SAE's hook point (held-out tokens, contexts, documents)"})
    model: str = field(default="", metadata={"help": "model for the spliced loss (default: the cache's model; 'none' skips it)"})
    corpus: str = field(default="", metadata={"help": "score the spliced loss on this corpus instead of the cache's held-out contexts"})
    heldout_fraction: float = field(default=0.0, metadata={"help": "held-out fraction of the cache (0 = the one the SAE was trained with, else 0.01)"})
    max_tokens: int = field(default=0, metadata={"help": "at most this many held-out tokens for reconstruction (0 = all)"})
    ce_contexts: int = field(default=160, metadata={"help": "contexts for the spliced loss (SAEBench: 10 batches of 16)"})
    batch_contexts: int = field(default=0, metadata={"help": "contexts per stacked forward pass (0 = fit the logits in about 1 GiB; 8 GiB on CUDA)"})
    context_length: int = field(default=128, metadata={"help": "tokens per context when packing --corpus"})
    batch_size: int = field(default=4096, metadata={"help": "tokens per SAE batch in cache passes"})
    density_split: Literal["heldout", "all"] = field(default="all", metadata={"help": "cache split for feature densities: all (every cached token: rare features need many tokens to be seen) or heldout"})
    error_term: bool = field(default=True, metadata={"help": "also splice x_hat + (x - x_hat), computed in the activation dtype as users do; reports its distance from clean"})
    splice_positions: Literal["text", "all"] = field(default="text", metadata={"help": "where the SAE replaces the activation: text (every token but BOS, EOS, padding; SAEBench with exclude_special_tokens_from_reconstruction=True) or all (BOS and separators too; SAEBench's default False). Ablations always cover every position; loss is always scored at text positions"})
    probing: bool = field(default=True, metadata={"help": "sparse probing on the corpus's document labels (wiki-vital topics)"})
    probe_max_per_class: int = field(default=300, metadata={"help": "positives per one-vs-rest probing task (as many negatives)"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:N (auto: cuda if present)"})
    seed: int = field(default=0, metadata={"help": "seed of the probing tasks"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})


def _sae_info(sae, path: Path | None) -> dict[str, Any]:
    cfg = sae.cfg
    return {"name": path.name if path else type(sae).__name__, "dir": str(path) if path else None,
            "architecture": sae.architecture, "hook": cfg.hook, "model_id": cfg.model_id, "d_in": sae.d_in,
            "num_features": sae.num_features, "k": getattr(cfg, "k", None)}


def check_fits_model(sae, lm, hook: str) -> None:
    """The SAE must read a hook point the model has, at the model's width."""
    lm.check_hooks([hook])
    if lm.d_model != sae.d_in:
        raise WorkbenchError(f"the SAE takes d_in={sae.d_in} at {hook}, but {lm.model_id} has d_model={lm.d_model}; "
                             f"it was trained on another model")


def check_fits_cache(sae, reader: CacheReader, hook: str) -> None:
    """The cache must hold the SAE's hook point, at the SAE's width."""
    if not hook:
        raise WorkbenchError("the SAE's cfg.json names no hook point; cannot find its activations in the cache")
    if hook not in reader.hooks:
        raise WorkbenchError(f"the SAE reads {hook}, which the cache at {str(reader.path)!r} lacks; it has "
                             f"{', '.join(reader.hooks)}")
    if reader.d_model(hook) != sae.d_in:
        raise WorkbenchError(f"the SAE takes d_in={sae.d_in} at {hook}, but the cache at {str(reader.path)!r} has "
                             f"d_model={reader.d_model(hook)} there; it was trained on another model")


def _auto_batch_contexts(lm, length: int, variants: int, device: torch.device) -> int:
    vocab = int(getattr(lm.bridge.cfg, "d_vocab", 0) or len(lm.tokenizer))
    budget = (8 if device.type == "cuda" else 1) * 2**30
    per_context = variants * length * vocab * 4 * 3  # logits, log-probs, one temporary
    return max(1, budget // per_context)


def evaluate(sae, cache: str | Path | CacheReader | None = None, model: Any = None, *,
             config: EvalConfig | None = None, **overrides: Any) -> EvalResult:
    """Evaluate one SAE (an SAE object or a directory) on a cache and, spliced in, on a model.

    `model`: a LoadedModel, a model name, "none" (no spliced loss), or None (the cache's own model).

    `overrides` set fields of `EvalConfig` (e.g. `ce_contexts=32, probing=False`).
    """
    cfg = config or EvalConfig()
    unknown = sorted(set(overrides) - set(cfg.__dataclass_fields__))
    if unknown:
        raise WorkbenchError(f"evaluate() got unknown option(s) {unknown}; valid: {', '.join(cfg.__dataclass_fields__)}")
    cfg = dataclasses.replace(cfg, **overrides)
    if cfg.density_split not in ("heldout", "all"):
        raise WorkbenchError(f"unknown density split {cfg.density_split!r}; valid choices: heldout, all")
    if cfg.splice_positions not in SPLICE_POSITIONS:
        raise WorkbenchError(f"unknown splice positions {cfg.splice_positions!r}; valid choices: "
                             f"{', '.join(SPLICE_POSITIONS)}")
    device = resolve_device(cfg.device)
    path = None
    if isinstance(sae, (str, Path)):
        path = Path(sae)
        sae = load_for_eval(path, device=device)
    sae = sae.to(device).eval()
    hook = sae.cfg.hook
    result = EvalResult(sae=_sae_info(sae, path), settings={k: getattr(cfg, k) for k in cfg.__dataclass_fields__})
    reader = cache if isinstance(cache, CacheReader) or cache is None else CacheReader(cache)
    if reader is None and cfg.cache:
        reader = CacheReader(cfg.cache)
    frac = cfg.heldout_fraction or float((sae.cfg.train or {}).get("heldout_fraction") or 0.01)
    result.settings["heldout_fraction"] = frac

    w_summary, w_per = weight_stats(sae.W_enc, sae.W_dec)
    result.weights = w_summary
    result.per_feature.update(w_per)

    # Every check that the SAE fits the cache and the model comes before any long pass.
    if reader is not None:
        check_fits_cache(sae, reader, hook)
    lm = _model(model, cfg, reader, device)
    if lm is not None:
        check_fits_model(sae, lm, hook)

    mean = None
    if reader is not None:
        res = cache_pass(sae, reader, hook, split="heldout", heldout_fraction=frac, batch_size=cfg.batch_size,
                         max_tokens=cfg.max_tokens, device=device, progress=cfg.progress)
        result.reconstruction = res.reconstruction.summary()
        mean = res.mean_activation
        feats = res.features
        labels = cache_labels(reader) if cfg.probing else None
        pool = None
        if labels is not None:
            pool = DocPool(labels, sae.d_in, sae.num_features, max_per_class=cfg.probe_max_per_class, seed=cfg.seed)
        if cfg.density_split == "all":  # one pass over every cached token: densities and probing's pooling
            feats = cache_pass(sae, reader, hook, split="all", batch_size=cfg.batch_size, device=device,
                               progress=cfg.progress, pool=pool).features
        elif pool is not None:
            cache_pass(sae, reader, hook, split="all", batch_size=cfg.batch_size, device=device,
                       progress=cfg.progress, pool=pool)
        result.health = {"split": cfg.density_split, **feats.summary()}
        result.per_feature.update(feats.per_feature())
    else:
        result.notes.append("no cache given: reconstruction, feature health and probing were skipped")

    if lm is not None:
        if lm.modality != "text" or lm.suffix_ids:  # vision, or a masked LM (CLS ... SEP)
            result.notes.append(f"{lm.model_id} is not a causal language model: no spliced loss")
        else:
            v = len(VARIANTS) - (mean is None) - (not cfg.error_term)
            if cfg.corpus:
                length = cfg.context_length
            elif reader is not None:
                length = int(reader.manifest["context_length"])
            else:
                raise WorkbenchError("the spliced loss needs contexts: give a cache (its held-out documents) or a corpus")
            bc = cfg.batch_contexts or _auto_batch_contexts(lm, length, v, device)
            if cfg.corpus:
                ctx = corpus_contexts(lm, cfg.corpus, context_length=length, max_contexts=cfg.ce_contexts,
                                      batch_contexts=bc, seed=cfg.seed)
                text = f"corpus {cfg.corpus}"
            else:
                ctx = cache_contexts(reader, hook, heldout_fraction=frac, max_contexts=cfg.ce_contexts,
                                     batch_contexts=bc)
                text = "held-out contexts of the cache"
            result.spliced = {"text": text, **spliced_losses(lm, sae, hook, ctx, mean=mean, error_term=cfg.error_term,
                                                             splice_positions=cfg.splice_positions, device=device)}
            if mean is None:
                result.notes.append("no cache: mean ablation skipped (it needs the mean activation)")
    if reader is not None and cfg.probing:
        if pool is None:
            result.notes.append("probing skipped: the cache's corpus has no document labels (wiki-vital has topics)")
        else:
            try:
                result.probing = sparse_probing(*pool.result(), ks=KS, max_per_class=cfg.probe_max_per_class,
                                                seed=cfg.seed)
            except WorkbenchError as e:
                result.notes.append(f"probing skipped: {e}")
    return result


def _model(model: Any, cfg: EvalConfig, reader: CacheReader | None, device: torch.device):
    """The model for the spliced loss: the one given, or the cache's own; None to skip."""
    if model is not None and not isinstance(model, str):
        return model
    name = model if isinstance(model, str) else cfg.model
    if name == "none":
        return None
    if not name:
        if reader is None:
            return None
        name = (reader.manifest.get("config") or {}).get("model") or reader.model_id
    from workbench.models import load_model

    return load_model(name, device=device)
