"""Which cache the benchmark reads, and the export of its rows into the batches file (workbench venv).

Training rows: a seeded shuffle of the cache's training split read by the cache reader, as many
as the run needs (all of them when the cache is smaller than the run; the feed order then passes
over them several times, see batches_file.feed_order). Held-out rows: the cache's own held-out
split (the rows of the last `heldout_fraction` of its contexts), in order, at most
`heldout_tokens` of them. Nothing of the held-out split is ever in a training batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

import batches_file

# Tried in order when no --cache is given (relative to the repository root): the 1M-token cache
# of the training anchors, then the cache scripts/quickstart.sh writes.
DEFAULT_CACHES = ("cache/smollm2-wiki-1m", "cache/quickstart/acts")


def find_cache(root: Path, given: str | None) -> Path:
    if given:
        p = Path(given)
        if not (p / "manifest.json").is_file():
            raise SystemExit(f"--cache {given!r} is not an activation cache (no manifest.json there)")
        return p
    for rel in DEFAULT_CACHES:
        if (root / rel / "manifest.json").is_file():
            return root / rel
    raise SystemExit(f"no activation cache at {' or '.join(DEFAULT_CACHES)} under {root}; run "
                     f"`bash scripts/quickstart.sh` (writes cache/quickstart/acts) or pass --cache PATH")


def d_model(cache: Path, hook: str) -> int:
    from harvesting import CacheReader

    r = CacheReader(cache)
    if hook not in r.hooks:
        raise SystemExit(f"hook {hook!r} is not in {cache}; it has {r.hooks}")
    return r.d_model(hook)


def export(cache: Path, hook: str, out: Path, *, tokens: int, batch_size: int, heldout_fraction: float,
           heldout_tokens: int, seed: int, params: dict[str, Any]) -> tuple[Path, str]:
    """Write the batches file for `tokens` training tokens of `hook`; returns (path, a line saying what it holds)."""
    from harvesting import CacheReader

    r = CacheReader(cache)
    if hook not in r.hooks:
        raise SystemExit(f"hook {hook!r} is not in {cache}; it has {r.hooks}")
    if tokens < batch_size or tokens % batch_size:
        raise SystemExit(f"--tokens {tokens} must be a positive multiple of the batch size {batch_size}")
    n_train = r.num_rows("train", heldout_fraction)
    want = min(n_train, tokens)
    parts, got = [], 0
    for b in r.batches(hook, batch_size, seed=seed, split="train", heldout_fraction=heldout_fraction,
                       drop_last=False):
        parts.append(b[hook])
        got += b[hook].shape[0]
        if got >= want:
            break
    rows = torch.cat(parts)[:want].float()
    held = torch.cat([b[hook] for b in r.batches(hook, batch_size, shuffle=False, split="heldout",
                                                 heldout_fraction=heldout_fraction, drop_last=False)])
    held = held[:heldout_tokens].float()
    order = batches_file.feed_order(want, tokens, seed)
    passes = tokens / want
    what = (f"{cache} ({r.model_id}, `{hook}`): {tokens:,} training tokens = {passes:.2f} pass(es) over "
            f"{want:,} of its {n_train:,} training rows; {held.shape[0]:,} held-out rows (its last "
            f"{heldout_fraction:.0%} of contexts)")
    params = {**params, "cache": str(cache), "hook": hook, "model": r.model_id, "tokens": tokens,
              "batch_size": batch_size, "seed": seed}
    return batches_file.write(out, rows, order, held, params), what
