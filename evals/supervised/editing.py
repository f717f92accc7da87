"""Editing one attribute: the supervised edit, and the SAE edit chosen greedily among its features.

SAE edit (Makelov, Lange, Nanda 2024, section 4.2): with α and β the SAE codes of the source
activation a_s and of the target a_t (the same prompt with one attribute changed), each feature j
offers the move δ_j = (β_j − α_j) u_j (u_j its decoder row). Up to k times, add the δ_j that most
reduces ‖Σ δ − (a_t − a_s)‖; stop early when none reduces it. The edited activation is a_s + Σ δ.

Edit magnitude (their w_i): with x̂ − b = Σ_j f_j u_j the reconstruction without its bias,
w_j = (f_j u_j)ᵀ(x̂ − b)/‖x̂ − b‖² (the w_j sum to 1); the magnitude of an edit is the weight it
removes, Σ_j w_j · (α_j − β_j)/α_j over the chosen features it lowers (1 per feature switched off).
"""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def greedy_edit(decoder: Tensor, alpha: Tensor, beta: Tensor, target: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(Σ δ [N, d], chosen features [N, k], -1 where fewer were useful) moving toward `target` = a_t − a_s.

    `decoder` [F, d]; `alpha`, `beta` dense codes [N, F]. Exact greedy: each step scores every
    feature by ‖r − δ_j‖² = ‖r‖² − 2(β_j − α_j) rᵀu_j + (β_j − α_j)²‖u_j‖² for the residual r.
    """
    dec = decoder.float()
    diff = (beta - alpha).float()  # [N, F]
    sq = diff.pow(2) * dec.pow(2).sum(-1)  # ‖δ_j‖²
    n = target.shape[0]
    total = torch.zeros(n, dec.shape[1], dtype=torch.float32, device=dec.device)
    chosen = torch.full((n, k), -1, dtype=torch.long, device=dec.device)
    free = diff != 0
    rows = torch.arange(n, device=dec.device)
    for step in range(k):
        r = target.float() - total
        gain = sq - 2 * diff * (r @ dec.T)  # change of ‖r‖² when δ_j is added
        gain = torch.where(free, gain, torch.full_like(gain, float("inf")))
        best, j = gain.min(1)
        useful = best < 0
        if not bool(useful.any()):
            break
        ju = j[useful]
        total[useful] += diff[rows[useful], ju].unsqueeze(1) * dec[ju]
        chosen[useful, step] = ju
        free[rows[useful], ju] = False
    return total, chosen


def sae_edit_magnitude(decoder: Tensor, alpha: Tensor, beta: Tensor, chosen: Tensor) -> Tensor:
    """[N]: the share of the source reconstruction's weight the chosen features remove (see the docstring)."""
    dec = decoder.float()
    recon = alpha.float() @ dec  # x̂ − b_dec
    w = alpha.float() * (recon @ dec.T) / recon.pow(2).sum(-1, keepdim=True).clamp_min(1e-12)  # [N, F]
    out = torch.zeros(alpha.shape[0])
    for n in range(alpha.shape[0]):
        js = chosen[n][chosen[n] >= 0]
        a, b = alpha[n, js].float(), beta[n, js].float()
        lowered = (a > 0) & (b < a)
        frac = torch.where(lowered, (a - b.clamp_min(0)) / a.clamp_min(1e-12), torch.zeros_like(a))
        out[n] = (w[n, js] * frac).sum()
    return out
