"""Gradient score: d log p(target) / d coeff at 0 for every feature, from one backward pass.

Adding `a * d` at the hook (at the chosen positions) changes the objective L by
`dL/da |_{a=0} = sum_positions grad_h L . d` (attribution patching), so the gradient of L with
respect to one added vector `delta` (all zeros) at the hook, dotted with each decoder row, is
every feature's derivative at once. L is the mean over prompts of log P(next token is a target
token) at each prompt's last token: the quantity the sweep's `target_logprob` measures, taken at
the point where the model decides what to write next. Decoder rows are used as stored (unit norm
for this workbench's SAEs), so the score is per unit of `coeff` in `add_feature(..., unit="raw")`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from steering.interventions import AddVector, steering
from steering.positions import Positions, RunState
from steering.reading import encode_texts
from workbench.errors import WorkbenchError


def target_logprobs(lm: Any, prompts: list[str], targets: list[int], interventions: list | tuple = ()) -> Tensor:
    """`[prompts]` log sum_{t in targets} p(t | prompt) at each prompt's last token (only that token is
    unembedded: steering.measures.logits_at)."""
    from steering.measures import logits_at

    if not targets:
        raise WorkbenchError("the gradient score needs target tokens (a concept with target words)")
    b = encode_texts(lm, prompts, side="right")
    state = RunState(prompt_len=b.lengths, left_pad=b.left_pad)
    with steering(lm, list(interventions), state=state):
        logits = logits_at(lm, b.tokens, (b.lengths - 1)[:, None])[:, 0]
    lp = torch.log_softmax(logits.float(), -1)
    tgt = torch.tensor(sorted(set(targets)), dtype=torch.long, device=lp.device)
    return torch.logsumexp(lp[:, tgt], -1)


def target_objective(lm: Any, prompts: list[str], targets: list[int], interventions: list | tuple = (),
                     positions: Positions | None = None) -> Tensor:
    """Mean over prompts of log sum_{t in targets} p(t | prompt) at each prompt's last token."""
    return target_logprobs(lm, prompts, targets, interventions).mean()


def hook_gradient(lm: Any, hook: str, prompts: list[str], targets: list[int],
                  positions: Positions | None = None) -> Tensor:
    """`[d]` gradient of the objective with respect to a vector added at `hook` (at `positions`)."""
    w = next(iter(lm.bridge.parameters()))
    d = lm.bridge.cfg.d_model
    delta = torch.zeros(d, device=w.device, dtype=torch.float32, requires_grad=True)
    iv = AddVector(hook, delta, 1.0, positions or Positions("all"), label="gradient probe")
    with torch.enable_grad():
        obj = target_objective(lm, prompts, targets, [iv])
        (g,) = torch.autograd.grad(obj, delta)
    return g.detach().float().cpu()


def gradient_scores(lm: Any, sae: Any, prompts: list[str], targets: list[int],
                    positions: Positions | None = None) -> Tensor:
    """`[F]` d objective / d coeff at 0 for `coeff * W_dec[j]` added at the SAE's hook, every feature."""
    g = hook_gradient(lm, sae.cfg.hook, prompts, targets, positions)
    return sae.W_dec.detach().float().cpu() @ g
