"""Whitening before dictionary learning (`sae train --whiten pca|zca`), folded into the saved weights.

Donhauser et al. (dictionary learning on microscopy embeddings) whiten the inputs with PCA fitted
on a control dataset before learning the dictionary, so that directions of large variance do not
dominate the reconstruction loss. Here the mean and covariance come from the run's
initialisation sample (`--whiten-source init`) or from the first tokens of another cache
(`--whiten-source DIR`, a control set), and the SAE trains on

    u = (x - mean) @ M        pca: M = V diag(lambda + eps)^-1/2,   zca: M = V diag(...)^-1/2 V^T

(row vectors; `cov = V diag(lambda) V^T`; eps is `--whiten-eps` times the mean eigenvalue, so
directions with almost no variance are not blown up into noise the SAE must reconstruct).

Folding. An SAE computes pre = (u - b_dec) @ W_enc + b_enc, picks features from `pre` (top-k,
thresholds, batch rules: all read only `pre`), and decodes u_hat = z @ W_dec + b_dec. With
M_inv = M^-1 and

    b_dec' = b_dec @ M_inv + mean,   W_enc' = M @ W_enc,   W_dec' = W_dec @ M_inv,   b_enc' = b_enc

one has (x - b_dec') @ M = u - b_dec, so the raw-input SAE computes the same pre-activations,
the same codes, and x_hat = u_hat @ M_inv + mean: exactly the whitened SAE's reconstruction
mapped back. Decoder rows are then no longer unit-norm (they are the dictionary atoms in the
model's own units; codes keep their whitened-space magnitudes), which cfg.json records as
`whiten`. The fold is exact for every architecture whose choices read only the pre-activations;
one whose encoder reads the decoder's geometry (matching pursuit correlates the residual with
unit-norm atoms, which a non-orthogonal M changes) cannot be folded and is refused before
training: `check_foldable` tries the fold on a tiny random SAE of the class, so the rule is
asked of the architecture's behaviour, never its name.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from workbench.errors import WorkbenchError, choices_error

if TYPE_CHECKING:
    from saes.base import SparseAutoencoder
    from saes.config import TrainConfig
    from saes.data import ActivationSource

WHITEN_CHOICES = ("none", "pca", "zca")
WHITENING_FILE = "whitening.safetensors"


@dataclass
class Whitening:
    """u = (x - mean) @ matrix and back x = u @ inverse + mean (float64, on the CPU)."""

    kind: str
    mean: Tensor  # [d]
    matrix: Tensor  # [d, d]
    inverse: Tensor  # [d, d]
    eigenvalues: Tensor  # [d] of the covariance it was fitted on, descending (for the record)
    tokens: int  # rows it was fitted on

    def apply(self, x: Tensor) -> Tensor:
        """Whiten `x [B, d]` in its own dtype and device (the float64 map is cast once per device)."""
        key = (x.device, x.dtype)
        cached = self.__dict__.setdefault("_cast", {})
        if key not in cached:
            cached[key] = (self.mean.to(x.device, x.dtype), self.matrix.to(x.device, x.dtype))
        mean, m = cached[key]
        return (x - mean) @ m

    def unapply(self, u: Tensor) -> Tensor:
        return u.double() @ self.inverse.to(u.device) + self.mean.to(u.device)

    def rescaled(self, scale: float) -> "Whitening":
        """The same map written for raw x when this one was fitted on (and applies to) `scale * x`."""
        return Whitening(self.kind, self.mean / scale, self.matrix * scale, self.inverse / scale,
                         self.eigenvalues / scale**2, self.tokens)

    def tensors(self) -> dict[str, Tensor]:
        return {"mean": self.mean.float(), "matrix": self.matrix.float(), "inverse": self.inverse.float(),
                "eigenvalues": self.eigenvalues.float()}


def fit_whitening(x: Tensor, kind: str, eps: float = 1e-4) -> Whitening:
    """PCA or ZCA whitening of the rows of `x [N, d]` (eps: floor added to each eigenvalue, relative to their mean)."""
    if kind not in WHITEN_CHOICES[1:]:
        raise choices_error("whitening", kind, WHITEN_CHOICES[1:])
    n, d = x.shape
    if n < 2:
        raise WorkbenchError(f"whitening needs at least 2 rows to estimate a covariance; got {n}")
    xd = x.detach().to("cpu", torch.float64)
    mean = xd.mean(0)
    c = xd - mean
    cov = c.t() @ c / (n - 1)
    lam, v = torch.linalg.eigh(cov)
    lam, v = lam.flip(0).clamp_min(0), v.flip(1)
    # a deterministic sign per eigenvector (largest entry positive): the same sample gives the same map
    # whichever sign the solver returned, so a resumed run refits exactly the map it trained with
    v = v * torch.sign(v.gather(0, v.abs().argmax(0, keepdim=True)))
    reg = lam + eps * float(lam.mean().clamp_min(1e-30))
    if float(reg.min()) <= 0:
        raise WorkbenchError("the whitening sample has no variance; use another --whiten-source or a larger --whiten-eps")
    m = v / reg.sqrt()  # pca: rotate to principal axes, unit variance along each
    inv = reg.sqrt()[:, None] * v.t()
    if kind == "zca":  # rotate back to the input axes: the whitened input nearest the raw one
        m, inv = m @ v.t(), v @ inv
    return Whitening(kind, mean, m, inv, lam, n)


@torch.no_grad()
def fold_whitening(sae: "SparseAutoencoder", w: Whitening) -> None:
    """Make an SAE trained on `w.apply(x)` take raw `x`, with identical codes (see the module docstring)."""
    dev, dt = sae.W_dec.device, sae.W_dec.dtype
    m, inv, mean = w.matrix.to(dev), w.inverse.to(dev), w.mean.to(dev)
    b_dec = sae.b_dec.double() @ inv + mean
    enc = sae.enc_weight.double() @ m.t()  # enc_weight is W_enc^T: (M @ W_enc)^T = W_enc^T @ M^T
    w_dec = sae.W_dec.double() @ inv
    sae.b_dec.copy_(b_dec.to(dt))
    sae.enc_weight.copy_(enc.to(dt))
    sae.W_dec.copy_(w_dec.to(dt))
    if hasattr(sae.cfg, "whiten"):
        sae.cfg = dataclasses.replace(sae.cfg, whiten=w.kind)


@lru_cache(maxsize=None)
def _fold_preserves_codes(arch: str) -> bool:
    from saes.config import SAEConfig
    from saes.registry import build_sae

    gen = torch.Generator().manual_seed(0)
    d, f = 6, 24
    sae = build_sae(SAEConfig(architecture=arch, d_in=d, num_features=f, k=3), generator=gen)
    with torch.no_grad():
        sae.b_enc.copy_(0.1 * torch.randn(f, generator=gen))
        sae.b_dec.copy_(0.1 * torch.randn(d, generator=gen))
    sae.eval()
    x = 2.0 * torch.randn(64, d, generator=gen, dtype=torch.float64) @ torch.randn(d, d, generator=gen,
                                                                                    dtype=torch.float64)
    w = fit_whitening(x + 1.0, "pca")
    folded = copy.deepcopy(sae)
    fold_whitening(folded, w)
    with torch.no_grad():
        a = sae.encode(w.apply(x + 1.0).float()).to_dense()
        b = folded.encode((x + 1.0).float()).to_dense()
    return bool(torch.equal(a > 0, b > 0)) and bool(torch.allclose(a, b, rtol=1e-3, atol=1e-4))


def check_foldable(archs: tuple[str, ...], kind: str) -> None:
    """Refuse, in one line, architectures whose codes a folded whitening would change."""
    bad = [a for a in archs if not _fold_preserves_codes(a)]
    if bad:
        raise WorkbenchError(
            f"--whiten {kind} cannot be folded into {', '.join(bad)} (its encoder reads the decoder's geometry, "
            f"which whitening changes); use --whiten none for it")


def read_rows(source: "ActivationSource", hook: str, n: int, *, seed: int, heldout_fraction: float) -> Tensor:
    """The first `n` rows of the training split of `source` at `hook` (shuffled by `seed`)."""
    parts: list[Tensor] = []
    got = 0
    it = source.batches([hook], min(n, 4096), shuffle=True, seed=seed, epoch=0, split="train",
                        heldout_fraction=heldout_fraction, drop_last=False)
    try:
        for batch in it:
            parts.append(batch[hook].float())
            got += parts[-1].shape[0]
            if got >= n:
                break
    finally:
        if hasattr(it, "close"):
            it.close()
    if not parts:
        raise WorkbenchError(f"the whitening source has no training rows at {hook}")
    return torch.cat(parts)[:n]


def fit_run_whitening(cfg: "TrainConfig", source: "ActivationSource", hooks: list[str],
                      scales: dict[str, float], sample: dict[str, Tensor] | None = None) -> dict[str, Whitening]:
    """One whitening per hook for a run (empty with --whiten none), applying to the scaled inputs.

    `--whiten-source init`: the trainer's initialisation sample (`sample`, scaled; read here when
    not given), the rows b_dec starts from; a directory: the first --init-sample-tokens rows of that control cache (all of its
    rows count, it is not the training data), which must hold the run's hook points.
    """
    if cfg.whiten == "none":
        return {}
    if cfg.whiten_source == "init":
        from saes.initialise import init_sample

        if sample is None:
            sample = init_sample(source, cfg, hooks, scales)  # scaled already
        return {h: fit_whitening(sample[h], cfg.whiten, cfg.whiten_eps) for h in hooks}
    from saes.data import open_cache

    if not Path(cfg.whiten_source).is_dir():
        raise WorkbenchError(f"--whiten-source {cfg.whiten_source!r} is neither 'init' nor a cache directory")
    ctrl = open_cache(cfg.whiten_source)
    missing = [h for h in hooks if h not in list(ctrl.hooks)]
    if missing:
        raise WorkbenchError(f"--whiten-source {cfg.whiten_source} lacks hook point(s) {missing}; it has {list(ctrl.hooks)}")
    bad = [h for h in hooks if int(ctrl.d_model(h)) != int(source.d_model(h))]
    if bad:
        raise WorkbenchError(f"--whiten-source {cfg.whiten_source} has d_model {ctrl.d_model(bad[0])} at {bad[0]}; "
                             f"the training data has {source.d_model(bad[0])}")
    return {h: fit_whitening(read_rows(ctrl, h, cfg.init_sample_tokens, seed=cfg.seed, heldout_fraction=0.0) * scales[h],
                             cfg.whiten, cfg.whiten_eps) for h in hooks}


def whiten_sample(sample: dict[str, Tensor], whitening: dict[str, Whitening]) -> dict[str, Tensor]:
    """The initialisation sample as the SAEs will see it (unchanged for hooks without a whitening)."""
    return {h: whitening[h].apply(x) if h in whitening else x for h, x in sample.items()}
