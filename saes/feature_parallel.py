"""Feature-parallel training: each rank holds F/N features of an SAE (the process groups are `workbench.distributed`).

For SAEs wider than one device holds (OpenAI's 16M-latent SAEs split their features across
GPUs), rank r of a feature group of N holds rows [r F/N, (r+1) F/N) of `enc_weight`, `b_enc` and
`W_dec`, and their Adam moments; `b_dec` is replicated. A step, on every rank of the group, with
the same tokens:

    pre_r   = (x - b_dec) W_enc[:, shard r] + b_enc[shard r]          local, [B, F/N]
    picks   = top-k over the union of every rank's own top-k           one all-gather of B x k
    x_hat   = all-reduce_r( sum of its picks' relu(pre) W_dec rows ) + b_dec

The k largest of the union of per-rank top-k candidates are the global top-k (each of the global
top-k is among its own rank's top-k), so the picks are the one-process picks. Every rank then
holds the same x_hat and loss; the all-reduce's backward is the identity (each rank's share of
x_hat has the loss's gradient), and the encoder input (x - b_dec) goes through a copy whose
backward sums the ranks' gradients (Megatron's f/g pair), so b_dec's gradient is whole and equal
on every rank. The decoder-gradient projection, the renormalisation and Adam are per feature
(local); the gradient-norm clip sums the shards' squares over the group. AuxK picks among the
dead features by the same merge.

Combined with data parallelism, the run's W = D x N ranks form D replicas of N consecutive ranks:
a replica reads its 1/D of each batch, gradients are summed over the ranks holding the same shard.

Ties: the merge orders candidates by torch.topk; an exact tie at the k-th place may resolve to
another feature of equal value than one process would (never with continuous activations, and
every rank of a group always resolves it the same way).

No rank ever holds a whole SAE (an SAE no single device can hold even once must start, resume
and save): a rank builds only its rows, equal bit for bit to those rows of the one-process
initialisation (saes.shard_init replays the one-process draw piece by piece); a resume reads only
its rows of the checkpoint (saes.shard_files.read_rows); checkpoints and the saved SAE are the
ordinary files of a one-process run, written from the rows (saes.feature_parallel_output: the
run's rank 0 receives one block at a time). The held-out evaluation at the end is split like the
step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import Tensor

from saes.base import SparseAutoencoder, StepContext, StepOutput
from saes.kernels import SparseCodes, sparse_decode
from saes.losses import moment_sums, variance_from_sums
from saes.registry import architecture_classes, sae_class
from saes.shard_init import build_shard
from workbench.distributed import DistContext
from workbench.errors import WorkbenchError

if TYPE_CHECKING:
    from saes.config import SAEConfig
    from saes.slot import Slot

# Parameters split along their first (feature) axis; every other parameter is replicated.
SHARDED = ("enc_weight", "b_enc", "W_dec")


def _splittable(cls: type[SparseAutoencoder]) -> bool:
    # the policy, and no data-dependent start of its own (`init_from_sample` sees one rank's rows here)
    return getattr(cls, "feature_parallel", False) and cls.init_from_sample is SparseAutoencoder.init_from_sample


def feature_parallel_architectures() -> tuple[str, ...]:
    """The architectures whose training step this layout can split (class policy `feature_parallel`)."""
    return tuple(sorted(c.architecture for c in architecture_classes() if _splittable(c)))


def check_layout(n: int, saes: list[tuple[str, "SAEConfig"]]) -> None:
    """Refuse, in one line, an SAE the layout cannot split into `n` equal shards."""
    for name, scfg in saes:
        if not _splittable(sae_class(scfg.architecture)):
            raise WorkbenchError(
                f"--feature-parallel {n}: architecture {scfg.architecture!r} ({name}) cannot split its features "
                f"across ranks; architectures that can: {', '.join(feature_parallel_architectures())}")
        f = scfg.num_features
        if f % n:
            ok = [m for m in range(1, min(f, 64) + 1) if f % m == 0]
            raise WorkbenchError(
                f"--feature-parallel {n}: {name} has {f} features, which do not split into {n} equal shards; "
                f"use a divisor of {f} (e.g. {', '.join(map(str, ok[:12]))}) or another --expansion")


def feature_layout(n: int, dist: DistContext) -> "FeatureParallel | None":
    """The layout for `--feature-parallel n` over the run's ranks (None for n = 1: every rank holds everything)."""
    if n == 1:
        return None
    w = dist.world_size
    if n < 1 or w % n:
        ok = [m for m in range(1, w + 1) if w % m == 0]
        raise WorkbenchError(
            f"--feature-parallel {n} must divide the number of processes of this run ({w}; start them with "
            f"torchrun --nproc-per-node); valid here: {', '.join(map(str, ok))}")
    data, features = dist.split(n)
    return FeatureParallel(data, features)


