"""Sparse probing at SAEBench's sizes: labelled documents run through the model, not read from a cache.

A cache holds what one harvest saw: 100k tokens of wiki-vital is about 700 documents, 60 per
topic, and tasks of 20 test documents give accuracies in steps of 0.05. Here the documents come
from the corpus itself, each truncated to its first `context_length` tokens (SAEBench: 128)
and run alone through the model (its BOS first); raw activations and SAE codes are mean-pooled
over its text tokens as `evals.probing.DocPool` does for a cache. Each label set is its own
family of one-vs-rest tasks, probed by `evals.probing.sparse_probing`:

- `wiki-vital:topic`: the article's topic (11 classes; "Uncategorized" left out);
- `debian-text:source`: which work a document comes from (gcide, wordnet, linux-doc, python-doc);
- `debian-text:section`: the documentation folder of a linux-doc or python-doc file
  ("linux-doc/networking", "python-doc/library", ...), classes of at least `min_section` files.

Sizes: SAEBench's 4000 train / 1000 test per task is `max_per_class=2500` positives (as many
negatives) with a 20% test split. Where a class has fewer documents its task is smaller, and
the result says so per class (`short_of`). Documents the SAE trained on are left out by their
corpus index (`evals.provenance.training_documents`); when those are unknown and the label
set's corpus is the SAE's training corpus, the label set is refused rather than probed on
possibly seen documents. Accuracy intervals: `evals.probing.accuracy_intervals`, percentile bootstrap over
each class's test examples (`evals.intervals`).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from evals.probing import KS, DocPool, accuracy_intervals, sparse_probing  # noqa: F401  (accuracy_intervals: re-exported)
from workbench.errors import WorkbenchError

LABEL_SETS = ("wiki-vital:topic", "debian-text:source", "debian-text:section")
_RECORDS: dict[str, list[dict[str, str]]] = {}
SAEBENCH_PER_CLASS = 2500  # 4000 train + 1000 test examples per balanced task, half of them positive


def label_set_documents(name: str, *, min_section: int = 100) -> tuple[str, dict[int, str], list[str]]:
    """(corpus id, {document index: label}, texts by index) of a label set."""
    if name not in LABEL_SETS:
        raise WorkbenchError(f"unknown probing label set {name!r}; valid choices: {', '.join(LABEL_SETS)}")
    corpus, what = name.split(":")
    from harvesting.corpus import offline_records

    recs = _RECORDS.get(corpus)
    if recs is None:  # debian-text takes about a minute to read: once per process for all its label sets
        recs = _RECORDS[corpus] = offline_records(corpus)
    if what == "topic":
        labels = {i: r["topic"] for i, r in enumerate(recs) if r["topic"] not in ("", "Uncategorized")}
    elif what == "source":
        labels = {i: r["source"] for i, r in enumerate(recs)}
    else:
        labels = {i: f"{r['source']}/{r['topic']}" for i, r in enumerate(recs) if r["source"] in ("linux-doc", "python-doc")}
        big = {c for c, n in Counter(labels.values()).items() if n >= min_section}
        labels = {i: c for i, c in labels.items() if c in big}
    labels = {i: c for i, c in labels.items() if recs[i]["text"].strip()}
    return corpus, labels, [r["text"] for r in recs]


def _excluded(corpus: str, training, sae_corpus: str | None) -> tuple[set[int], str]:
    """Document indices the SAE trained on (to leave out), and how that was decided."""
    if training is not None and training.corpus[0] == corpus:
        return set(training.ids.tolist()), f"the {training.ids.numel():,} documents of {corpus} the SAE trained on are left out"
    if training is not None:
        return set(), f"the SAE trained on {training.corpus[0]}, not {corpus}: every document is unseen"
    if sae_corpus is not None and sae_corpus != corpus:
        return set(), f"the SAE's training cache holds {sae_corpus}, not {corpus}: every document is unseen"
    raise WorkbenchError(f"the SAE's training documents are unknown and may be documents of {corpus}; "
                         f"probing them could measure memorisation")


@torch.no_grad()
def pool_documents(lm, sae, hook: str, pool: DocPool, texts: list[str], *, context_length: int = 128,
                   batch_size: int = 16, progress: bool = True) -> None:
    """Run each chosen document (its first `context_length` tokens, BOS first) through the model and
    add its text tokens' raw activations and SAE codes to `pool`."""
    from workbench.hooks import capture

    prefix = list(lm.prefix_ids)
    body = context_length - len(prefix)
    if body < 1:
        raise WorkbenchError(f"probe context length {context_length} leaves no room for text after the model's prefix")
    docs = sorted(pool.chosen)
    device = next(lm.bridge.parameters()).device
    for i in tqdm(range(0, len(docs), batch_size), desc="probe documents", unit="batch", disable=not progress):
        chunk = docs[i:i + batch_size]
        enc = lm.tokenizer([texts[d] for d in chunk], add_special_tokens=False)["input_ids"]
        ids = [prefix + list(e)[:body] for e in enc]
        width = max(len(x) for x in ids)
        tokens = torch.full((len(chunk), width), int(lm.pad_id), dtype=torch.long)
        doc_ids = torch.full((len(chunk), width), -1, dtype=torch.long)
        for j, x in enumerate(ids):
            tokens[j, :len(x)] = torch.tensor(x)
            doc_ids[j, len(prefix):len(x)] = chunk[j]
        acts = capture(lm, tokens.to(device), [hook])[hook]
        keep = (doc_ids >= 0).reshape(-1)
        x = acts.reshape(-1, acts.shape[-1])[keep.to(acts.device)].to(sae.W_dec.device, sae.W_dec.dtype)
        pool.update(x, sae.encode(x), doc_ids.reshape(-1)[keep])


