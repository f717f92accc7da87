"""Multi-dimensional features after "Not All Language Model Features Are Linear" (Engels et al. 2024).

A cluster of decoder directions may jointly encode one irreducible multi-dimensional feature
(days of the week on a circle). For the tokens where any member fires, the cluster's part of
the reconstruction, `sum_i a_i d_i` over members, is projected to its top 2 principal
components; a circle or other low-dimensional shape there is the signature.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from evals.features.build import check_compatible
from harvesting.reader import CacheReader


def _encoded_batches(sae, cache: str | Path, max_tokens: int, batch_size: int):
    """(offset, codes, token_ids or None) of each batch of the first `max_tokens` cached rows at the
    SAE's hook, in cache order with bounded memory. A cache without the SAE's hook point (or from
    another model, or of another width) is refused, as the feature build refuses it."""
    reader = CacheReader(cache)
    hook = check_compatible(sae, reader)
    seen = 0
    for i in range(len(reader.shards)):
        if seen >= max_tokens:
            return
        shard = reader.load_shard(i, [hook])
        x = shard[hook]
        for a in range(0, x.shape[0], batch_size):
            b = min(a + batch_size, x.shape[0], a + max_tokens - seen)
            yield seen, sae.encode(x[a:b].float()), (shard["token_ids"][a:b] if "token_ids" in shard else None)
            seen += b - a
            if seen >= max_tokens:
                return


@torch.no_grad()
def cluster_reconstructions(sae, cache: str | Path, members: list[int] | Tensor, max_tokens: int = 50_000,
                            batch_size: int = 4096) -> dict[str, np.ndarray]:
    """The cluster's reconstruction on every token (of the first `max_tokens` read) where a member fires.

    Returns `recon [n, d]`, `token_ids [n]` (text caches) and `winner [n]` (the member with the
    largest activation), read in cache order with bounded memory. A cache of another hook, model or
    width is refused: reading another layer's activations would draw a different layer's geometry.
    """
    members = torch.as_tensor(members, dtype=torch.long)
    recon, toks, winner = [], [], []
    for _, codes, tok in _encoded_batches(sae, cache, max_tokens, batch_size):
        z = codes.to_dense()[:, members]
        hit = (z > 0).any(1)
        if hit.any():
            recon.append((z[hit] @ sae.W_dec[members].float()).numpy())
            winner.append(members[z[hit].argmax(1)].numpy())
            if tok is not None:
                toks.append(tok[hit].numpy())
    d = sae.d_in
    return {"recon": np.concatenate(recon) if recon else np.zeros((0, d), np.float32),
            "winner": np.concatenate(winner) if winner else np.zeros(0, np.int64),
            "token_ids": np.concatenate(toks) if toks else np.zeros(0, np.int64)}


def pca_2d(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project to the top 2 principal components; returns (coords [n, 2], explained variance ratios)."""
    from sklearn.decomposition import PCA

    if points.shape[0] < 3:
        return np.zeros((points.shape[0], 2)), np.zeros(2)
    pca = PCA(n_components=2).fit(points)
    return pca.transform(points), pca.explained_variance_ratio_


@torch.no_grad()
def cache_codes(sae, cache: str | Path, max_tokens: int = 100_000, batch_size: int = 4096) -> dict[str, object]:
    """Every token's SAE code, read once, as a sparse [tokens, features] matrix (`codes`, scipy CSC)
    with `token_ids`: scanning hundreds of clusters then costs one pass over the cache, not one each."""
    from scipy.sparse import coo_matrix

    rows, cols, vals, toks = [], [], [], []
    seen = 0
    for offset, c, tok in _encoded_batches(sae, cache, max_tokens, batch_size):
        keep = c.vals > 0
        rows.append((c.rows[keep] + offset).numpy())
        cols.append(c.cols[keep].numpy())
        vals.append(c.vals[keep].float().numpy())
        if tok is not None:
            toks.append(tok.numpy())
        seen = offset + c.batch_size
    codes = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                       shape=(seen, sae.num_features)).tocsc()
    return {"codes": codes, "token_ids": np.concatenate(toks) if toks else np.zeros(0, np.int64)}


def reconstructions_from_codes(codes: dict[str, object], w_dec: Tensor, members: list[int] | Tensor) -> dict[str, np.ndarray]:
    """`cluster_reconstructions` from codes read by `cache_codes`: `recon`, `winner`, `token_ids`
    (and `rows`, the token index in the cache) for the tokens where any member fires."""
    members_np = np.asarray(torch.as_tensor(members, dtype=torch.long))
    sub = codes["codes"][:, members_np].tocsr()
    hit = np.flatnonzero(np.diff(sub.indptr) > 0)
    z = sub[hit].toarray().astype(np.float32)
    recon = z @ w_dec.detach()[torch.as_tensor(members_np)].float().numpy()
    toks = codes["token_ids"]
    return {"recon": recon, "winner": members_np[z.argmax(1)] if len(hit) else np.zeros(0, np.int64),
            "token_ids": toks[hit] if len(toks) else np.zeros(0, np.int64), "rows": hit}