class _ToFeatures(torch.autograd.Function):
    """Identity forward; backward sums the ranks' gradients (each rank's shard read the same input)."""

    @staticmethod
    def forward(ctx, x: Tensor, group: DistContext) -> Tensor:  # type: ignore[override]
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return ctx.group.reduce(g.contiguous().clone(), "sum"), None


class _FromFeatures(torch.autograd.Function):
    """Sum of the ranks' partial decodes forward; identity backward (every rank holds the same loss)."""

    @staticmethod
    def forward(ctx, part: Tensor, group: DistContext) -> Tensor:  # type: ignore[override]
        return group.reduce(part.clone(), "sum")

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return g, None


@dataclasses.dataclass
class FeatureParallel:
    """This rank's place in the layout: `data` joins the replicas of its shard, `features` its shard group."""

    data: DistContext
    features: DistContext

    @property
    def n(self) -> int:
        return self.features.world_size

    def bounds(self, num_features: int) -> tuple[int, int]:
        per = num_features // self.n
        return self.features.rank * per, (self.features.rank + 1) * per

    # ------------------------------------------------------------------ layout of a slot

    def build(self, scfg: "SAEConfig", gen: torch.Generator, device: torch.device) -> SparseAutoencoder:
        """This rank's rows of the SAE `build_sae(scfg, generator=gen)` would build (saes.shard_init)."""
        lo, hi = self.bounds(scfg.num_features)
        return build_shard(scfg, gen, lo, hi, device=device)

    def adopt(self, slot: "Slot") -> None:
        """Train `slot` (built by `build`) with the split step."""
        slot.step_fn = lambda x, ctx, sae=slot.sae: self.training_step(sae, x, ctx)

    def rows_of(self, name: str, shape: tuple[int, ...]) -> tuple[int, int] | None:
        """This rank's rows of a checkpoint tensor (`saes.checkpoint.pack_slot`'s names), None if it is whole."""
        parts = name.split(".")
        if len(parts) >= 2 and parts[0] in ("sae", "opt") and parts[1] in SHARDED and len(shape) >= 1:
            return self.bounds(shape[0])
        return None

    def broadcaster(self, slots: list["Slot"], world: DistContext) -> Callable[[Tensor], object]:
        """saes.initialise's broadcast: a replicated tensor from the run's rank 0, a rank's rows from the
        first replica holding the same rows (the rows of another shard must not overwrite them)."""
        rows = {getattr(s.sae, name).data_ptr() for s in slots for name in SHARDED}

        def broadcast(t: Tensor) -> object:
            if t.data_ptr() not in rows:
                return world.broadcast_(t)
            if self.data.enabled:
                dist.broadcast(t, self.data.global_ranks[0], group=self.data.group)
            return t

        return broadcast

    def local_numel(self, slot: "Slot") -> tuple[int, int]:
        """(parameter elements, Adam-state elements) this rank holds for `slot`."""
        params = sum(p.numel() for p in slot.params)
        state = sum(v.numel() for p in slot.params for v in slot.opt.state.get(p, {}).values()
                    if isinstance(v, Tensor) and v.dim() > 0)
        return params, state

    # ------------------------------------------------------------------ the step

    def clip_grad_norm_(self, slot: "Slot", max_norm: float) -> Tensor:
        """torch.nn.utils.clip_grad_norm_ over the whole SAE: the shards' squares summed over the group."""
        sq_shard = torch.zeros((), dtype=torch.float32, device=slot.params[0].device)
        sq_rep = torch.zeros_like(sq_shard)
        for name, p in zip(slot.param_names, slot.params):
            if p.grad is not None:
                sq = p.grad.detach().float().pow(2).sum()
                if name in SHARDED:
                    sq_shard += sq
                else:
                    sq_rep += sq
        norm = (self.features.reduce(sq_shard, "sum") + sq_rep).sqrt()
        coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
        for p in slot.params:
            if p.grad is not None:
                p.grad.mul_(coef.to(p.grad.dtype))
        return norm

    def merged_topk(self, pre: Tensor, k: int, lo: int, cols: Tensor | None = None) -> Tensor:
        """Global ids [B, k] of each token's k largest pre-activations over all shards, largest first.

        `pre` is this rank's [B, F/N] block (rank offset `lo`); `cols`, local feature ids, restricts
        the choice to them (AuxK's dead features). Each rank offers its own top-k (padded with -inf
        where it has fewer candidates); the top-k of their union is the global top-k.
        """
        b = pre.shape[0]
        vals = pre.new_full((b, k), float("-inf"))
        ids = torch.full((b, k), -1, dtype=torch.long, device=pre.device)
        sub = pre if cols is None else pre[:, cols]
        kl = min(k, sub.shape[1])
        if kl > 0:
            v, i = sub.topk(kl, dim=1)
            vals[:, :kl] = v
            ids[:, :kl] = (i if cols is None else cols[i]) + lo
        all_vals = torch.cat(self.features.all_gather(vals), 1)
        all_ids = torch.cat(self.features.all_gather(ids), 1)
        pos = all_vals.topk(k, dim=1).indices
        return all_ids.gather(1, pos)

    def decode_part(self, pre: Tensor, ids: Tensor, W_dec: Tensor, lo: int) -> tuple[Tensor, Tensor, Tensor]:
        """(sum over ranks of the picks' relu(pre) x W_dec rows, this rank's values, their local ids)."""
        hi = lo + W_dec.shape[0]
        rows, j = ((ids >= lo) & (ids < hi)).nonzero(as_tuple=True)
        lid = ids[rows, j] - lo
        vals = pre[rows, lid].relu()
        # the sparse decode kernel (saes.kernels): no [picks, d] gather of decoder rows, forward or backward
        part = sparse_decode(SparseCodes.from_rows_cols(vals, rows, lid, pre.shape[0], W_dec.shape[0]), W_dec)
        return _FromFeatures.apply(part, self.features), vals, lid

    def training_step(self, sae: SparseAutoencoder, x: Tensor, ctx: StepContext) -> StepOutput:
        """The per-token top-k step (TopK, Multi-TopK, AuxK) of `saes.base.selector_training_step`, split by features."""
        sae.check_input(x)
        f, k = sae.num_features, sae.cfg.k
        lo, hi = self.bounds(f)
        xc = _ToFeatures.apply(x - sae.b_dec, self.features)
        pre = xc @ sae.enc_weight.t() + sae.b_enc
        if ctx.matmul_dtype is None:
            sel = pre.detach()
        else:  # choose in the matmul dtype, values stay float32 (as the one-process encoder does)
            dt = ctx.matmul_dtype
            sel = (xc.detach().to(dt) @ sae.enc_weight.detach().to(dt).t()).float() + sae.b_enc.detach()
        kk = min(4 * k, f) if ctx.multi_topk else k
        picks = self.merged_topk(sel, kk, lo)
        part, vals, lid = self.decode_part(pre, picks[:, :k], sae.W_dec, lo)
        x_hat = part + sae.b_dec
        sse = (x_hat - x).pow(2).sum()
        loss = sse / ctx.denom
        terms: dict[str, Tensor] = {}
        if ctx.multi_topk:
            part_m, _, _ = self.decode_part(pre, picks, sae.W_dec, lo)
            term = (part_m + sae.b_dec - x).pow(2).sum() / ctx.denom
            loss = loss + term / 8
            terms["multi_topk"] = term.detach()
        aux = sae.aux_selector(ctx)
        if aux is not None:
            dead = aux.features
            local = dead[(dead >= lo) & (dead < hi)] - lo
            aux_ids = self.merged_topk(sel, aux.k, lo, local)
            residual = (x - x_hat).detach()
            res_var = variance_from_sums(ctx.reduce(moment_sums(residual), "sum")).to(x.dtype)
            recon, _, _ = self.decode_part(pre, aux_ids, sae.W_dec, lo)  # without b_dec (see aux_reconstruction_loss)
            term = (recon - residual).pow(2).sum() / res_var
            loss = loss + ctx.aux_coef * term
            terms["aux"] = term.detach()
        fired = torch.zeros(f, dtype=torch.long, device=x.device)
        fired[lo:hi] = torch.bincount(lid[vals.detach() > 0], minlength=hi - lo)
        sse = sse.detach()
        if self.features.rank != 0:  # the run-wide sum of the statistics counts each replica's loss once
            sse = torch.zeros_like(sse)
            terms = {name: torch.zeros_like(t) for name, t in terms.items()}
        return StepOutput(loss, sse, fired, terms)
