"""The SAE spliced into the model: what replacing an activation by its reconstruction costs downstream.

Definitions are SAEBench's core metrics (`sae_bench/evals/core/main.py`, `get_recons_loss` and
`get_downstream_reconstruction_metrics`), run as its `multiple_evals` runs them: `ignore_tokens =
{pad, eos, bos}` and, by default, `exclude_special_tokens_from_reconstruction=True` (the flag its
documented runs pass; off, its CLI's default, is `splice_positions="all"`). With
`m[t]` = "token t is none of BOS, EOS (our packed documents' separator), padding":

- ``clean``: untouched;
- ``sae``: ``decode(encode(x))`` where `m` (`splice_positions="text"`), or at every position
  (`"all"`, BOS and separators included); elsewhere the original activation;
- ``zero``: every position zeroed, BOS and separators included (SAEBench's zero-ablation hook; in a
  model without biases, such as Llama/SmolLM2 at a residual hook, every prediction is then uniform
  and CE_zero = log(vocab));
- ``mean``: every position replaced by the mean activation of the cache's tokens (not a SAEBench
  metric; ablated over the same positions as ``zero`` so the two baselines are comparable);
- ``error``: ``x̂ + (x - x̂)`` at the positions ``sae`` rewrites, computed the way users splice an
  SAE with its error term (circuit analysis, attribution): in the activation's dtype. In exact
  arithmetic it is ``x``; in float32/bf16 it is off by rounding, which grows with ``|x̂|``. So the
  row reports how far it lands from clean (``ce_error_diff = ce_error - ce_clean``, ``kl_error``,
  and the activation's ``error_max_abs_diff`` / ``error_rel_diff``): tiny for a sane SAE, large
  for one whose outputs dwarf the activations, and nonzero if the splice itself were wrong.

Scored positions (SAEBench's masks, applied after the forward passes): CE at positions t with
`m[t]`, predicting token t+1 (a text token predicting the EOS that ends its document counts; BOS
and a separator predicting the next document's first token do not); KL(clean || variant) =
Σ_v p_clean (log p_clean - log p_variant) at positions with `m[t]`. Both are averaged over every
scored token of every context (not per context). Scores:
``ce_loss_score = (CE_zero - CE_sae) / (CE_zero - CE_clean)`` (1 = as good as clean, 0 = as bad
as zero ablation) and ``kl_div_score = (KL_zero - KL_sae) / KL_zero``. The settings matched are
recorded in the result's ``definition``. Each score comes with a percentile-bootstrap 95% interval
(``intervals``) that resamples whole contexts, from each context's loss sums (`score_intervals`).

One stacked forward pass instead of V separate ones is the whole cost model: the extra work is
one SAE encode/decode per batch and the log-softmaxes (benchmarks/bench_eval.py measures it
against the V plain passes; tests/evals/test_splice_saebench.py checks it against SAEBench's
three separate passes). Several SAEs at one hook share a pass (`spliced_losses_many`): clean,
zero and mean do not depend on the SAE, so N SAEs cost 3 + 2N rows per context, not 5N.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from evals.contexts import ContextBatch
from evals.intervals import DEFAULT_RESAMPLES, ratio_interval
from workbench.errors import WorkbenchError
from workbench.hooks import replacing

VARIANTS = ("clean", "sae", "zero", "mean", "error")
SHARED = ("clean", "zero", "mean")  # the variants no SAE changes
SPLICE_POSITIONS = ("text", "all")


class _ErrorStats:
    """How far the error-term splice lands from the clean activation, over every rewritten position."""

    def __init__(self) -> None:
        self.max_abs = 0.0
        self.sq_diff = 0.0
        self.sq_x = 0.0

    def add(self, x: Tensor, spliced: Tensor) -> None:
        d = spliced.double() - x.double()
        if d.numel():
            self.max_abs = max(self.max_abs, float(d.abs().max()))
        self.sq_diff += float(d.pow(2).sum())
        self.sq_x += float(x.double().pow(2).sum())


def _layout(n_saes: int, has_mean: bool, error_term: bool) -> tuple[list[tuple[str, int]], tuple[str, ...],
                                                                  list[list[int]]]:
    """The stacked rows: clean, zero, mean once (they do not depend on the SAE), then sae and error per SAE.

    Returns the rows as (variant, SAE index or -1), each SAE's variant names in `VARIANTS` order, and
    for each SAE the row of each of its variants.
    """
    variants = tuple(n for n in VARIANTS if (n != "mean" or has_mean) and (n != "error" or error_term))
    rows = [(n, -1) for n in variants if n in SHARED]
    per_sae = []
    for j in range(n_saes):
        at = {n: i for i, (n, _) in enumerate(rows) if n in SHARED}
        for n in variants:
            if n not in SHARED:
                at[n] = len(rows)
                rows.append((n, j))
        per_sae.append([at[n] for n in variants])
    return rows, variants, per_sae


def _rewrite(act: Tensor, splice: Tensor, rows: list[tuple[str, int]], saes: list[Any], mean: Tensor | None,
             errs: list[_ErrorStats]) -> Tensor:
    """The stacked activation `[R*B, T, d]` with each row's slice rewritten (see the module docstring)."""
    b = act.shape[0] // len(rows)
    out = act.clone()
    x = act[:b][splice]  # [n, d]: identical inputs in every slice (same tokens, nothing changed yet)
    x_hat: dict[int, Tensor] = {}
    for i, (name, j) in enumerate(rows):
        sl = out[i * b:(i + 1) * b]
        if j >= 0 and j not in x_hat:
            x_hat[j] = saes[j].decode(saes[j].encode(x.float())).to(act.dtype)
        if name == "sae":
            sl[splice] = x_hat[j]
        elif name == "zero":
            sl.zero_()
        elif name == "mean":
            sl[:] = mean.to(act.device, act.dtype)
        elif name == "error":
            with_error = x_hat[j] + (x - x_hat[j])  # in the activation dtype, as a user's splice computes it
            errs[j].add(x, with_error)
            sl[splice] = with_error
    return out


