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


@torch.no_grad()
def steered_target_logprobs(lm: Any, hook: str, prompts: list[str], targets: list[int], vectors: Tensor,
                            rows_per_pass: int = 64) -> Tensor:
    """`[K, prompts]` target_logprobs with each of K vectors added at every position of `hook`.

    Every setting leaves the blocks up to the hook as they are, so where a forward can resume after
    the hook (a block's resid_post, steering.measures.resume_logits) they run once for the prompts
    and each pass runs only the blocks after it (checked once against a full forward, unsteered);
    elsewhere each pass is a whole steered forward."""
    from steering.measures import logits_at, resume_logits, start_layer
    from workbench.hooks import capture

    if not targets:
        raise WorkbenchError("the gradient score needs target tokens (a concept with target words)")
    n, k_all = len(prompts), vectors.shape[0]
    b = encode_texts(lm, prompts, side="right")
    last = (b.lengths - 1)[:, None]
    tgt = torch.tensor(sorted(set(targets)), dtype=torch.long)
    resid = None
    if start_layer(lm, hook) is not None:  # checked: resuming unsteered gives the full forward's logits
        resid = capture(lm, b.tokens.to(next(iter(lm.bridge.parameters())).device), [hook], stop=True)[hook]
        if not torch.allclose(resume_logits(lm, hook, resid, last)[:, 0], logits_at(lm, b.tokens, last)[:, 0],
                              atol=1e-4, rtol=1e-5):
            resid = None
    out = []
    for a in range(0, k_all, max(1, rows_per_pass // n)):
        vec = vectors[a: a + max(1, rows_per_pass // n)]
        k = vec.shape[0]
        rows = vec.repeat_interleave(n, 0).unsqueeze(1)  # [k * n, 1, d]: each row its own vector
        if resid is not None:
            x = resid.repeat(k, 1, 1)
            logits = resume_logits(lm, hook, x + rows.to(x), last.repeat(k, 1))[:, 0]
        else:
            tok = b.tokens.repeat(k, 1)
            state = RunState(prompt_len=b.lengths.repeat(k), left_pad=b.left_pad.repeat(k))
            with steering(lm, [AddVector(hook, rows, 1.0, Positions("all"))], state=state):
                logits = logits_at(lm, tok, last.repeat(k, 1))[:, 0]
        lp = torch.log_softmax(logits.float(), -1).cpu()
        out.append(torch.logsumexp(lp[:, tgt], -1).view(k, n))
    return torch.cat(out)


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
