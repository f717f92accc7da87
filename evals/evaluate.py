"""`evaluate`: every measure of one SAE, from a cache (reconstruction, health, probing) and a model (spliced loss).

    from evals import evaluate
    r = evaluate("cache/saes/run1/topk_k32_x8", cache="cache/acts", model="smollm2-135m")
    print(r)                 # a table; in a notebook `r` renders as HTML
    r.save("cache/saes/run1/topk_k32_x8")    # eval.json (+ per-feature tensors)
    rs = evaluate_many([dir_a, dir_b], cache="cache/acts")  # SAEs at one hook share the spliced passes

The held-out split is the one training used (the SAE's `heldout_fraction`, else 1%): the last
contexts of the cache, documents the SAE never saw. The spliced evaluation runs on those same
held-out contexts, rebuilt from the cache's token ids, or on any corpus given by name.
`evals.provenance` checks that claim: whether the cache is the SAE's training cache (a warning
when it is not, or cannot be told), and how many evaluated rows the SAE trained on (eval.json's
`data` section and the table say so). An SAE trained on every row (fraction 0) is refused unless
a fraction is asked for. Sparse probing uses only documents the SAE did not train on (see
`evals.probing`), from this cache or from `--probe-cache`.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from evals.cache_pass import cache_pass
from evals.health import weight_stats
from evals.loading import load_for_eval
from evals.probe_corpus import LABEL_SETS
from evals.probing import KS, DocPool, cache_labels, separator_id, sparse_probing, unseen_documents
from evals.provenance import (
    TrainingDocuments,
    match_training_cache,
    resolve_heldout_fraction,
    sae_heldout_fraction,
    trained_on_rows,
    training_documents,
)
from evals.result import EvalResult
from evals.evaluate_splice import SpliceJob, ce_context_count, run_spliced
from evals.splice import SPLICE_POSITIONS
from harvesting import CacheReader
from workbench.device import resolve_device
from workbench.errors import WorkbenchError


@dataclass
class EvalConfig:
    """How to evaluate. Every field is also a `sae eval` flag."""

    cache: str = field(default="", metadata={"help": "activation cache with the SAE's hook point (held-out tokens, contexts, documents)"})
    model: str = field(default="", metadata={"help": "model for the spliced loss (default: the cache's model; 'none' skips it)"})
    corpus: str = field(default="", metadata={"help": "score the spliced loss on this corpus instead of the cache's held-out contexts"})
    heldout_fraction: float | None = field(default=None, metadata={"help": "held-out fraction of the cache (default: the one the SAE was trained with, else 0.01); rows of it the SAE trained on are counted and labelled"})
    max_tokens: int = field(default=0, metadata={"help": "at most this many held-out tokens for reconstruction (0 = all)"})
    ce_tokens: int = field(default=0, metadata={"help": "input tokens the spliced loss covers, in whole contexts (rounded up; default 20,480 = SAEBench's 10 batches x 16 prompts x 128 tokens); fewer when the held-out split is smaller (eval.json records the count used)"})
    ce_contexts: int = field(default=0, metadata={"help": "contexts for the spliced loss, instead of --ce-tokens (give one of the two, not both)"})
    batch_contexts: int = field(default=0, metadata={"help": "contexts per stacked forward pass (0 = fit the logits in about 1 GiB; 8 GiB on CUDA)"})
    context_length: int = field(default=128, metadata={"help": "tokens per context when packing --corpus"})
    batch_size: int = field(default=4096, metadata={"help": "tokens per SAE batch in cache passes"})
    density_split: Literal["heldout", "all"] = field(default="all", metadata={"help": "cache split for feature densities: all (every cached token: rare features need many tokens to be seen) or heldout"})
    error_term: bool = field(default=True, metadata={"help": "also splice x_hat + (x - x_hat), computed in the activation dtype as users do; reports its distance from clean"})
    splice_positions: Literal["text", "all"] = field(default="text", metadata={"help": "where the SAE replaces the activation: text (every token but BOS, EOS, padding; SAEBench with exclude_special_tokens_from_reconstruction=True) or all (BOS and separators too; SAEBench's default False). Ablations always cover every position; loss is always scored at text positions"})
    probing: bool = field(default=True, metadata={"help": "sparse probing on the corpus's document labels (wiki-vital topics)"})
    probe_max_per_class: int = field(default=300, metadata={"help": "positives per one-vs-rest probing task (as many negatives)"})
    probe_cache: str = field(default="", metadata={"help": "cache whose documents sparse probing uses (default: --cache); only documents the SAE did not train on are probed"})
    probe_label_sets: str = field(default="", metadata={"help": "also probe these label sets on documents run through the model at SAEBench's sizes, comma-separated: wiki-vital:topic, debian-text:source, debian-text:section (documents the SAE trained on are left out)"})
    probe_per_class: int = field(default=2500, metadata={"help": "positives per task for --probe-label-sets (SAEBench: 2500, i.e. 4000 train / 1000 test examples)"})
    probe_context: int = field(default=128, metadata={"help": "tokens of each document run for --probe-label-sets (SAEBench: 128)"})
    absorption: bool = field(default=False, metadata={"help": "first-letter feature absorption (SAEBench's absorption eval; needs the model; minutes on CPU, so off by default)"})
    absorption_icl: int = field(default=10, metadata={"help": "in-context examples before each absorption prompt (SAEBench: 10; fewer is cheaper, prompts ~8 tokens per example)"})
    absorption_words: int = field(default=2000, metadata={"help": "single-token alphabetic words sampled for absorption (0 = the whole vocabulary: tens of minutes on 2 CPUs)"})
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


def evaluate(sae, cache: str | Path | CacheReader | None = None, model: Any = None, *,
             config: EvalConfig | None = None, **overrides: Any) -> EvalResult:
    """Evaluate one SAE (an SAE object or a directory) on a cache and, spliced in, on a model.

    `model`: a LoadedModel, a model name, "none" (no spliced loss), or None (the cache's own model).

    `overrides` set fields of `EvalConfig` (e.g. `ce_contexts=32, probing=False`).
    """
    return evaluate_many([sae], cache, model, config=config, **overrides)[0]


def evaluate_many(saes: Sequence[Any], cache: str | Path | CacheReader | None = None, model: Any = None, *,
                  config: EvalConfig | None = None, **overrides: Any) -> list[EvalResult]:
    """`evaluate` each of several SAEs, with one model and cache; each gets the result it gets alone.

    SAEs at the same hook (same held-out split and mean) share the spliced loss's forward passes:
    clean, zero and mean ablation run once for all of them (`evals.evaluate_splice`). Everything
    else (reconstruction, health, probing, absorption) runs per SAE, one SAE after the other.
    """
    cfg = _config(config, overrides)
    device = resolve_device(cfg.device)
    reader = cache if isinstance(cache, CacheReader) or cache is None else CacheReader(cache)
    if reader is None and cfg.cache:
        reader = CacheReader(cfg.cache)
    loaded = [_load(sae, device) for sae in saes]
    probe_reader = CacheReader(cfg.probe_cache) if cfg.probe_cache and cfg.probing else reader
    for sae, _ in loaded:  # every SAE fits the caches and the model before the first long pass
        for r in {id(x): x for x in (reader, probe_reader) if x is not None}.values():
            check_fits_cache(sae, r, sae.cfg.hook)
    lm = _model(model, cfg, reader, device)
    for sae, _ in loaded:
        if lm is not None:
            check_fits_model(sae, lm, sae.cfg.hook)
    jobs = [_evaluate_but_splice(sae, path, reader, probe_reader, lm, cfg, device) for sae, path in loaded]
    if lm is not None:
        run_spliced(jobs, lm, reader, cfg, device)
    return [job.result for job in jobs]


def _config(config: EvalConfig | None, overrides: dict[str, Any]) -> EvalConfig:
    """The settings, every one checked before any long pass."""
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
    ce_context_count(cfg, 1)  # --ce-tokens with --ce-contexts is refused before any long pass
    for name in (n.strip() for n in cfg.probe_label_sets.split(",")):
        if name and name not in LABEL_SETS:
            raise WorkbenchError(f"unknown probing label set {name!r}; valid choices: {', '.join(LABEL_SETS)}")
    return cfg


def _load(sae, device: torch.device) -> tuple[Any, Path | None]:
    """The SAE object on `device` and the directory it came from (None for an object)."""
    path = None
    if isinstance(sae, (str, Path)):
        path = Path(sae)
        sae = load_for_eval(path, device=device)
    return sae.to(device).eval(), path


def _evaluate_but_splice(sae, path: Path | None, reader: CacheReader | None, probe_reader: CacheReader | None, lm,
                         cfg: EvalConfig, device: torch.device) -> SpliceJob:
    """Every measure of one SAE but the spliced loss, which waits for the other SAEs at its hook.
    The SAE fits `reader`, `probe_reader` and `lm` (checked by the caller before any long pass)."""
    hook = sae.cfg.hook
    result = EvalResult(sae=_sae_info(sae, path), settings={k: getattr(cfg, k) for k in cfg.__dataclass_fields__})
    frac, training = cfg.heldout_fraction, None

    w_summary, w_per = weight_stats(sae.W_enc, sae.W_dec)
    result.weights = w_summary
    result.per_feature.update(w_per)

    if reader is not None:
        frac, training = _heldout(sae, reader, cfg, result)
    result.settings["heldout_fraction"] = frac

    mean, pool, probe_docs = None, None, None
    if reader is not None:
        res = cache_pass(sae, reader, hook, split="heldout", heldout_fraction=frac, batch_size=cfg.batch_size,
                         max_tokens=cfg.max_tokens, device=device, progress=cfg.progress)
        result.reconstruction = res.reconstruction.summary()
        mean = res.mean_activation
        feats = res.features
        pool, probe_docs = _probe_pool(sae, probe_reader, training, frac, cfg, result) if cfg.probing else (None, None)
        ride = pool if probe_reader is reader else None
        if cfg.density_split == "all":  # one pass over every cached token: densities and probing's pooling
            feats = cache_pass(sae, reader, hook, split="all", batch_size=cfg.batch_size, device=device,
                               progress=cfg.progress, pool=ride).features
        if pool is not None and (ride is None or cfg.density_split != "all"):
            cache_pass(sae, probe_reader, hook, split="all", batch_size=cfg.batch_size, device=device,
                       progress=cfg.progress, pool=pool)
        result.health = {"split": cfg.density_split, **feats.summary()}
        result.per_feature.update(feats.per_feature())
    else:
        result.notes.append("no cache given: reconstruction, feature health and probing were skipped")
    if reader is not None and pool is not None:
        _probe(pool, probe_docs, cfg, result)
    if cfg.probe_label_sets:
        _probe_label_sets(sae, lm, hook, reader, training, cfg, result)
    if cfg.absorption:
        _absorption(sae, lm, hook, cfg, result)
    return SpliceJob(sae=sae, hook=hook, frac=frac, mean=mean, result=result)


def _probe_label_sets(sae, lm, hook: str, reader: CacheReader | None, training: TrainingDocuments | None,
                      cfg: EvalConfig, result: EvalResult) -> None:
    """Sparse probing at SAEBench's sizes on documents run through the model (`evals.probe_corpus`)."""
    from evals.probe_corpus import corpus_probing

    names = [n.strip() for n in cfg.probe_label_sets.split(",") if n.strip()]
    if lm is None or lm.modality != "text" or lm.suffix_ids:
        result.notes.append("probing on label sets skipped: it runs documents through a causal language model (give --model)")
        return
    sae_corpus = None
    if training is None and reader is not None and (result.data.get("training_cache") or {}).get("verdict") in ("same", "same path"):
        sae_corpus = (reader.manifest.get("corpus") or {}).get("id")
    sets = corpus_probing(sae, lm, hook, names, training=training, sae_corpus=sae_corpus, max_per_class=cfg.probe_per_class,
                          context_length=cfg.probe_context, seed=cfg.seed, progress=cfg.progress)
    result.probing = {**result.probing, "label_sets": sets}
    for name, r in sets.items():
        why = r.get("skipped") or (r.get("documents") or {}).get("note")
        if why:
            result.notes.append(f"probing {name}: {why}")


def _absorption(sae, lm, hook: str, cfg: EvalConfig, result: EvalResult) -> None:
    """The first-letter absorption metric, or a note saying why it could not run."""
    if lm is None or lm.modality != "text" or lm.suffix_ids:
        result.notes.append("absorption skipped: it needs a causal language model (give --model)")
        return
    from evals.absorption import absorption

    result.absorption = absorption(sae, lm, hook, words=cfg.absorption_words, icl_examples=cfg.absorption_icl,
                                   seed=cfg.seed, progress=cfg.progress)
    if result.absorption.get("note"):
        result.notes.append(f"absorption: {result.absorption['note']}")


def _heldout(sae, reader: CacheReader, cfg: EvalConfig, result: EvalResult) -> tuple[float, TrainingDocuments | None]:
    """The held-out fraction to evaluate on, and what the result must say about the rows it covers."""
    match = match_training_cache(sae, reader)
    frac = resolve_heldout_fraction(sae, cfg.heldout_fraction, match)
    training = training_documents(sae, reader, match)
    n = reader.num_rows("heldout", frac)
    if cfg.max_tokens:
        n = min(n, cfg.max_tokens)
    seen = trained_on_rows(sae, reader, frac, match, training, max_rows=n)
    result.data = {"heldout_fraction": frac, "sae_heldout_fraction": sae_heldout_fraction(sae), "heldout_rows": n,
                   "trained_on_rows": seen, "trained_on_pct": None if seen is None else 100.0 * seen / max(n, 1),
                   "training_cache": match.to_dict()}
    why = "; ".join(match.reasons)
    if match.verdict == "different":
        overlap = (f"{seen:,} of its {n:,} held-out rows are of documents the SAE trained on" if seen is not None else
                   "its documents could not be compared with the training cache's")
        result.notes.append(f"this is not the cache the SAE was trained on ({why}): its held-out rows are unseen "
                            f"by the SAE only where its documents differ from the training cache's; {overlap}")
    elif match.verdict == "unknown":
        result.notes.append(f"cannot tell whether this is the cache the SAE was trained on ({why}), so cannot tell "
                            f"whether its held-out rows are unseen")
    if seen:
        what = "reconstruction is" if cfg.corpus else "reconstruction and the spliced loss (when it runs) are"
        result.notes.append(f"{seen:,} of the {n:,} evaluated held-out rows ({100.0 * seen / n:.1f}%) are rows the SAE "
                            f"trained on: {what} partly measured on training data")
    return frac, training


def _probe_pool(sae, reader: CacheReader | None, training: TrainingDocuments | None, frac: float, cfg: EvalConfig,
                result: EvalResult) -> tuple[DocPool | None, dict[str, Any] | None]:
    """The pooling accumulator for the documents to probe (those the SAE did not train on), or None and a note."""
    labels = cache_labels(reader) if reader is not None else None
    if labels is None:
        if reader is not None:
            result.notes.append("probing skipped: the cache's corpus has no document labels (wiki-vital has topics)")
        return None, None
    docs, info = unseen_documents(sae, reader, training, frac)
    info["labelled"] = sum(1 for d in docs.tolist() if d in labels)
    try:
        return DocPool(labels, sae.d_in, sae.num_features, max_per_class=cfg.probe_max_per_class, seed=cfg.seed,
                       documents=docs, separator_id=separator_id(reader)), info
    except WorkbenchError:  # no labelled document left to probe
        _skip_probing(result, {**info, "pooled": 0}, "none of them is labelled")
        return None, None


def _probe(pool: DocPool, info: dict[str, Any], cfg: EvalConfig, result: EvalResult) -> None:
    try:
        raw, feats, labels = pool.result()
    except WorkbenchError as e:
        _skip_probing(result, {**info, "pooled": 0}, str(e))
        return
    info = {**info, "pooled": len(labels), "per_class": dict(sorted(Counter(labels).items()))}
    try:
        result.probing = {"documents": info, **sparse_probing(raw, feats, labels, ks=KS,
                                                              max_per_class=cfg.probe_max_per_class, seed=cfg.seed)}
    except WorkbenchError as e:
        _skip_probing(result, info, str(e))


def _skip_probing(result: EvalResult, info: dict[str, Any], why: str) -> None:
    """Say plainly that there were too few documents the SAE did not train on; never fall back on its training ones."""
    msg = (f"{info['pooled']} labelled documents the SAE did not train on were pooled ({info['rule']}), too few: "
           f"{why}. Give --probe-cache with a cache of other documents of the same corpus (e.g. `sae harvest --seed 1 "
           f"--out OTHER`; documents the SAE trained on are left out by their index), or train with a larger "
           f"--heldout-fraction")
    result.probing = {"documents": info, "skipped": msg}
    result.notes.append(f"probing skipped: {msg}")


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
