"""Turn the pass's running state into the saved feature data, adding what needs no pass.

After the activation pass: interval samples get their token windows from the cache's small
row files (token and context ids, no activations), and the weights give the logit lens
(`W_dec[f] @ diag(g) W_U`, the final norm's gain folded in), the nearest decoder directions and,
from the co-moments, the Pearson correlations. Token strings are decoded once and stored, so
viewing needs no model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from evals.features.collect import FeatureCollector
from evals.features.config import FeatureConfig
from evals.features.lens import final_norm, load_unembedding, logit_lens, nearest_decoders, token_strings
from evals.features.store import COOC_FILE, DATA_FILE, META_FILE
from harvesting.reader import CacheReader
from workbench.config import config_to_dict
from workbench.io import atomic_save_safetensors, atomic_write_json

log = logging.getLogger(__name__)


def pearson_top(col: FeatureCollector, n: int) -> tuple[Tensor, Tensor]:
    """Per feature, the `n` tracked features with the highest Pearson correlation over the pass."""
    f_n, t = col.f, col.tracked.numel()
    ids = torch.full((f_n, n), -1, dtype=torch.long)
    vals = torch.full((f_n, n), float("nan"))
    if t < 2:
        return ids, vals
    tokens = float(col.tokens)
    mean = col.co_sum / tokens
    pair = col.co_pair.view(t, t)
    std = (torch.diagonal(pair) / tokens - mean * mean).clamp_min(0).sqrt()
    m = min(n, t - 1)
    for a in range(0, t, 512):  # row blocks: the t x t correlation matrix never exists at once
        rows = slice(a, min(a + 512, t))
        cov = pair[rows] / tokens - mean[rows, None] * mean[None, :]
        corr = (cov / (std[rows, None] * std[None, :])).float()
        corr[~torch.isfinite(corr)] = float("-inf")
        r = torch.arange(corr.shape[0])
        corr[r, r + a] = float("-inf")
        v, j = torch.topk(corr, m, dim=1)
        j = col.tracked[j]
        v[torch.isinf(v)] = float("nan")
        j[torch.isnan(v)] = -1
        ids[col.tracked[rows], :m] = j
        vals[col.tracked[rows], :m] = v
    return ids, vals


def sample_windows(reader: CacheReader, rows: Tensor, context: int, field: str = "token_ids") -> Tensor:
    """Token ids of the +-`context` window around each global row in `rows` (-1: outside its context)."""
    flat = rows.reshape(-1)
    out = torch.full((flat.numel(), 2 * context + 1), -1, dtype=torch.int32)
    d = torch.arange(-context, context + 1)
    for i, s in enumerate(reader.shards):
        r0, r1 = s["rows"]
        sel = ((flat >= r0) & (flat < r1)).nonzero().squeeze(1)
        if sel.numel() == 0:
            continue
        ids = reader.load_shard(i, [])  # the row id fields; the reader checks paths stay inside the cache
        tok, ctx = ids[field], ids["context_ids"]
        lr = flat[sel] - r0
        rr = lr[:, None] + d[None, :]
        rc = rr.clamp(0, r1 - r0 - 1)
        same = (rr >= 0) & (rr < r1 - r0) & (ctx[rc] == ctx[lr][:, None])
        out[sel] = torch.where(same, tok[rc], torch.full_like(rc, -1)).to(torch.int32)
    return out.view(*rows.shape, 2 * context + 1)


def finalize(col: FeatureCollector, sae, sae_dir: Path, reader: CacheReader, hook: str, cfg: FeatureConfig,
             out: Path, model: Any = None, identity: str = "") -> None:
    tokens = int(col.tokens)
    nnz = col.nnz
    data: dict[str, Tensor] = {
        "density": nnz.double() / max(tokens, 1),
        "mean": torch.where(nnz > 0, col.sum / nnz.clamp_min(1), torch.zeros((), dtype=torch.float64)),
        "max": col.max,
        "nnz": nnz,
    }
    iv = col.res.intervals(col.max, cfg.intervals)
    hist, width = col.res.histogram(col.max, cfg.histogram_bins)
    data.update(int_edges=iv["edges"], int_counts=iv["counts"], int_rows=iv["rows"], int_vals=iv["vals"],
                hist=hist, hist_width=width)
    w_dec = sae.W_dec.detach().float().cpu()
    near_ids, near_vals = nearest_decoders(w_dec, cfg.neighbours)
    corr_ids, corr_vals = pearson_top(col, cfg.neighbours)
    data.update(near_ids=near_ids, near_vals=near_vals, corr_ids=corr_ids, corr_vals=corr_vals)
    vision = col.vision
    meta: dict[str, Any] = {
        "format": "sae-workbench-features", "version": 1, "identity": identity, "sae_dir": str(sae_dir.resolve()),
        "cache": str(reader.path.resolve()), "hook": hook, "model_id": reader.model_id,
        "modality": "vision" if vision else "text", "tokens": tokens, "num_features": col.f,
        "architecture": sae.cfg.architecture, "config": config_to_dict(cfg), "corpus": reader.manifest.get("corpus"),
    }
    if vision:
        data.update(top_val=col.img_val, top_image=col.img_id, top_heat=col.img_act)
        data["int_image"] = sample_windows(reader, iv["rows"], 0, "image_ids")[..., 0]
        data["int_patch"] = sample_windows(reader, iv["rows"], 0, "patch_ids")[..., 0]
        meta["patches"] = col.patches
        from evals.features.images import save_thumbnails

        save_thumbnails(reader.manifest, sorted(set(col.img_id[col.img_id >= 0].tolist())), out / "images")
    else:
        data.update(top_val=col.top_val, top_row=col.top_row, top_tok=col.top_tok, top_act=col.top_act)
        data["int_tok"] = sample_windows(reader, iv["rows"], cfg.context)
        lm = model if model is not None else _load_model(reader)
        ids = [data["top_tok"].reshape(-1), data["int_tok"].reshape(-1)]
        if lm is not None:
            w_u = load_unembedding(lm)
            if w_u is not None and w_u.shape[0] == w_dec.shape[1]:
                lens = logit_lens(w_dec, w_u, cfg.logit_tokens)
                data.update(lens)
                norm = final_norm(lm)
                meta["logit_lens"] = f"final norm ({norm.kind}) gain folded into W_U" if norm else "raw W_U"
                ids += [lens["logit_top_ids"].reshape(-1), lens["logit_bot_ids"].reshape(-1)]
            used = torch.unique(torch.cat([i.long() for i in ids]))
            meta["vocab"] = token_strings(lm.tokenizer, used[used >= 0].tolist())
        else:
            meta["vocab"] = {}
    atomic_save_safetensors(out / COOC_FILE, {"tracked": col.tracked, "cooc": col.cooc, "chunks": col.chunks.reshape(1),
                                              "chunk_tokens": torch.tensor([cfg.chunk_tokens])})
    atomic_save_safetensors(out / DATA_FILE, data, {"format": "sae-workbench-features"})
    atomic_write_json(out / META_FILE, meta)


def _load_model(reader: CacheReader) -> Any:
    """The cache's model, for its tokenizer and unembedding; None (with a warning) if it cannot load."""
    from workbench.models import load_model

    m = reader.manifest["model"]
    name = m.get("source") or m["id"]
    try:
        return load_model(name)
    except Exception as e:  # noqa: BLE001 - dashboards stay useful without token strings
        log.warning("could not load %s for token strings and the logit lens (%s); showing token ids", name, e)
        return None


def read_meta(out: Path) -> dict[str, Any]:
    return json.loads((out / META_FILE).read_text())
