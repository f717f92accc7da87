"""Sparse probing (as SAEBench does it): do a few SAE features carry the concepts in the data?

Task: the corpus's document labels (wiki-vital's article topics), one-vs-rest per class, balanced
(as many negatives, drawn at random from the other classes, as positives), split into train and
test. Each document is represented by its activations mean-pooled over its text tokens (the
separator row the harvest stores after each document, its EOS, is left out; BOS and padding are
never stored): raw activations, and SAE feature activations (each token encoded, then pooled).
On the train split the k features with the largest |mean over positives - mean over negatives|
are selected and an L2-regularised logistic regression (scikit-learn, C = 1, inputs standardised
on train) is fitted on them; we report test accuracy for k in {1, 2, 5, 20}, next to the same
probe on the raw activations (all dimensions and top-k dimensions), per class with its test size
and binomial standard error sqrt(p(1 - p) / n_test) (0 at an accuracy of 0 or 1, where it says
nothing: read it with n_test), and averaged over classes (the standard error of that mean:
sqrt(sum of squared per-class errors) / classes).

Which documents: only ones the SAE did not train on (`unseen_documents`). A probe on the SAE's
own training documents asks whether it memorised them, not whether its features carry the
concept. From the SAE's training cache that leaves its held-out split, whose documents are whole
(the reader cuts at a document boundary) but few: 1% of a 100k-token wiki-vital cache is about
7 documents, far under the 20 per class a task needs, and then probing says so instead of
falling back on training documents. Enough documents come from a second cache of the same
corpus (`sae eval --probe-cache`, e.g. `sae harvest --seed 1` with another --out; the documents
the SAE trained on are left out by their corpus index), or from training with a larger
--heldout-fraction. SAEBench's own tasks use 4000 train / 1000 test texts per class, each run
alone; `evals.probe_corpus` (`sae eval --probe-label-sets`) reaches that: documents of the corpus
run through the model, 128 tokens each, on several label sets.

Pooling reads the cache: its rows carry each token's document id, so no model pass is needed.
Documents are packed into contexts, so a document's later tokens may follow another document's
tail in the same context (the harvest's packing); SAEBench runs each text alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from harvesting import CacheReader
from workbench.errors import WorkbenchError

KS = (1, 2, 5, 20)


def topk_by_mean_diff(x: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k columns with the largest |mean(x | y=1) - mean(x | y=0)|."""
    diff = np.abs(x[y == 1].mean(0) - x[y == 0].mean(0))
    k = min(k, x.shape[1])
    return np.argsort(-diff, kind="stable")[:k]


