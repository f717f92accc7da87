"""SAE-targeted steering (Chalnev, Siu, Conmy 2024, arXiv 2411.02193): solve for the vector that
produces a wanted feature effect with the least side effect.

1. Measure the effect e(v) of steering along each of m candidate vectors (here: decoder rows of a
   candidate pool) — by default the mean SAE activations of the text the steered model writes,
   re-read by the unsteered model, minus the same for the unsteered model's text ("sae"); or the
   change of the next-token log-probabilities at the prompts' last token ("logits", cheaper, no
   generation).
2. Fit the linear effect map e(v) ~ v W + b by least squares over the candidates (minimum-norm
   solution when m <= d: the map is then known on the span of the candidates only).
3. For a target effect t: the paper's rule `v* = unit(unit(W t) - unit(W b))` (`form="paper"`,
   the default: W t is the input direction whose effect best matches t, and subtracting the unit
   of W b removes the effect every steering vector has regardless of direction, the side effect
   shared by all of them), or the pseudo-inverse `v* = (t - b) W^+` (`form="pinv"`: the least-norm
   vector whose fitted effect is exactly t when W has full row rank).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from steering.generation import generate
from steering.interventions import AddVector, steering
from steering.positions import Positions
from steering.reading import _device, chunks, encode_texts, pad_batch
from workbench.errors import WorkbenchError, choices_error
from workbench.hooks import capture

FORMS = ("paper", "pinv")
EFFECTS = ("sae", "logits")


def _unit(v: Tensor) -> Tensor:
    """`v / |v|`, and zero for a zero vector (no shared side effect: nothing to subtract)."""
    n = v.norm()
    return v / n if n > 1e-12 else torch.zeros_like(v)


def fit_effect_map(vectors: Tensor, effects: Tensor, ridge: float = 0.0) -> tuple[Tensor, Tensor]:
    """Least squares `effects ~ vectors @ W + b`: `W [d, k]`, `b [k]` (ridge > 0 shrinks W, not b)."""
    if vectors.shape[0] != effects.shape[0]:
        raise WorkbenchError(f"{vectors.shape[0]} steering vectors but {effects.shape[0]} measured effects")
    x = torch.cat([vectors.double(), torch.ones(vectors.shape[0], 1, dtype=torch.float64)], 1)
    y = effects.double()
    if ridge > 0:
        reg = ridge * torch.eye(x.shape[1], dtype=torch.float64)
        reg[-1, -1] = 0.0
        sol = torch.linalg.solve(x.T @ x + reg, x.T @ y)
    else:
        sol = torch.linalg.pinv(x) @ y
    return sol[:-1].float(), sol[-1].float()


def targeted_vector(w: Tensor, b: Tensor, target: Tensor, form: str = "paper") -> Tensor:
    """`[d]` unit vector whose fitted effect is the target effect `t [k]` with the least side effect."""
    if form not in FORMS:
        raise choices_error("SAE-TS solution form", form, FORMS)
    t = target.to(w)
    if form == "paper":
        return _unit(_unit(w @ t) - _unit(w @ b.to(w)))
    return _unit((t - b.to(w)) @ torch.linalg.pinv(w))


@torch.no_grad()
def measure_effects(lm: Any, sae: Any, vectors: Tensor, prompts: list[str], coeff: float, *, effect: str = "sae",
                    max_new_tokens: int = 8, rows_per_pass: int = 64) -> Tensor:
    """`[m, k]` effect of adding `coeff * vectors[i]` (at every position) on the prompts:
    `sae`: mean SAE activations over the generated tokens re-read unsteered, minus the unsteered run's (k = F);
    `logits`: mean change of the next-token log-probabilities at each prompt's last token (k = |V|)."""
    if effect not in EFFECTS:
        raise choices_error("SAE-TS effect", effect, EFFECTS)
    hook, n, m = sae.cfg.hook, len(prompts), vectors.shape[0]
    if effect == "logits":
        b = encode_texts(lm, prompts, side="right")
        last = b.lengths - 1
        base = _last_logprobs(lm, b, last, None)
        out = []
        for ks in chunks(m, max(1, rows_per_pass // n)):
            k = ks.stop - ks.start
            vec = (coeff * vectors[ks].float()).repeat_interleave(n, 0).unsqueeze(1)
            iv = AddVector(hook, vec, 1.0, Positions("all"), label="sae-ts")
            rows = type(b)(b.tokens.repeat(k, 1), b.mask.repeat(k, 1), b.left_pad.repeat(k))
            lp = _last_logprobs(lm, rows, last.repeat(k), iv)
            out.append((lp.view(k, n, -1) - base).mean(1))
        return torch.cat(out)
    kw = dict(max_new_tokens=max_new_tokens, do_sample=False)
    base = _reread(lm, sae, generate(lm, prompts, [], **kw)).mean(0)
    out = []
    for ks in chunks(m, max(1, rows_per_pass // n)):
        k = ks.stop - ks.start
        vec = (coeff * vectors[ks].float()).repeat_interleave(n, 0).unsqueeze(1)
        g = generate(lm, prompts * k, [AddVector(hook, vec, 1.0, Positions("all"), label="sae-ts")],
                     batch_size=n * k, **kw)
        out.append(_reread(lm, sae, g).view(k, n, -1).mean(1) - base)
    return torch.cat(out)


def _last_logprobs(lm: Any, b: Any, last: Tensor, iv: Any) -> Tensor:
    with steering(lm, [iv] if iv is not None else []):
        logits = lm.bridge(b.tokens.to(_device(lm)))
    rows = torch.arange(b.tokens.shape[0], device=logits.device)
    return torch.log_softmax(logits[rows, last.to(logits.device)].float(), -1).cpu()


def _reread(lm: Any, sae: Any, gen: Any) -> Tensor:
    """`[prompts, F]` mean SAE activations over each prompt's generated tokens, read by the unsteered model."""
    rows = [p + n for p, n in zip(gen.prompt_ids, gen.new_ids)]
    b = pad_batch(lm, rows, "right")
    acts = capture(lm, b.tokens.to(_device(lm)), [sae.cfg.hook], stop=True)[sae.cfg.hook].float()
    w = sae.W_dec
    out = torch.zeros(len(rows), sae.num_features)
    for i, (p, n) in enumerate(zip(gen.prompt_ids, gen.new_ids)):
        if n:
            x = acts[i, len(p): len(p) + len(n)].to(device=w.device, dtype=w.dtype)
            out[i] = sae.encode(x).to_dense().float().mean(0).cpu()
    return out
