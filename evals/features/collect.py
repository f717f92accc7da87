"""The per-shard work of the dashboard pass: encode, then fold the codes into bounded state.

State (all fixed-size, checkpointed as one safetensors file):
  counts/sums        non-zero count, sum and max per feature (density, mean)
  top_*              top-K activations per feature with their row, the token window and the
                     feature's activation over that window (text), found and decoded in-pass
  img_*              top images per feature with the feature's activation on every patch (vision)
  res_*              interval reservoirs (see `running.IntervalReservoirs`)
  co_sum/co_pair     Pearson co-moments over tracked features (sum z_i z_j over all tokens)
  cooc               co-occurrence counts of tracked features over fixed-size token chunks

Pairs are counted by scattering each token's k x k active pairs (cost k^2 per token, not F^2):
for a TopK SAE with k=32 that is 1024 updates per token, against the 21M entries a dense
update of F=4608 would touch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from evals.features.config import FeatureConfig
from evals.features.running import IntervalReservoirs, merge_top, move_payload


class FeatureCollector:
    def __init__(self, num_features: int, cfg: FeatureConfig, vision: bool, patches: int,
                 tracked: Tensor) -> None:
        f, k, w = num_features, cfg.top_k, 2 * cfg.context + 1
        self.cfg, self.f, self.vision, self.patches = cfg, f, vision, patches
        self.tokens = torch.zeros((), dtype=torch.long)
        self.nnz = torch.zeros(f, dtype=torch.long)
        self.sum = torch.zeros(f, dtype=torch.float64)
        self.max = torch.zeros(f)
        self.top_val = torch.full((f, k), float("-inf"))
        self.top_row = torch.full((f, k), -1, dtype=torch.long)
        self.top_tok = torch.full((f, k, w), -1, dtype=torch.int32)
        self.top_act = torch.zeros(f, k, w)
        ki = cfg.top_images if vision else 1
        self.img_val = torch.full((f, ki), float("-inf"))
        self.img_id = torch.full((f, ki), -1, dtype=torch.long)
        self.img_act = torch.zeros(f, ki, max(patches, 1))
        self.res = IntervalReservoirs(f, cfg.fine_bins, cfg.samples)
        self.tracked = tracked  # feature ids with pair statistics
        self.slot = torch.full((f,), -1, dtype=torch.long)
        self.slot[tracked] = torch.arange(tracked.numel())
        t = tracked.numel()
        self.co_sum = torch.zeros(t, dtype=torch.float64)
        self.co_pair = torch.zeros(t * t, dtype=torch.float64)
        self.cooc = torch.zeros(t, t)
        self.chunks = torch.zeros((), dtype=torch.long)

    _STATE = ("tokens", "nnz", "sum", "max", "top_val", "top_row", "top_tok", "top_act", "img_val", "img_id", "img_act",
              "tracked", "co_sum", "co_pair", "cooc", "chunks")

    def state(self) -> dict[str, Tensor]:
        return {**{n: getattr(self, n) for n in self._STATE}, **self.res.state("res_")}

    def load(self, tensors: dict[str, Tensor]) -> None:
        for n in self._STATE:
            getattr(self, n).copy_(tensors[n])
        self.res.load(tensors, "res_")

    # -------------------------------------------------------------------------------------
    @torch.no_grad()
    def consume(self, sae, acts: Tensor, ids: dict[str, Tensor], row0: int, key_gen: torch.Generator,
                device: torch.device) -> None:
        """Fold one shard (`acts [n, d]`, its row ids, first global row `row0`) into the state."""
        n = acts.shape[0]
        rows, cols, vals = [], [], []
        pair_buf = torch.zeros(self.co_pair.numel(), dtype=torch.float32)
        for c in range(0, n, self.cfg.batch_size):
            x = acts[c:c + self.cfg.batch_size].to(device=device, dtype=torch.float32)
            codes = sae.encode(x)
            keep = codes.vals > 0
            r, f, v = codes.rows[keep].cpu() + c, codes.cols[keep].cpu(), codes.vals[keep].float().cpu()
            self._pairs(r - c, f, v, x.shape[0], pair_buf)
            rows.append(r), cols.append(f), vals.append(v)
        self.co_pair += pair_buf
        r, f, v = torch.cat(rows), torch.cat(cols), torch.cat(vals)
        self.tokens += n
        self.nnz.index_add_(0, f, torch.ones_like(f))
        self.sum.index_add_(0, f, v.double())
        self.max.scatter_reduce_(0, f, v, "amax")
        order = torch.argsort(r * self.f + f)
        lookup = ((r * self.f + f)[order], v[order])
        if self.vision:
            self._top_images(r, f, v, ids, lookup)
        else:
            self._top_contexts(r, f, v, ids, row0, lookup)
        key = torch.rand(r.numel(), generator=key_gen)
        self.res.update(f, v, r + row0, key)
        self._cooccurrence(r, f, n)

    # -------------------------------------------------------------------------------------
    def _acts_at(self, lookup: tuple[Tensor, Tensor], rows: Tensor, feats: Tensor) -> Tensor:
        """Activation of feature `feats` at shard rows `rows` (same shape), 0 where inactive."""
        keys, vals = lookup
        q = rows * self.f + feats
        i = torch.searchsorted(keys, q).clamp_max(max(keys.numel() - 1, 0))
        hit = keys[i] == q if keys.numel() else torch.zeros_like(q, dtype=torch.bool)
        return torch.where(hit, vals[i] if keys.numel() else 0.0, torch.zeros((), dtype=torch.float32))

    def _top_contexts(self, r: Tensor, f: Tensor, v: Tensor, ids: dict[str, Tensor], row0: int,
                      lookup: tuple[Tensor, Tensor]) -> None:
        res = merge_top(self.top_val, f, v)
        if res is None:
            return
        touched, src, cand = res
        new = src >= touched.numel() * self.top_val.shape[1]
        idx = cand[src[new] - touched.numel() * self.top_val.shape[1]]
        lr, lf = r[idx], f[idx]
        n = ids["token_ids"].shape[0]
        d = torch.arange(-self.cfg.context, self.cfg.context + 1)
        rr = lr[:, None] + d[None, :]
        inside = (rr >= 0) & (rr < n)
        rc = rr.clamp(0, n - 1)
        ctx = ids["context_ids"]
        same = inside & (ctx[rc] == ctx[lr][:, None])
        tok = torch.where(same, ids["token_ids"][rc], torch.full_like(rc, -1)).to(torch.int32)
        act = torch.where(same, self._acts_at(lookup, rc, lf[:, None].expand_as(rc)), torch.zeros(()))
        for payload, fresh in ((self.top_row, lr + row0), (self.top_tok, tok), (self.top_act, act)):
            t, k = touched.numel(), payload.shape[1]
            old = payload[touched].reshape(t * k, *payload.shape[2:])
            merged = old[src.clamp_max(t * k - 1)].clone()
            merged[new] = fresh.to(payload.dtype)
            payload[touched] = merged.view(t, k, *payload.shape[2:])

    def _top_images(self, r: Tensor, f: Tensor, v: Tensor, ids: dict[str, Tensor],
                    lookup: tuple[Tensor, Tensor]) -> None:
        ctx = ids["context_ids"]
        local = ctx - ctx[0]
        n_img = int(local[-1]) + 1
        start = torch.searchsorted(local, torch.arange(n_img))
        best = torch.zeros(self.f * n_img).scatter_reduce_(0, f * n_img + local[r], v, "amax")
        nz = best.nonzero().squeeze(1)
        cf, ci = nz // n_img, nz % n_img
        res = merge_top(self.img_val, cf, best[nz])
        if res is None:
            return
        touched, src, cand = res
        p = self.img_act.shape[2]
        fi, ii = cf[cand], ci[cand]
        rows = start[ii][:, None] + torch.arange(p)[None, :]
        valid = rows < local.numel()
        rows_c = rows.clamp_max(local.numel() - 1)
        valid &= local[rows_c] == ii[:, None]
        heat = torch.where(valid, self._acts_at(lookup, rows_c, fi[:, None].expand_as(rows_c)), torch.zeros(()))
        move_payload(self.img_id, touched, src, ids["image_ids"][start[ii]])
        move_payload(self.img_act, touched, src, heat)

    def _pairs(self, r: Tensor, f: Tensor, v: Tensor, b: int, buf: Tensor) -> None:
        """Pearson co-moments: sum z_i and sum z_i z_j over tracked features, zeros included.

        Each token's active pairs are scattered into a float32 buffer for this shard (int32
        indices, float32 products: half the memory traffic), then added to the float64 totals,
        so float32 rounding never accumulates over more than one shard.
        """
        s = self.slot[f]
        keep = s >= 0
        r, s, v = r[keep], s[keep], v[keep]
        if r.numel() == 0:
            return
        self.co_sum.index_add_(0, s, v.double())
        counts = torch.bincount(r, minlength=b)
        t = self.tracked.numel()
        width = int(counts.max())
        if bool((counts == width).all()):  # every token has the same number of entries (TopK)
            ps, pv = s.view(b, width).int(), v.view(b, width)
        else:
            offs = torch.cumsum(counts, 0) - counts
            pos = torch.arange(r.numel()) - offs[r]
            ps = torch.zeros(b, width, dtype=torch.int32)
            pv = torch.zeros(b, width)
            ps[r, pos] = s.int()
            pv[r, pos] = v
        idx = (ps[:, :, None] * t + ps[:, None, :]).reshape(-1)
        val = (pv[:, :, None] * pv[:, None, :]).reshape(-1)
        buf.index_add_(0, idx, val)

    def _cooccurrence(self, r: Tensor, f: Tensor, n: int) -> None:
        """Binary co-occurrence of tracked features within consecutive chunks of `chunk_tokens` rows."""
        s = self.slot[f]
        keep = s >= 0
        chunk = r[keep] // self.cfg.chunk_tokens
        n_chunks = (n + self.cfg.chunk_tokens - 1) // self.cfg.chunk_tokens
        a = torch.zeros(n_chunks, self.tracked.numel())
        a[chunk, s[keep]] = 1.0
        self.cooc.addmm_(a.t(), a)
        self.chunks += n_chunks
