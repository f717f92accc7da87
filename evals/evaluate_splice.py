"""The spliced-loss step of `evaluate`: how many contexts, how many per pass, and which SAEs share a pass.

SAEs evaluated together that read the same hook, with the same held-out split and mean activation,
are spliced into the same stacked forward passes (`spliced_losses_many`): clean, zero and mean run
once per context and each SAE adds its sae and error rows. The stacked batch grows with the number
of SAEs, so the SAEs are split into groups small enough that one context's rows fit the logits
budget, and the contexts per pass shrink to fit the rest; each SAE's `spliced` section is the one
it gets evaluated alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from evals.contexts import ContextBatch, cache_contexts, corpus_contexts
from evals.result import EvalResult
from evals.splice import spliced_losses_many, stacked_rows
from harvesting import CacheReader
from workbench.errors import WorkbenchError

SAEBENCH_CE_TOKENS = 10 * 16 * 128  # SAEBench core: n_eval_reconstruction_batches x batch_size_prompts x context


def ce_context_count(cfg: Any, length: int) -> int:
    """Contexts for the spliced loss: --ce-contexts, else --ce-tokens (default SAEBench's 20,480)
    rounded up to whole contexts of `length` tokens."""
    if cfg.ce_tokens and cfg.ce_contexts:
        raise WorkbenchError(f"give --ce-tokens ({cfg.ce_tokens}) or --ce-contexts ({cfg.ce_contexts}), not both")
    if cfg.ce_tokens < 0 or cfg.ce_contexts < 0:
        raise WorkbenchError(f"--ce-tokens and --ce-contexts must be positive; got {cfg.ce_tokens}, {cfg.ce_contexts}")
    if cfg.ce_contexts:
        return cfg.ce_contexts
    return -(-(cfg.ce_tokens or SAEBENCH_CE_TOKENS) // length)


def _row_bytes(lm, length: int) -> int:
    """Memory one stacked row of one context costs: logits, log-probs, one temporary."""
    vocab = int(getattr(lm.bridge.cfg, "d_vocab", 0) or len(lm.tokenizer))
    return length * vocab * 4 * 3


def _budget(device: torch.device) -> int:
    return (8 if device.type == "cuda" else 1) * 2**30


def _auto_batch_contexts(lm, length: int, variants: int, device: torch.device) -> int:
    """Contexts per stacked pass of `variants` rows each, the logits in about 1 GiB (8 GiB on CUDA)."""
    return max(1, _budget(device) // (variants * _row_bytes(lm, length)))


def max_group(lm, length: int, device: torch.device, *, has_mean: bool, error_term: bool,
              batch_contexts: int = 0) -> int:
    """Most SAEs one stacked pass may hold: their rows for `batch_contexts` contexts (at least one) fit the
    budget. At least 1, which is one SAE's five rows as before, even where they exceed it."""
    rows_fit = _budget(device) // (max(batch_contexts, 1) * _row_bytes(lm, length))
    n = 1
    while stacked_rows(n + 1, has_mean, error_term) <= rows_fit:
        n += 1
    return n


def _chunks(items: list, most: int) -> list[list]:
    """`items` in as few groups of at most `most` as possible, of near-equal sizes."""
    k = -(-len(items) // most)
    size, extra = divmod(len(items), k)
    out, i = [], 0
    for g in range(k):
        n = size + (g < extra)
        out.append(items[i:i + n])
        i += n
    return out


@dataclass
class SpliceJob:
    """One SAE waiting for its spliced loss: what decides which other SAEs it may share a pass with."""

    sae: Any
    hook: str
    frac: float | None
    mean: Tensor | None
    result: EvalResult


def _groups(jobs: list[SpliceJob]) -> list[list[SpliceJob]]:
    """Jobs at one hook, on one held-out split, with the same mean activation (so the same contexts and ablation)."""
    groups: list[list[SpliceJob]] = []
    for job in jobs:
        for g in groups:
            head = g[0]
            if head.hook == job.hook and head.frac == job.frac and (
                    (head.mean is None and job.mean is None)
                    or (head.mean is not None and job.mean is not None and torch.equal(head.mean, job.mean))):
                g.append(job)
                break
        else:
            groups.append([job])
    return groups


def run_spliced(jobs: list[SpliceJob], lm, reader: CacheReader | None, cfg: Any, device: torch.device) -> None:
    """Fill each job's `result.spliced` (and notes), sharing passes between jobs that can share them."""
    if not jobs:
        return
    if lm.modality != "text" or lm.suffix_ids:  # vision, or a masked LM (CLS ... SEP)
        for job in jobs:
            job.result.notes.append(f"{lm.model_id} is not a causal language model: no spliced loss")
        return
    if cfg.corpus:
        length = cfg.context_length
    elif reader is not None:
        length = int(reader.manifest["context_length"])
    else:
        raise WorkbenchError("the spliced loss needs contexts: give a cache (its held-out documents) or a corpus")
    n_contexts = ce_context_count(cfg, length)
    for group in _groups(jobs):
        head = group[0]
        has_mean = head.mean is not None
        most = max_group(lm, length, device, has_mean=has_mean, error_term=cfg.error_term,
                         batch_contexts=cfg.batch_contexts)
        for chunk in _chunks(group, most):
            rows = stacked_rows(len(chunk), has_mean, cfg.error_term)
            bc = cfg.batch_contexts or _auto_batch_contexts(lm, length, rows, device)
            if cfg.corpus:
                ctx = corpus_contexts(lm, cfg.corpus, context_length=length, max_contexts=n_contexts,
                                      batch_contexts=bc, seed=cfg.seed)
                text = f"corpus {cfg.corpus}"
            else:
                ctx = cache_contexts(reader, head.hook, heldout_fraction=head.frac, max_contexts=n_contexts,
                                     batch_contexts=bc)
                text = "held-out contexts of the cache"
            with tqdm(total=n_contexts, unit="ctx", desc=f"spliced {head.hook} x{len(chunk)} SAE(s)",
                      disable=not cfg.progress) as bar:
                outs = spliced_losses_many(lm, [j.sae for j in chunk], head.hook, _counted(ctx, bar),
                                           mean=head.mean, error_term=cfg.error_term,
                                           splice_positions=cfg.splice_positions, device=device)
            for job, out in zip(chunk, outs):
                _record(job.result, out, text, n_contexts, length, has_mean)


def _counted(contexts: Iterable[ContextBatch], bar: tqdm) -> Iterator[ContextBatch]:
    """The contexts, ticking `bar` by each batch's contexts: on a CPU the spliced passes of a sweep
    take tens of minutes, and a step that long should not look hung."""
    for cb in contexts:
        yield cb
        bar.update(cb.tokens.shape[0])


def _record(result: EvalResult, out: dict[str, Any], text: str, n_contexts: int, length: int, has_mean: bool) -> None:
    result.spliced = {"text": text, **out}
    result.spliced["tokens_asked"] = n_contexts * length
    if result.spliced["contexts"] < n_contexts:
        result.notes.append(f"the spliced loss covers {result.spliced['input_tokens']:,} tokens "
                            f"({result.spliced['contexts']} contexts), not the {n_contexts * length:,} "
                            f"asked ({text}: there are no more)")
    if not has_mean:
        result.notes.append("no cache: mean ablation skipped (it needs the mean activation)")