def corpus_probing(sae, lm, hook: str, label_sets: list[str], *, training=None, sae_corpus: str | None = None,
                   max_per_class: int = SAEBENCH_PER_CLASS, test_fraction: float = 0.2, context_length: int = 128,
                   batch_size: int = 16, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Sparse probing on each label set; {label set: result or {"skipped": why}}.

    `training`: the SAE's training documents (`evals.provenance.TrainingDocuments`) or None;
    `sae_corpus`: the corpus of its training cache when known (to tell that another corpus is unseen)."""
    out: dict[str, Any] = {}
    for name in label_sets:
        corpus, labels, texts = label_set_documents(name)
        try:
            excluded, rule = _excluded(corpus, training, sae_corpus)
        except WorkbenchError as e:
            out[name] = {"skipped": str(e)}
            continue
        allowed = {i: c for i, c in labels.items() if i not in excluded}
        per_class_docs = Counter(allowed.values())
        try:
            pool = DocPool(allowed, sae.d_in, sae.num_features, max_per_class=math.ceil(max_per_class / 2), seed=seed)
            pool_documents(lm, sae, hook, pool, texts, context_length=context_length, batch_size=batch_size,
                           progress=progress)
            raw, feats, labs = pool.result()
            res = sparse_probing(raw, feats, labs, ks=KS, max_per_class=max_per_class, test_fraction=test_fraction,
                                 seed=seed)
        except WorkbenchError as e:  # no labelled document, or no class with a task
            out[name] = {"skipped": f"{e} ({rule})", "documents": {"available_per_class": dict(per_class_docs)}}
            continue
        short = {c: n for c, n in sorted(per_class_docs.items()) if n < max_per_class}
        res["documents"] = {"corpus": corpus, "rule": rule, "available_per_class": dict(sorted(per_class_docs.items())),
                            "pooled": len(labs), "context_length": context_length, "max_per_class": max_per_class,
                            "short_of": short}
        if short:
            res["documents"]["note"] = (f"{len(short)} of {len(per_class_docs)} classes have fewer than {max_per_class} "
                                        f"unseen documents (SAEBench's 4000 train / 1000 test needs {max_per_class} "
                                        f"positives): their tasks are smaller")
        out[name] = res
    return out


def label_set_rows(sets: dict[str, Any], k: int = 1) -> list[tuple[str, str]]:
    """Table lines: per label set, the SAE's top-k and the raw all-dimension probe with 95% intervals."""
    rows = []
    for name, r in sets.items():
        if r.get("skipped"):
            rows.append((f"probe {name}", "skipped (see note)"))
            continue
        iv = r["intervals"]["mean"]

        def acc(key: str) -> str:
            return f"{r['mean'][key]:.3f} [{iv[key]['low']:.3f}, {iv[key]['high']:.3f}]"
        n_train = sum(c["n_train"] for c in r["per_class"].values())
        rows.append((f"probe {name} top-{k} (SAE / raw)", f"{acc(f'sae_top{k}')} / {acc(f'raw_top{k}')}"))
        rows.append((f"probe {name} raw, all dims", acc("raw_full")))
        rows.append((f"probe {name}: classes, train / test", f"{r['classes']}, {n_train:,} / {r['test_documents']:,}"))
    return rows