def probe_accuracy(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> float:
    """Test accuracy of a standardised L2 logistic regression (C = 1)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    clf.fit(x_train, y_train)
    return float(clf.score(x_test, y_test))


def accuracy_intervals(probing: dict[str, Any], level: float = 0.95, n_resamples: int = 1000,
                       seed: int = 0) -> dict[str, dict[str, Any]]:
    """Bootstrap intervals of every accuracy of a `sparse_probing` result: per class (resampling its
    test examples) and of the mean over classes (each class resampled on its own, then averaged, as
    the reported mean is: `evals.intervals.stratified_mean_interval`).

    An accuracy on n test examples is the mean of n right/wrong outcomes, so its count of right
    answers and n are all the bootstrap needs: no probe is refitted."""
    from evals.intervals import bootstrap_interval, stratified_mean_interval

    per_class = probing["per_class"]
    out: dict[str, dict[str, Any]] = {"mean": {}, "per_class": {c: {} for c in per_class}}
    for key in probing["mean"]:
        outcomes = []
        for ci, (c, row) in enumerate(per_class.items()):
            n = int(row["n_test"])
            right = np.zeros(n)
            right[:int(round(row[key] * n))] = 1.0
            out["per_class"][c][key] = bootstrap_interval(right, n_resamples=n_resamples, level=level,
                                                          seed=seed + ci).to_dict()
            outcomes.append(right)
        iv = stratified_mean_interval(outcomes, n_resamples=n_resamples, level=level, seed=seed)
        out["mean"][key] = {**iv.to_dict(), "resampled": "test examples, per class", "resamples": n_resamples}
    return out


def balanced_tasks(labels: Sequence[str], *, min_per_class: int = 20, max_per_class: int = 500,
                   seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per class with enough documents: (row indices, binary labels) of a balanced one-vs-rest set."""
    rng = np.random.default_rng(seed)
    labels_arr = np.asarray(labels)
    tasks = {}
    for c in sorted(set(labels)):
        pos = np.flatnonzero(labels_arr == c)
        neg = np.flatnonzero(labels_arr != c)
        n = min(len(pos), len(neg), max_per_class)
        if n < min_per_class:
            continue
        pos = rng.choice(pos, n, replace=False)
        neg = rng.choice(neg, n, replace=False)
        idx = np.concatenate([pos, neg])
        y = np.concatenate([np.ones(n, dtype=np.int64), np.zeros(n, dtype=np.int64)])
        perm = rng.permutation(2 * n)
        tasks[c] = (idx[perm], y[perm])
    return tasks


def sparse_probing(raw: np.ndarray, feats: np.ndarray, labels: Sequence[str], *, ks: Sequence[int] = KS,
                   min_per_class: int = 20, max_per_class: int = 500, test_fraction: float = 0.2,
                   seed: int = 0) -> dict[str, Any]:
    """Probe accuracies averaged over classes. `raw [docs, d]` and `feats [docs, F]` are pooled per document."""
    tasks = balanced_tasks(labels, min_per_class=min_per_class, max_per_class=max_per_class, seed=seed)
    if not tasks:
        raise WorkbenchError(f"sparse probing needs a class with at least {min_per_class} documents (and as many "
                             f"others); got {len(labels)} documents in {len(set(labels))} classes")
    per_class: dict[str, dict[str, float]] = {}
    for c, (idx, y) in tasks.items():
        n_test = max(2, int(round(len(idx) * test_fraction)))
        tr, te = idx[n_test:], idx[:n_test]
        ytr, yte = y[n_test:], y[:n_test]
        row: dict[str, float] = {"raw_full": probe_accuracy(raw[tr], ytr, raw[te], yte)}
        for k in ks:
            sel = topk_by_mean_diff(raw[tr], ytr, k)
            row[f"raw_top{k}"] = probe_accuracy(raw[tr][:, sel], ytr, raw[te][:, sel], yte)
            sel = topk_by_mean_diff(feats[tr], ytr, k)
            row[f"sae_top{k}"] = probe_accuracy(feats[tr][:, sel], ytr, feats[te][:, sel], yte)
            if k == 1:
                row["sae_top1_feature"] = int(sel[0])
        keys = [k for k in row if k != "sae_top1_feature"]
        row["se"] = {k: math.sqrt(row[k] * (1 - row[k]) / n_test) for k in keys}
        row["n_train"], row["n_test"] = len(tr), n_test
        per_class[c] = row
    keys = list(next(iter(per_class.values()))["se"])
    mean = {k: float(np.mean([r[k] for r in per_class.values()])) for k in keys}
    mean_se = {k: math.sqrt(sum(r["se"][k] ** 2 for r in per_class.values())) / len(per_class) for k in keys}
    res = {"classes": len(per_class), "mean": mean, "mean_se": mean_se, "per_class": per_class, "ks": list(ks),
           "documents_probed": len(labels), "test_documents": sum(r["n_test"] for r in per_class.values())}
    res["intervals"] = accuracy_intervals(res, seed=seed)
    return res


class DocPool:
    """Mean-pooled raw and SAE activations per labelled document, accumulated batch by batch.

    Documents are chosen up front (at most `2 * max_per_class` per label, seeded), so memory is
    O(chosen documents x (d + F)) whatever the cache size. It rides along a cache pass
    (`evals.cache_pass(..., pool=...)`) and reuses that pass's codes: no second encode.
    """

    def __init__(self, doc_labels: dict[int, str], d_in: int, num_features: int, *, max_per_class: int = 500,
                 seed: int = 0, documents: torch.Tensor | None = None, separator_id: int | None = None) -> None:
        """`documents`: the only document ids to pool (None: every labelled one); `separator_id`: the
        token of the rows to leave out (the EOS the harvest stores after each document)."""
        rng = np.random.default_rng(seed)
        allowed = None if documents is None else set(documents.tolist())
        by_label: dict[str, list[int]] = {}
        for doc, lab in sorted(doc_labels.items()):
            if lab and (allowed is None or doc in allowed):
                by_label.setdefault(lab, []).append(doc)
        chosen: list[int] = []
        for lab, docs in sorted(by_label.items()):
            chosen.extend(int(d) for d in rng.choice(docs, min(len(docs), 2 * max_per_class), replace=False))
        if not chosen:
            raise WorkbenchError("no labelled documents to probe")
        self.doc_labels = doc_labels
        self.separator_id = separator_id
        self.chosen = chosen
        self.lookup = torch.full((max(chosen) + 1,), -1, dtype=torch.long)
        self.lookup[torch.tensor(chosen)] = torch.arange(len(chosen))
        n = len(chosen)
        self.raw_sum = torch.zeros(n, d_in, dtype=torch.float64)
        self.feat_sum = torch.zeros(n, num_features, dtype=torch.float32)
        self.count = torch.zeros(n, dtype=torch.float64)

    @torch.no_grad()
    def update(self, x: Tensor, codes, doc_ids: Tensor, token_ids: Tensor | None = None) -> None:
        """Add a batch: activations `x [B, d]`, their SparseCodes, each row's document id and token id."""
        doc = doc_ids.long().cpu()
        inside = (doc >= 0) & (doc < self.lookup.numel())
        if self.separator_id is not None and token_ids is not None:
            inside &= token_ids.cpu() != self.separator_id
        slot = torch.full_like(doc, -1)
        slot[inside] = self.lookup[doc[inside]]
        m = slot >= 0
        if not m.any():
            return
        self.raw_sum.index_add_(0, slot[m], x[m.to(x.device)].double().cpu())
        self.count.index_add_(0, slot[m], torch.ones(int(m.sum()), dtype=torch.float64))
        entry_slot = slot[codes.rows.cpu()]
        keep = entry_slot >= 0
        self.feat_sum.index_put_((entry_slot[keep], codes.cols.cpu()[keep]), codes.vals.detach().float().cpu()[keep],
                                 accumulate=True)

    def result(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(raw [docs, d], feats [docs, F], labels) for the chosen documents the cache held."""
        found = self.count > 0
        if not found.any():
            raise WorkbenchError("none of the labelled documents to probe appear in the cache")
        raw = (self.raw_sum[found] / self.count[found, None]).float().numpy()
        feats = (self.feat_sum[found] / self.count[found, None].float()).numpy()
        labels = [self.doc_labels[self.chosen[i]] for i in torch.nonzero(found).flatten().tolist()]
        return raw, feats, labels


def separator_id(reader: CacheReader) -> int | None:
    """The token the harvest stored after each document (None when it stored none)."""
    sep = (reader.manifest.get("tokenizer") or {}).get("separator_id")
    return None if sep is None else int(sep)


def pooled_from_cache(sae, reader: CacheReader, hook: str, doc_labels: dict[int, str], *,
                      max_per_class: int = 500, seed: int = 0, batch_size: int = 4096,
                      device: torch.device | str = "cpu",
                      documents: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Mean-pooled raw and SAE activations per labelled document of the cache (a pass of its own),
    over each document's text rows; only `documents` when given (see `unseen_documents`)."""
    from evals.cache_pass import cache_pass

    pool = DocPool(doc_labels, sae.d_in, sae.num_features, max_per_class=max_per_class, seed=seed,
                   documents=documents, separator_id=separator_id(reader))
    cache_pass(sae, reader, hook, split="all", batch_size=batch_size, device=device, pool=pool)
    return pool.result()


def unseen_documents(sae, reader: CacheReader, training,
                     heldout_fraction: float) -> tuple[torch.Tensor, dict[str, Any]]:
    """The documents of `reader` to probe, ones the SAE did not train on, and a record of the choice.

    `training`: the SAE's training documents (`evals.provenance.training_documents`) or None when
    unknown; then the held-out split of `reader` at `heldout_fraction` is all we can trust."""
    from evals.provenance import split_documents

    present = split_documents(reader, "all")
    info: dict[str, Any] = {"cache": str(reader.path), "in_cache": int(present.numel())}
    if training is not None and training.comparable(reader):
        seen = torch.isin(present, training.ids)
        info.update(left_out_trained_on=int(seen.sum()),
                    rule=f"every document of the cache except the {int(seen.sum())} the SAE trained on (the train "
                         f"split of {training.cache})")
        return present[~seen], info
    if training is not None:
        info.update(left_out_trained_on=0,
                    rule=f"every document of the cache (another corpus than the SAE's training cache {training.cache})")
        return present, info
    docs = split_documents(reader, "heldout", heldout_fraction)
    info.update(left_out_trained_on=None,
                rule=f"the SAE's training documents are unknown: only the held-out split (heldout_fraction "
                     f"{heldout_fraction:g}) of the cache")
    return docs, info


def wiki_vital_labels() -> dict[int, str]:
    """Document index -> topic for the offline corpus (indices as `sae harvest` stores them).

    Articles filed as "Uncategorized" are left out: that label names no concept to probe for."""
    from harvesting import wiki_vital_records

    return {i: r["topic"] for i, r in enumerate(wiki_vital_records()) if r["topic"] not in ("", "Uncategorized")}


def cache_labels(reader: CacheReader) -> dict[int, str] | None:
    """Labels for the cache's documents, when its corpus has them (wiki-vital); else None."""
    corpus = (reader.manifest.get("corpus") or {}).get("id")
    return wiki_vital_labels() if corpus == "wiki-vital" else None

