"""Reading and patching one activation per prompt at a (hook point, named position) site.

Every prompt of a task has one length, and each named position is one index per prompt, so a
site's activation is `act[n, positions[n]]` and a patch writes exactly that entry. Many patched
variants of the same prompts run as one stacked batch (the last position's logits are all that
is kept), which is what makes a site's twenty-odd interventions affordable on a CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from workbench.hooks import capture, replacing


@torch.no_grad()
def site_activations(lm, tokens: Tensor, hooks: Sequence[str], positions: dict[str, Tensor],
                     batch_size: int = 64) -> dict[tuple[str, str], Tensor]:
    """{(hook, position name): [N, d]} read in one forward pass per batch, stopped after the deepest hook."""
    lm.check_hooks(list(hooks))
    out: dict[tuple[str, str], list[Tensor]] = {(h, p): [] for h in hooks for p in positions}
    device = next(lm.bridge.parameters()).device
    for s in range(0, tokens.shape[0], batch_size):
        acts = capture(lm, tokens[s:s + batch_size].to(device), list(hooks), stop=True)
        rows = torch.arange(acts[hooks[0]].shape[0])
        for h in hooks:
            for p, idx in positions.items():
                # per-head hooks ([b, T, heads, d_head]) are flattened to one vector per prompt
                out[(h, p)].append(acts[h][rows, idx[s:s + batch_size].to(acts[h].device)].flatten(1).float().cpu())
    return {k: torch.cat(v) for k, v in out.items()}


@torch.no_grad()
def patched_logits(lm, tokens: Tensor, hook: str | None, positions: Tensor, values: Tensor | None,
                   batch_size: int = 64) -> Tensor:
    """Last-position logits [N, vocab] with act[n, positions[n]] := values[n] at `hook` (None: clean)."""
    if values is not None:
        lm.check_hooks([hook])
    device = next(lm.bridge.parameters()).device
    outs = []
    for s in range(0, tokens.shape[0], batch_size):
        tok = tokens[s:s + batch_size].to(device)
        if values is None:
            logits = lm.bridge(tok)
        else:
            pos = positions[s:s + batch_size].to(device)
            val = values[s:s + batch_size]

            def fn(act: Tensor, site, pos=pos, val=val) -> Tensor:
                act = act.clone()
                rows = torch.arange(act.shape[0], device=act.device)
                act[rows, pos] = val.to(act.device, act.dtype).reshape(act[rows, pos].shape)
                return act

            with replacing(lm, hook, fn):
                logits = lm.bridge(tok)
        outs.append(logits[:, -1].float().cpu())
        del logits
    return torch.cat(outs)


def sufficiency(ld_patched: Tensor, ld_clean: Tensor) -> float:
    """LD with a -> â over LD clean (means over prompts): 1 when â carries all the task needs."""
    return float(ld_patched.mean() / ld_clean.mean())


def necessity(ld_int: Tensor, ld_clean: Tensor, ld_mean_ablated: Tensor) -> float:
    """1 − |LD_meanabl − LD_int| / |LD_meanabl − LD_clean|, LD_int with a -> E[a] + (a − â).

    1 when removing â's part hurts as much as mean-ablating the whole activation; 0 when it does
    not hurt at all (â = E[a] leaves a untouched).
    """
    abl, it, clean = float(ld_mean_ablated.mean()), float(ld_int.mean()), float(ld_clean.mean())
    return 1.0 - abs(abl - it) / abs(abl - clean) if abl != clean else float("nan")


def edit_accuracy(pred_edit: Tensor, pred_target: Tensor) -> float:
    """Share of prompts whose argmax prediction under the edit equals that under patching in a_t."""
    return float((pred_edit == pred_target).float().mean())
