"""Which rows and documents of a cache an SAE trained on: what `evaluate` may call held-out and may probe.

An SAE's cfg.json records its training data in `train`: `heldout_fraction` (the last contexts of
its cache, cut at a document boundary, kept out of training), `cache` (the path as given to
`sae train`) and, where the trainer records it, `cache_identity` (`CacheReader.identity`, a hash of
the cache's content). With --normalize its `input_scale` is the training cache's norm scale at the
SAE's hook, a statistic of every row, so it tells that cache from another one (another corpus,
seed, model or token count) even where no hash was recorded. From these:

- `match_training_cache`: is this cache the one the SAE trained on? "same" (hash or input scale
  agree), "same path" (only the path agrees), "different" (hash, input scale or model disagree),
  or "unknown" (nothing recorded to compare; a foreign SAE, or one trained from tensors).
- `resolve_heldout_fraction`: the fraction to evaluate on. One the user gives is used as given
  (0 is refused: it leaves no rows); else the SAE's own; else 1%. An SAE trained with fraction 0
  saw every row of its cache: evaluating it there is refused unless a fraction is asked for.
- `trained_on_rows`: how many of the evaluated held-out rows the SAE trained on (a larger
  fraction than its own reaches back into its training rows; a different cache of the same corpus
  may hold its training documents), so that the result can say so.
- `training_documents` / `split_documents`: the corpus indices of the documents the SAE trained
  on, for probing only documents it never saw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harvesting import CacheReader
from workbench.errors import WorkbenchError

DEFAULT_HELDOUT_FRACTION = 0.01  # when the SAE records none (the trainer's default)


@dataclass
class CacheMatch:
    """Whether a cache is the SAE's training cache, and why we think so."""

    verdict: str  # "same", "same path", "different" or "unknown"
    reasons: list[str] = field(default_factory=list)
    recorded: dict[str, Any] = field(default_factory=dict)  # what the SAE's cfg.json says about its cache

    @property
    def is_training_cache(self) -> bool:
        return self.verdict in ("same", "same path")

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "reasons": self.reasons, "recorded": self.recorded}


def _train(sae) -> dict[str, Any]:
    return dict(getattr(sae.cfg, "train", None) or {})


def sae_heldout_fraction(sae) -> float | None:
    """The held-out fraction the SAE was trained with (None when its cfg.json records none)."""
    f = _train(sae).get("heldout_fraction")
    return None if f is None else float(f)


def corpus_key(reader: CacheReader) -> tuple | None:
    """What makes two caches' document ids name the same documents (the corpus, not its shuffle seed)."""
    c = reader.manifest.get("corpus") or {}
    if not c.get("id") or "doc_ids" not in reader.manifest.get("row_fields", []):
        return None
    return c.get("id"), c.get("split"), c.get("subset"), c.get("field")


def match_training_cache(sae, reader: CacheReader) -> CacheMatch:
    """Compare what the SAE's cfg.json records about its training cache with `reader`'s cache."""
    train, hook = _train(sae), sae.cfg.hook
    recorded = {k: train[k] for k in ("cache", "cache_identity", "heldout_fraction", "normalize") if k in train}
    if train.get("normalize"):
        recorded["input_scale"] = float(sae.cfg.input_scale)
    ident = train.get("cache_identity")
    if ident:
        if ident == reader.identity:
            return CacheMatch("same", ["its recorded content hash matches this cache's"], recorded)
        return CacheMatch("different", [f"it records content hash {str(ident)[:12]}..., this cache's is "
                                        f"{reader.identity[:12]}..."], recorded)
    if train.get("cache") and sae.cfg.model_id and sae.cfg.model_id != reader.model_id:
        return CacheMatch("different", [f"it was trained on activations of {sae.cfg.model_id}, this cache holds "
                                        f"{reader.model_id}'s"], recorded)
    if train.get("normalize"):
        try:
            scale = reader.norm_scale(hook)
        except (KeyError, TypeError, WorkbenchError):
            scale = None
        if scale is not None:
            if math.isclose(float(sae.cfg.input_scale), scale, rel_tol=1e-9):
                return CacheMatch("same", [f"its input scale equals this cache's norm scale at {hook} "
                                           f"({scale:.6g}, a statistic of every row)"], recorded)
            return CacheMatch("different", [f"its input scale {float(sae.cfg.input_scale):.6g} (the training cache's "
                                            f"norm scale at {hook}) is not this cache's {scale:.6g}"], recorded)
    path = train.get("cache")
    if path:
        if Path(path).resolve() == reader.path.resolve():
            return CacheMatch("same path", [f"it was trained on {path}, this cache's path (its content is not "
                                            f"recorded, so a cache harvested again there is not told apart)"], recorded)
        return CacheMatch("unknown", [f"it was trained on {path}, this is {reader.path}, and its cfg.json records "
                                      f"no content hash or input scale to compare"], recorded)
    return CacheMatch("unknown", ["its cfg.json records nothing about the data it was trained on"], recorded)