def definition(splice_positions: str, special_ids: Iterable[int], act_dtype: str | None) -> dict[str, Any]:
    """What eval.json records next to the numbers: the reference, its settings, and what we add."""
    return {
        "reference": "SAEBench core metrics (sae_bench/evals/core/main.py: get_recons_loss)",
        "ignore_tokens": sorted(int(i) for i in special_ids),
        "ignore_tokens_are": "bos, eos (document separator), pad: SAEBench's multiple_evals ignore_tokens",
        "exclude_special_tokens_from_reconstruction": splice_positions == "text",
        "splice_positions": splice_positions,
        "zero_ablation": "every position (BOS and separators included), as SAEBench's zero-ablation hook",
        "mean_ablation": "every position, by the cache's mean activation (not a SAEBench metric)",
        "ce_positions": "input token not in ignore_tokens, predicting the next token (whatever it is)",
        "kl_positions": "input token not in ignore_tokens",
        "average": "over every scored token of every context",
        "error_term": f"x_hat + (x - x_hat) in the activation dtype ({act_dtype or '?'}) at the spliced positions",
    }


def spliced_losses(lm, sae, hook: str, contexts: Iterable[ContextBatch], *, mean: Tensor | None = None,
                   error_term: bool = True, splice_positions: str = "text",
                   device: torch.device | str = "cpu", n_resamples: int = DEFAULT_RESAMPLES,
                   seed: int = 0) -> dict[str, Any]:
    """CE and KL of the model with the SAE (and ablations) spliced in at `hook`, over `contexts`.

    `splice_positions`: "text" (SAEBench's exclude_special_tokens_from_reconstruction=True) or "all".
    `intervals` holds bootstrap 95% intervals of the scores, resampling contexts (`score_intervals`).
    """
    return spliced_losses_many(lm, [sae], hook, contexts, mean=mean, error_term=error_term,
                               splice_positions=splice_positions, device=device, n_resamples=n_resamples,
                               seed=seed)[0]


