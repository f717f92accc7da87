"""One TopK SAE form all three libraries' results are scored in, so one formula scores them all.

Imported by the driver (workbench venv) and by every worker (each peer's own venv), so it needs
nothing but torch. The form is the one all three libraries' TopK inference reduces to:

    pre   = (x - b_dec) @ W_enc.T + b_enc          W_enc [F, d], b_enc [F]
    z     = ReLU of the k largest entries of pre (the rest 0)
    x_hat = z @ W_dec + b_dec                      W_dec [F, d], b_dec [d]

Each worker converts its library's trained weights into this form (folding whatever that library
keeps apart: an input scale, decoder norms) and checks the conversion against the library's own
encode/decode on held-out rows, so a wrong conversion shows in the table instead of in the FVU.
"""

from __future__ import annotations

import torch
from torch import Tensor

KEYS = ("W_enc", "b_enc", "W_dec", "b_dec")
CHUNK = 4096  # rows per chunk when scoring: bounds the [rows, F] pre-activation buffer


def check_weights(w: dict[str, Tensor]) -> tuple[int, int]:
    """(d, F) of a common-form weight dict; raises ValueError naming what is wrong."""
    missing = [k for k in KEYS if k not in w]
    if missing:
        raise ValueError(f"common-form weights lack {missing}; they need {list(KEYS)}")
    f, d = w["W_enc"].shape
    want = {"W_enc": (f, d), "b_enc": (f,), "W_dec": (f, d), "b_dec": (d,)}
    for k, shape in want.items():
        if tuple(w[k].shape) != shape:
            raise ValueError(f"{k} has shape {tuple(w[k].shape)}, expected {shape}")
    return d, f


@torch.no_grad()
def encode_topk(w: dict[str, Tensor], x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(values [N, k] after ReLU, indices [N, k]) of the k largest pre-activations of each row."""
    pre = torch.addmm(w["b_enc"], x - w["b_dec"], w["W_enc"].t())
    v, i = pre.topk(k, dim=1, sorted=False)
    return v.relu(), i


@torch.no_grad()
def reconstruct(w: dict[str, Tensor], x: Tensor, k: int) -> Tensor:
    v, i = encode_topk(w, x, k)
    z = torch.zeros(x.shape[0], w["W_dec"].shape[0], dtype=x.dtype).scatter_(1, i, v)
    return z @ w["W_dec"] + w["b_dec"]


@torch.no_grad()
def fvu(w: dict[str, Tensor], x: Tensor, k: int) -> float:
    """sum |x - x_hat|^2 / sum |x - mean(x)|^2 over the rows of x (the mean is x's own)."""
    err = 0.0
    for lo in range(0, x.shape[0], CHUNK):
        xc = x[lo:lo + CHUNK].float()
        err += float((reconstruct(w, xc, k) - xc).double().pow(2).sum())
    x64 = x.double()
    return err / float((x64 - x64.mean(0)).pow(2).sum())


@torch.no_grad()
def fired(w: dict[str, Tensor], x: Tensor, k: int) -> Tensor:
    """[F] bool: which features are active (selected with a value > 0) on at least one row of x."""
    out = torch.zeros(w["W_enc"].shape[0], dtype=torch.bool)
    for lo in range(0, x.shape[0], CHUNK):
        v, i = encode_topk(w, x[lo:lo + CHUNK].float(), k)
        out[i[v > 0]] = True
    return out


def dead_fraction(w: dict[str, Tensor], x: Tensor, k: int) -> float:
    """Fraction of features that never fire on the rows of x."""
    return 1.0 - float(fired(w, x, k).float().mean())


def max_relative_diff(a: Tensor, b: Tensor) -> float:
    """max |a - b| / max |b|: how far a conversion's reconstruction is from the library's own."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
