"""The data-dependent start of a run: b_dec at a centre of the data, then each architecture's own
initialisation from the same sample, made identical on every rank."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from saes.geometric_median import geometric_median

if TYPE_CHECKING:
    from saes.config import TrainConfig
    from saes.data import ActivationSource
    from saes.slot import Slot


def init_sample(source: "ActivationSource", cfg: "TrainConfig", hooks: list[str],
                scales: dict[str, float]) -> dict[str, Tensor]:
    """The first tokens of epoch 0 (the same on every rank), scaled: b_dec's starting point."""
    n = cfg.init_sample_tokens
    parts: dict[str, list[Tensor]] = {h: [] for h in hooks}
    got = 0
    it = source.batches(hooks, cfg.batch_size, shuffle=True, seed=cfg.seed, epoch=0,
                        split="train", heldout_fraction=cfg.heldout_fraction)
    try:
        for batch in it:
            for h in hooks:
                parts[h].append(batch[h].float())
            got += next(iter(batch.values())).shape[0]
            if got >= n:
                break
    finally:
        if hasattr(it, "close"):
            it.close()
    return {h: torch.cat(v)[:n] * scales[h] for h, v in parts.items()}


@torch.no_grad()
def initialise(slots: list["Slot"], sample: dict[str, Tensor], how: str, device: torch.device,
               broadcast: Callable[[Tensor], object]) -> None:
    """b_dec = geometric median / mean / zeros of the sample, then `init_from_sample`, then a broadcast."""
    if how != "zeros":
        centres = {h: geometric_median(x) if how == "geometric_median" else x.mean(0) for h, x in sample.items()}
        for s in slots:
            s.sae.b_dec.copy_(centres[s.hook].to(device))
    for s in slots:
        s.sae.init_from_sample(sample[s.hook].to(device))
    for s in slots:  # identical start on every rank, whatever each computed
        for t in list(s.sae.parameters()) + list(s.sae.buffers()):
            broadcast(t.data)