def stacked_rows(n_saes: int, has_mean: bool = True, error_term: bool = True) -> int:
    """Rows of the stacked batch per context for `n_saes` SAEs: 3 + 2N with mean and error term (not 5N)."""
    return len(_layout(n_saes, has_mean, error_term)[0])


@torch.no_grad()  # not inference_mode: the kernels reuse workspaces across calls
def spliced_losses_many(lm, saes: Sequence[Any], hook: str, contexts: Iterable[ContextBatch], *,
                        mean: Tensor | None = None, error_term: bool = True, splice_positions: str = "text",
                        device: torch.device | str = "cpu", n_resamples: int = DEFAULT_RESAMPLES,
                        seed: int = 0) -> list[dict[str, Any]]:
    """`spliced_losses` of each of several SAEs at one `hook`, in one stacked forward pass per context batch.

    clean, zero and mean do not depend on the SAE, so they run once and each SAE adds its own sae and
    error rows (3 + 2N rows per context instead of 5N). Each SAE's dict is the one `spliced_losses`
    gives it alone: its losses, scores and intervals from its own rows, KL against the shared clean.
    The batch grows with N: callers size `contexts`' batches for `stacked_rows(N)` rows per context.
    """
    if splice_positions not in SPLICE_POSITIONS:
        raise WorkbenchError(f"unknown splice positions {splice_positions!r}; valid choices: "
                             f"{', '.join(SPLICE_POSITIONS)}")
    saes = list(saes)
    if not saes:
        return []
    rows, variants, per_sae = _layout(len(saes), mean is not None, error_term)
    r = len(rows)
    ce_sum = torch.zeros(r, dtype=torch.float64)
    kl_sum = torch.zeros(r, dtype=torch.float64)
    n_ce = n_kl = 0
    n_ctx = 0
    length = 0
    # Per-context sums [R, contexts], kept so the intervals resample whole contexts.
    ce_ctx: list[Tensor] = []
    kl_ctx: list[Tensor] = []
    errs = [_ErrorStats() for _ in saes]
    special: set[int] = set()
    act_dtype: list[str] = []
    for cb in contexts:
        tokens = cb.tokens.to(device)
        keep = cb.keep.to(device)  # text positions: SAEBench's mask (not BOS, EOS, padding)
        splice = keep if splice_positions == "text" else torch.ones_like(keep)
        special.update(cb.special_ids)
        b = tokens.shape[0]

        def fn(act: Tensor, site: Any) -> Tensor:
            if not act_dtype:
                act_dtype.append(str(act.dtype).removeprefix("torch."))
            return _rewrite(act, splice, rows, saes, mean, errs)

        with replacing(lm, hook, fn):
            logits = lm.bridge(tokens.repeat(r, 1))
        logp = torch.log_softmax(logits.float(), dim=-1).view(r, b, *logits.shape[1:])
        del logits
        # CE: position t predicts token t+1; scored where token t is text (the target may be EOS).
        ce_mask = keep[:, :-1]
        tgt = tokens[:, 1:].unsqueeze(0).expand(r, -1, -1).unsqueeze(-1)
        nll = -logp[:, :, :-1].gather(-1, tgt).squeeze(-1)  # [R, B, T-1]
        per_ctx = (nll.double() * ce_mask).sum(-1).cpu()  # [R, B]
        ce_ctx.append(per_ctx)
        ce_sum += per_ctx.sum(-1)
        n_ce += int(ce_mask.sum())
        # KL(clean || variant) at every text position; row 0 is clean.
        lp_clean = logp[0][keep]  # [n, vocab]
        p_clean = lp_clean.exp()
        ctx_of = keep.nonzero()[:, 0].cpu()  # the context of each text position
        kl_b = torch.zeros(r, b, dtype=torch.float64)
        for i in range(1, r):
            kl = (p_clean * (lp_clean - logp[i][keep])).sum(-1)
            kl_b[i].index_add_(0, ctx_of, kl.double().cpu())
        kl_ctx.append(kl_b)
        kl_sum += kl_b.sum(-1)
        n_kl += int(keep.sum())
        n_ctx += b
        length = max(length, tokens.shape[1])
        del logp
    ce_all = torch.cat(ce_ctx, 1) if ce_ctx else None
    kl_all = torch.cat(kl_ctx, 1) if kl_ctx else None
    head = {"contexts": n_ctx, "context_length": length, "input_tokens": n_ctx * length,
            "ce_tokens": n_ce, "kl_tokens": n_kl}
    out = []
    for at, err in zip(per_sae, errs):
        ce = (ce_sum[at] / max(n_ce, 1)).tolist()
        kl = (kl_sum[at] / max(n_kl, 1)).tolist()
        one: dict[str, Any] = dict(head)
        for i, name in enumerate(variants):
            one[f"ce_{name}"] = ce[i]
            if name != "clean":
                one[f"kl_{name}"] = kl[i]
        if "error" in variants:
            one["ce_error_diff"] = one["ce_error"] - one["ce_clean"]
            one["error_max_abs_diff"] = err.max_abs
            one["error_rel_diff"] = (err.sq_diff / err.sq_x) ** 0.5 if err.sq_x else 0.0
        one.update(scores(one))
        if n_ctx:
            one["intervals"] = score_intervals(variants, ce_all[at].numpy(), kl_all[at].numpy(),
                                               n_resamples=n_resamples, seed=seed)
        one["definition"] = definition(splice_positions, special, act_dtype[0] if act_dtype else None)
        out.append(one)
    return out