def resolve_heldout_fraction(sae, given: float | None, match: CacheMatch) -> float:
    """The held-out fraction to evaluate on (see the module docstring); refuses what measures nothing unseen."""
    if given is not None:
        if given == 0:
            raise WorkbenchError("heldout_fraction 0 leaves no held-out rows to evaluate on; give a fraction in (0, 1) "
                                 "or leave it out to use the one the SAE was trained with")
        if not 0 < given < 1:
            raise WorkbenchError(f"heldout_fraction must be in (0, 1); got {given}")
        return float(given)
    own = sae_heldout_fraction(sae)
    if own is None:
        return DEFAULT_HELDOUT_FRACTION
    if own > 0:
        return own
    if match.verdict == "different":
        return DEFAULT_HELDOUT_FRACTION
    raise WorkbenchError(
        "the SAE was trained on every row of its cache (heldout_fraction 0), so this cache has no held-out rows for it "
        f"({'; '.join(match.reasons) or match.verdict}). Evaluate it on a cache of other documents, or pass "
        "--heldout-fraction F to measure the last F of this cache's contexts anyway (labelled trained-on in eval.json "
        "and the table)")


def trained_on_rows(sae, reader: CacheReader, heldout_fraction: float, match: CacheMatch,
                    training: TrainingDocuments | None = None, max_rows: int = 0) -> int | None:
    """How many of the first `max_rows` (0: all) rows of `reader`'s held-out split the SAE trained on;
    None when that cannot be known."""
    own = sae_heldout_fraction(sae)
    cut = reader.heldout_start(heldout_fraction)
    end = min(reader.num_tokens, cut + max_rows) if max_rows else reader.num_tokens
    if match.is_training_cache and own is not None:
        # its training rows end where its own held-out split begins; ours may begin earlier
        return max(0, min(end, reader.heldout_start(own)) - cut)
    if training is not None and training.comparable(reader):
        return sum(int(torch.isin(ids, training.ids).sum()) for ids in _doc_id_slices(reader, cut, end))
    return None


def _doc_id_slices(reader: CacheReader, lo: int, hi: int):
    """The doc_ids of global rows [lo, hi), shard by shard."""
    for i, s in enumerate(reader.shards):
        r0, r1 = s["rows"]
        a, b = max(lo, r0), min(hi, r1)
        if a < b:
            yield reader.row_fields(i, ["doc_ids"])["doc_ids"][a - r0:b - r0].long()


def split_documents(reader: CacheReader, split: str,
                    heldout_fraction: float = DEFAULT_HELDOUT_FRACTION) -> torch.Tensor:
    """Sorted unique document ids (corpus indices) with rows in `split` ("train", "heldout" or "all")."""
    if "doc_ids" not in reader.manifest.get("row_fields", []):
        return torch.empty(0, dtype=torch.long)
    cut = reader.heldout_start(heldout_fraction) if split != "all" else 0
    lo, hi = {"train": (0, cut), "heldout": (cut, reader.num_tokens), "all": (0, reader.num_tokens)}[split]
    parts = [torch.unique(ids) for ids in _doc_id_slices(reader, lo, hi)]
    ids = torch.unique(torch.cat(parts)) if parts else torch.empty(0, dtype=torch.long)
    return ids[ids >= 0]


@dataclass
class TrainingDocuments:
    """The documents the SAE trained on: ids in the train split of its training cache."""

    ids: torch.Tensor  # sorted corpus indices
    corpus: tuple
    cache: str

    def comparable(self, reader: CacheReader) -> bool:
        """Whether `reader`'s document ids name documents of the same corpus."""
        return corpus_key(reader) == self.corpus


def training_documents(sae, reader: CacheReader, match: CacheMatch) -> TrainingDocuments | None:
    """The SAE's training documents: from `reader` when it is the training cache, else from the cache
    at the path its cfg.json records, when that is found and matches; None when they cannot be known."""
    own = sae_heldout_fraction(sae)
    if own is None:
        return None
    source = reader if match.is_training_cache else None
    path = _train(sae).get("cache")
    if source is None and path and Path(path).is_dir():
        try:
            other = CacheReader(path)
        except WorkbenchError:
            other = None
        if other is not None and match_training_cache(sae, other).is_training_cache:
            source = other
    key = corpus_key(source) if source is not None else None
    if key is None:
        return None
    return TrainingDocuments(split_documents(source, "train", own) if own > 0 else split_documents(source, "all"),
                             key, str(source.path))
