"""The SAE spliced into the model: what replacing an activation by its reconstruction costs downstream.

For each batch of contexts the model runs once on the batch stacked V times (one slice per
variant), with one hook at the SAE's hook point that rewrites each slice:

- ``clean``: untouched;
- ``sae``: the activation replaced by ``decode(encode(x))``;
- ``zero``: replaced by 0; ``mean``: replaced by the mean activation (of the cache's tokens);
- ``error``: ``x̂ + (x - x̂)``, the SAE's error term added back, computed in float64 so it is
  bit-for-bit ``x`` (a check of the splicing itself: its loss must equal the clean loss).

Only real-text positions are rewritten (BOS/CLS/SEP/padding keep their original activation,
as in SAEBench); loss is measured at positions whose input is real text: CE where the next token
is real text too, KL(clean || variant) = Σ_v p_clean (log p_clean - log p_variant) per position,
averaged over positions. Scores as SAEBench defines them:
``ce_loss_score = (CE_zero - CE_sae) / (CE_zero - CE_clean)`` (1 = as good as clean, 0 = as bad
as zero ablation) and ``kl_div_score = (KL_zero - KL_sae) / KL_zero``.

One stacked forward pass instead of V separate ones is the whole cost model: the extra work is
one SAE encode/decode per batch and the log-softmaxes (benchmarks/bench_eval.py measures it
against the V plain passes).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from evals.contexts import ContextBatch
from workbench.hooks import replacing

VARIANTS = ("clean", "sae", "zero", "mean", "error")


def _rewrite(act: Tensor, keep: Tensor, variants: tuple[str, ...], sae: Any, mean: Tensor | None) -> Tensor:
    """The stacked activation `[V*B, T, d]` with each variant's slice rewritten at the kept positions."""
    v = len(variants)
    b = act.shape[0] // v
    out = act.clone()
    x = act[:b][keep]  # [n, d]: identical inputs in every slice (same tokens, nothing changed yet)
    x_hat = None
    if "sae" in variants or "error" in variants:
        x_hat = sae.decode(sae.encode(x.float())).to(act.dtype)
    for i, name in enumerate(variants):
        sl = out[i * b:(i + 1) * b]
        if name == "sae":
            sl[keep] = x_hat
        elif name == "zero":
            sl[keep] = 0
        elif name == "mean":
            sl[keep] = mean.to(act.device, act.dtype)
        elif name == "error":
            own = act[i * b:(i + 1) * b][keep].double()
            err = own - x_hat.double()  # exact in float64 for float32 operands
            sl[keep] = (x_hat.double() + err).to(act.dtype)
    return out


@torch.no_grad()  # not inference_mode: the kernels reuse workspaces across calls
def spliced_losses(lm, sae, hook: str, contexts: Iterable[ContextBatch], *, mean: Tensor | None = None,
                   error_term: bool = True, device: torch.device | str = "cpu") -> dict[str, Any]:
    """CE and KL of the model with the SAE (and ablations) spliced in at `hook`, over `contexts`."""
    variants = tuple(n for n in VARIANTS if (n != "mean" or mean is not None) and (n != "error" or error_term))
    v = len(variants)
    ce_sum = torch.zeros(v, dtype=torch.float64)
    kl_sum = torch.zeros(v, dtype=torch.float64)
    n_ce = n_kl = 0
    n_ctx = 0
    for cb in contexts:
        tokens = cb.tokens.to(device)
        keep = cb.keep.to(device)
        b = tokens.shape[0]

        def fn(act: Tensor, site: Any) -> Tensor:
            return _rewrite(act, keep, variants, sae, mean)

        with replacing(lm, hook, fn):
            logits = lm.bridge(tokens.repeat(v, 1))
        logp = torch.log_softmax(logits.float(), dim=-1).view(v, b, *logits.shape[1:])
        del logits
        # CE: position t predicts token t+1; both must be real text.
        ce_mask = keep[:, :-1] & keep[:, 1:]
        tgt = tokens[:, 1:].unsqueeze(0).expand(v, -1, -1).unsqueeze(-1)
        nll = -logp[:, :, :-1].gather(-1, tgt).squeeze(-1)  # [V, B, T-1]
        ce_sum += nll[:, ce_mask].double().sum(-1).cpu()
        n_ce += int(ce_mask.sum())
        # KL(clean || variant) at every real-text position.
        lp_clean = logp[0][keep]  # [n, vocab]
        p_clean = lp_clean.exp()
        for i in range(v):
            kl = (p_clean * (lp_clean - logp[i][keep])).sum(-1)
            kl_sum[i] += float(kl.double().sum())
        n_kl += int(keep.sum())
        n_ctx += b
        del logp
    ce = (ce_sum / max(n_ce, 1)).tolist()
    kl = (kl_sum / max(n_kl, 1)).tolist()
    out: dict[str, Any] = {"contexts": n_ctx, "ce_tokens": n_ce, "kl_tokens": n_kl}
    for i, name in enumerate(variants):
        out[f"ce_{name}"] = ce[i]
        if name != "clean":
            out[f"kl_{name}"] = kl[i]
    out.update(scores(out))
    return out


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
