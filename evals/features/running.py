"""Bounded running state of the dashboard pass: per-feature top entries and interval reservoirs.

Everything here is a fixed-size tensor whatever the cache size, so the pass can checkpoint it
as safetensors and a resumed build continues with exactly the state it stopped with.

Two structures carry the whole pass:

* `merge_top`: keep, per group, the K largest values seen so far. Used for the top-activating
  contexts (group = feature) and, with value = -random key, for the reservoirs (keeping the K
  smallest uniform keys of a stream is an exact uniform sample without replacement, and two
  such samples merge by keeping the K smallest keys of their union).
* `IntervalReservoirs`: the quantile samples need the activation intervals `max/10` wide, but
  the max is only known at the end of the pass. Each feature therefore keeps a fine grid of
  `fine_bins` bins over `[0, scale)`, `scale` the smallest power of two above its running max;
  when a larger value arrives the scale doubles and neighbouring bins merge (counts add,
  reservoirs merge by key). At the end every interval is a union of whole fine bins, so each
  interval's sample is still exactly uniform and its share exact; the intervals cover
  `[0, c)` with `max <= c <= max * (1 + 2 * intervals / fine_bins)`.
"""

from __future__ import annotations

import torch
from torch import Tensor


def merge_top(vals: Tensor, g: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
    """Insert candidates `(g, v)` into `vals [G, K]` (each row sorted descending), in place.

    Returns `(touched, src, cand)` so the caller can move payloads: row `touched[t]` slot `j`
    now holds entry `src[t*K + j]` of `cat(old entries of touched rows (T*K), kept candidates)`;
    kept candidate `i` is input candidate `cand[i]`. None when no candidate beats a row's last.
    Ties keep the earlier entry (stable sorts), so the result is a pure function of the stream.
    """
    k = vals.shape[1]
    keep = (v > vals[g, k - 1]).nonzero().squeeze(1)
    if keep.numel() == 0:
        return None
    g, v = g[keep], v[keep]
    touched, inv = torch.unique(g, return_inverse=True)
    t = touched.numel()
    all_v = torch.cat([vals[touched].reshape(-1), v])
    all_t = torch.cat([torch.arange(t).repeat_interleave(k), inv])
    o1 = torch.argsort(all_v, descending=True, stable=True)
    order = o1[torch.argsort(all_t[o1], stable=True)]
    counts = torch.bincount(all_t, minlength=t)
    starts = torch.cumsum(counts, 0) - counts
    src = order[starts.repeat_interleave(k) + torch.arange(k).repeat(t)]
    vals[touched] = all_v[src].view(t, k)
    return touched, src, keep


def move_payload(payload: Tensor, touched: Tensor, src: Tensor, new_values: Tensor) -> None:
    """Apply a `merge_top` result to a payload `[G, K, ...]`; `new_values` are the kept candidates'."""
    t, k = touched.numel(), payload.shape[1]
    old = payload[touched].reshape(t * k, *payload.shape[2:])
    merged = torch.cat([old, new_values.to(payload.dtype)])[src]
    payload[touched] = merged.view(t, k, *payload.shape[2:])


class IntervalReservoirs:
    """Per feature: fine-bin counts of non-zero activations and a uniform sample of each bin."""

    def __init__(self, num_features: int, fine_bins: int, per_bin: int) -> None:
        self.r, self.m = fine_bins, per_bin
        self.scale = torch.zeros(num_features)  # 0: the feature has not fired yet
        self.counts = torch.zeros(num_features, fine_bins, dtype=torch.long)
        self.neg_key = torch.full((num_features * fine_bins, per_bin), float("-inf"))
        self.row = torch.full((num_features * fine_bins, per_bin), -1, dtype=torch.long)
        self.val = torch.zeros(num_features * fine_bins, per_bin)

    # -- persistence -------------------------------------------------------------------
    def state(self, prefix: str) -> dict[str, Tensor]:
        return {f"{prefix}scale": self.scale, f"{prefix}counts": self.counts, f"{prefix}neg_key": self.neg_key,
                f"{prefix}row": self.row, f"{prefix}val": self.val}

    def load(self, tensors: dict[str, Tensor], prefix: str) -> None:
        for name in ("scale", "counts", "neg_key", "row", "val"):
            getattr(self, name).copy_(tensors[prefix + name])

    # -- updates -------------------------------------------------------------------------
    def _insert(self, group: Tensor, neg_key: Tensor, row: Tensor, val: Tensor) -> None:
        res = merge_top(self.neg_key, group, neg_key)
        if res is None:
            return
        touched, src, cand = res
        move_payload(self.row, touched, src, row[cand])
        move_payload(self.val, touched, src, val[cand])

    def _rescale(self, feats: Tensor, new_scale: Tensor) -> None:
        """Widen the grid of `feats` to `new_scale` (a power-of-two multiple): bins merge."""
        old = self.scale[feats]
        grew = old > 0
        shift = torch.zeros_like(old, dtype=torch.long)
        shift[grew] = torch.log2(new_scale[grew] / old[grew]).round().long()
        self.scale[feats] = new_scale
        f = feats[grew]
        if f.numel() == 0:
            return
        s = shift[grew]
        r, m = self.r, self.m
        bins = torch.arange(r)
        new_bin = bins[None, :] >> s[:, None]  # [nf, R]
        counts = torch.zeros(f.numel(), r, dtype=torch.long).scatter_add_(1, new_bin, self.counts[f])
        self.counts[f] = counts
        groups = (f[:, None] * r + bins[None, :])  # [nf, R]
        flat = groups.reshape(-1)
        keys, rows, vals = self.neg_key[flat].reshape(-1), self.row[flat].reshape(-1), self.val[flat].reshape(-1)
        dest = (f[:, None] * r + new_bin).reshape(-1).repeat_interleave(m)
        self.neg_key[flat] = float("-inf")
        self.row[flat] = -1
        self.val[flat] = 0.0
        ok = keys > float("-inf")
        self._insert(dest[ok], keys[ok], rows[ok], vals[ok])

    def update(self, f: Tensor, v: Tensor, row: Tensor, key: Tensor) -> None:
        """Add non-zero activations `v` of features `f` at global rows `row`, with uniform keys."""
        if f.numel() == 0:
            return
        bmax = torch.zeros_like(self.scale).scatter_reduce_(0, f, v, "amax")
        need = (bmax > self.scale).nonzero().squeeze(1)
        if need.numel():
            self._rescale(need, torch.exp2(torch.ceil(torch.log2(bmax[need]))))
        scale = self.scale[f]
        b = (v / scale * self.r).long().clamp_(0, self.r - 1)
        group = f * self.r + b
        self.counts.view(-1).index_add_(0, group, torch.ones_like(group))
        self._insert(group, -key, row, v)

    # -- results ---------------------------------------------------------------------------
    def intervals(self, max_act: Tensor, n_intervals: int) -> dict[str, Tensor]:
        """Intervals of width `q` fine bins (`q` the fewest that cover the max), their counts and samples.

        Returns `edges [F, n+1]`, `counts [F, n]`, `rows/vals [F, n, m]` (row -1: no sample).
        """
        f_n = self.scale.numel()
        width = self.scale / self.r
        q = torch.ceil(max_act / (n_intervals * width.clamp_min(1e-30))).clamp_min(1).long()
        q[self.scale == 0] = 1
        edges = (torch.arange(n_intervals + 1)[None, :] * q[:, None]).float() * width[:, None]
        b = torch.arange(self.r)
        interval = (b[None, :] // q[:, None]).clamp_max(n_intervals - 1)  # [F, R]; bins past c are empty
        counts = torch.zeros(f_n, n_intervals, dtype=torch.long).scatter_add_(1, interval, self.counts)
        neg = torch.full((f_n * n_intervals, self.m), float("-inf"))
        rows = torch.full((f_n * n_intervals, self.m), -1, dtype=torch.long)
        vals = torch.zeros(f_n * n_intervals, self.m)
        dest = (torch.arange(f_n)[:, None] * n_intervals + interval).reshape(-1).repeat_interleave(self.m)
        keys = self.neg_key.reshape(-1)
        ok = keys > float("-inf")
        res = merge_top(neg, dest[ok], keys[ok])
        if res is not None:
            touched, src, cand = res
            move_payload(rows, touched, src, self.row.reshape(-1)[ok][cand])
            move_payload(vals, touched, src, self.val.reshape(-1)[ok][cand])
        return {"edges": edges, "counts": counts, "rows": rows.view(f_n, n_intervals, self.m),
                "vals": vals.view(f_n, n_intervals, self.m)}

    def histogram(self, max_act: Tensor, n_bins: int) -> tuple[Tensor, Tensor]:
        """Counts of non-zero activations in `n_bins` equal bins of width `bin_width [F]` from 0."""
        f_n = self.scale.numel()
        width = self.scale / self.r
        used = torch.ceil(max_act / width.clamp_min(1e-30)).clamp(1, self.r)
        g = torch.ceil(used / n_bins).long().clamp_min(1)
        b = torch.arange(self.r)
        dest = (b[None, :] // g[:, None]).clamp_max(n_bins - 1)
        hist = torch.zeros(f_n, n_bins, dtype=torch.long).scatter_add_(1, dest, self.counts)
        return hist, g.float() * width