def score_intervals(variants: tuple[str, ...], ce_ctx, kl_ctx, *, n_resamples: int = DEFAULT_RESAMPLES,
                    seed: int = 0) -> dict[str, dict[str, Any]]:
    """Bootstrap 95% intervals of the CE loss and KL div scores, resampling contexts.

    `ce_ctx`, `kl_ctx` [V, contexts]: each context's sum of NLL (of KL) over its scored tokens, per
    variant. Every variant is scored on the same tokens, so the token counts cancel and each score
    is a ratio of sums over contexts, recomputed per resample with numerator and denominator drawn
    together: CE (Σ zero - Σ sae) / (Σ zero - Σ clean), KL (Σ zero - Σ sae) / Σ zero. Contexts, not
    tokens, are the unit: a context's tokens share a document and move together.
    """
    i = {name: n for n, name in enumerate(variants)}
    z, s, c = i["zero"], i["sae"], i["clean"]
    ce = ratio_interval(ce_ctx[z] - ce_ctx[s], ce_ctx[z] - ce_ctx[c], n_resamples=n_resamples, seed=seed)
    kl = ratio_interval(kl_ctx[z] - kl_ctx[s], kl_ctx[z], n_resamples=n_resamples, seed=seed)
    return {name: {**iv.to_dict(), "resampled": "contexts", "method": "percentile bootstrap",
                   "resamples": n_resamples}
            for name, iv in (("ce_loss_score", ce), ("kl_div_score", kl))}


def scores(r: dict[str, Any]) -> dict[str, float]:
    """SAEBench's scores from the losses (1 = the SAE costs nothing, 0 = as bad as zero ablation)."""
    out = {}
    denom = r["ce_zero"] - r["ce_clean"]
    out["ce_loss_score"] = (r["ce_zero"] - r["ce_sae"]) / denom if denom else float("nan")
    out["kl_div_score"] = (r["kl_zero"] - r["kl_sae"]) / r["kl_zero"] if r["kl_zero"] else float("nan")
    if "ce_mean" in r:
        dm = r["ce_mean"] - r["ce_clean"]
        out["ce_loss_score_vs_mean_ablation"] = (r["ce_mean"] - r["ce_sae"]) / dm if dm else float("nan")
    out["ce_increase"] = r["ce_sae"] - r["ce_clean"]
    return out
