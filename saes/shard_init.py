"""A rank's rows of the one-process initialisation, drawn without the whole matrix.

`SparseAutoencoder.reset_parameters` draws the decoder as one `torch.randn((F, d), generator=g)`
on the CPU, normalises each row and copies it into the encoder. A feature-parallel rank holding
rows [lo, hi) must start from exactly those rows (the run equals the one-process run), but an SAE
wider than one device cannot draw the whole matrix even once. The draw is reproducible in pieces
because of how torch fills a float32 normal tensor of n >= 16 elements on the CPU: n uniforms from
the generator, in order (one 32-bit draw each), turned into normals in independent blocks of 16
(Box-Muller on pairs within the block); when n is not a multiple of 16, the last 16 values are then
drawn again from 16 more uniforms. So element i (outside that tail) depends only on the uniforms of
its own block, and `normal_rows` advances the generator past the blocks before lo (in bounded
chunks, `torch.rand` consuming one draw per element as the fill does), draws the blocks that cover
[lo, hi) and, if needed, the tail: memory of the shard plus one chunk, time of the whole draw (as
one process spends). Every rank gets bit-identical rows to the one-process draw; tests pin it
(tests/saes/test_shard_init.py), and `replay_holds` checks it at run time on a small case, so a
torch whose sampler differs falls back to drawing the whole matrix instead of a wrong start.

Data-dependent parts of the start run after the build on every rank (saes.initialise): b_dec from
the sample is replicated (d values), and the layout refuses architectures with an
`init_from_sample` of their own (saes.feature_parallel.check_layout), so no step of the start
needs all features. An architecture whose `reset_parameters` is its own (`shardable_init`) is
built whole and cut (correct, without the memory saving).
"""

from __future__ import annotations

import copy
import functools
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from saes.base import SparseAutoencoder
from saes.registry import build_sae, sae_class

if TYPE_CHECKING:
    from saes.config import SAEConfig

_SKIP_CHUNK = 1 << 22  # uniforms consumed per call while advancing the generator (16 MiB of floats)


def _skip(gen: torch.Generator, n: int) -> None:
    while n > 0:
        c = min(n, _SKIP_CHUNK)
        torch.rand(c, generator=gen)
        n -= c


def normal_rows(gen: torch.Generator, f: int, d: int, lo: int, hi: int) -> Tensor:
    """Rows [lo, hi) of `torch.randn((f, d), generator=gen)` (float32, CPU), holding only those rows."""
    n, a, b = f * d, lo * d, hi * d
    if n < 16:  # below one block torch draws element by element: the whole is 15 numbers at most
        return torch.randn(f, d, generator=gen)[lo:hi].clone()
    full = n - n % 16  # elements in whole blocks of 16
    tail = n - 16 if n % 16 else n  # from here on, the values come from the 16 redrawn at the end
    out = torch.empty(b - a)
    a0, b1 = min(a // 16 * 16, full), min(-(-b // 16) * 16, full)
    _skip(gen, a0)
    used = a0
    if b1 > a0 and a < tail:
        blocks = torch.randn(b1 - a0, generator=gen)
        used = b1
        stop = min(b, tail)
        out[:stop - a] = blocks[a - a0:stop - a0]
        del blocks
    if b > tail:
        _skip(gen, n - used)
        last = torch.randn(16, generator=gen)
        s = max(a, tail)
        out[s - a:] = last[s - tail:b - tail]
    return out.view(hi - lo, d)


@functools.lru_cache(maxsize=None)
def replay_holds() -> bool:
    """Whether `normal_rows` reproduces this torch's whole draw (checked once on small cases)."""
    for f, d in ((13, 7), (6, 8), (40, 3)):
        whole = torch.randn(f, d, generator=torch.Generator().manual_seed(7))
        for lo, hi in ((0, 1), (1, f - 1), (f // 2, f), (f - 1, f)):
            if not torch.equal(normal_rows(torch.Generator().manual_seed(7), f, d, lo, hi), whole[lo:hi]):
                return False
    return True


def shardable_init(cls: type[SparseAutoencoder]) -> bool:
    """Whether `cls` starts from the common per-row draw (`SparseAutoencoder.reset_parameters`)."""
    return cls.reset_parameters is SparseAutoencoder.reset_parameters


@torch.no_grad()
def build_shard(cfg: "SAEConfig", gen: torch.Generator, lo: int, hi: int, *,
                device: torch.device | str | None = None) -> SparseAutoencoder:
    """An SAE of `cfg` holding only features [lo, hi): `enc_weight`, `b_enc`, `W_dec` are those rows of
    `build_sae(cfg, generator=gen)`'s, b_dec is whole (zeros until saes.initialise sets it).

    Its `cfg` (and so `num_features`) is the whole SAE's: the feature-parallel step and the save
    read the layout's bounds, not the shapes. Falls back to building the whole SAE and keeping the
    rows when the piecewise draw does not apply (`shardable_init`, `replay_holds`).
    """
    cls = sae_class(cfg.architecture)
    if not (shardable_init(cls) and replay_holds()):
        whole = build_sae(cfg, device=device, generator=gen)
        for name in ("enc_weight", "b_enc", "W_dec"):
            setattr(whole, name, torch.nn.Parameter(getattr(whole, name).detach()[lo:hi].clone()))
        return whole
    # Constructed at the shard's size (its own draw from a throwaway generator: `gen` draws the rows).
    # The shard's config is not validated: k may exceed F/N (each shard offers k candidates, some -inf).
    small = copy.copy(cfg)
    object.__setattr__(small, "num_features", hi - lo)
    sae = cls(small, device=device, generator=torch.Generator())
    sae.cfg = cfg
    w = normal_rows(gen, cfg.num_features, cfg.d_in, lo, hi)
    w /= w.norm(dim=1, keepdim=True)  # as reset_parameters: each row on its own
    sae.W_dec.copy_(w)
    sae.enc_weight.copy_(w)
    sae.b_enc.zero_()
    sae.b_dec.zero_()
    return sae
