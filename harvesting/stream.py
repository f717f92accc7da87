"""The harvest loop as a stream: `sae train --model M --corpus C` trains on activations never stored.

`ModelStream` runs the very batches of contexts `sae harvest` runs for the same config (the same
documents, packing, budget trimming and forward passes, through `harvesting.plan`), one forward
pass per batch feeding every hook point, and yields each pass's kept rows in harvest order; the
shuffle buffer (`harvesting.shuffle_buffer`) draws its batches from them. A cache harvested with the
same config holds these rows in this order, which is what lets a cache run with the same
`--shuffle-buffer` reproduce a cacheless run bit for bit.

Before the first forward pass the context stream is walked once without the model (tokenizing
only, as every process of a distributed harvest does) to learn what a cache learns from its
manifest: the rows of each forward pass and the held-out cut (the cache reader's rule: the rows
of the last ceil(C * heldout_fraction) of the C contexts, the cut moved past the document that
straddles it). Training rows come before the cut, held-out rows after it; the held-out rows run
only at the end, for the evaluation.

A resumed stream starts at a forward pass without running the ones before it (the walk skips
them), and under torchrun rank r runs the forward passes r, r + ranks, ... of the training split
(each rank harvests its own share of the documents). Text models only: a vision corpus is
harvested into a cache first.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from harvesting.cache import DTYPES, to_stored
from harvesting.corpus import open_documents
from harvesting.harvest import HarvestConfig, _check_config, _forward, _text_batches
from harvesting.plan import PlannedBatch, plan_shards
from harvesting.shuffle_buffer import StreamSource
from workbench.errors import WorkbenchError
from workbench.models import LoadedModel, load_model


class ModelStream(StreamSource):
    """Rows of the harvest `hcfg` describes (its `out`, `shard_tokens` and `progress` unused), never stored."""

    def __init__(self, hcfg: HarvestConfig, *, heldout_fraction: float, sample_tokens: int, epochs: int = 1,
                 model: LoadedModel | None = None, device: torch.device | str = "cpu") -> None:
        super().__init__(heldout_fraction, sample_tokens, epochs)
        _check_config(hcfg)
        self.hcfg = hcfg
        self.device = torch.device(device)
        docs = open_documents(hcfg.corpus, split=hcfg.split, field=hcfg.text_field, seed=hcfg.seed, revision=None,
                              subset=hcfg.subset, modality="text", streaming=hcfg.streaming)
        next(iter(docs), None)  # an unknown corpus is named before minutes go into loading the model
        lm = model or load_model(hcfg.model, device=self.device, dtype=DTYPES[hcfg.model_dtype], revision=hcfg.revision)
        lm.check_hooks(list(hcfg.hooks))
        if lm.modality != "text":
            raise WorkbenchError(f"{lm.model_id} is a {lm.modality} model: training from the model takes text models; "
                                 f"harvest a cache (`sae harvest`) and train on it with --cache")
        self.lm = lm
        self.hooks = list(hcfg.hooks)
        self.model_id = lm.model_id
        self._walk()

    def identity(self) -> str:
        """What a resumed run must stream again: the harvest config's bytes-deciding fields and the model."""
        d = {**self.hcfg.identity(), "model_id": self.model_id, "revision": self.lm.revision}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()

    def d_model(self, hook: str) -> int:
        return int(self.lm.d_model)

    # ---------------------------------------------------------------- the plan

    def _planned(self) -> Iterator[PlannedBatch]:
        """The harvest's forward passes, in order (shard ends dropped: a stream has no shards)."""
        for step in plan_shards(_text_batches(self.lm, self.hcfg), self.hcfg.tokens, 2**62, positions=False):
            if isinstance(step, PlannedBatch):
                yield step

    def _walk(self) -> None:
        """Rows per forward pass and the held-out cut, from the context stream alone."""
        rows: list[int] = []
        n, first, last, lead = [], [], [], []  # per context: kept rows, first and last document, rows of the first
        for pb in self._planned():
            rows.append(int(pb.keep.sum()))
            docs = pb.ids["doc_ids"]
            for c in range(pb.keep.shape[0]):
                d = docs[c][pb.keep[c]]
                other = torch.nonzero(d != d[0])
                n.append(d.numel())
                first.append(int(d[0]))
                last.append(int(d[-1]))
                lead.append(int(other[0]) if other.numel() else d.numel())
        total, contexts = sum(n), len(n)
        if total == 0:
            raise WorkbenchError(f"the corpus {self.hcfg.corpus!r} gave no tokens")
        cutoff = contexts - math.ceil(contexts * self.heldout_fraction)
        cut = sum(n[:cutoff])
        if 0 < cut < total:  # a document straddling the cut stays whole on the training side
            doc = last[cutoff - 1]
            for c in range(cutoff, contexts):
                if first[c] != doc:
                    break
                cut += lead[c]
                if lead[c] < n[c]:
                    break
        self.pass_rows = rows
        self.total_rows, self.cut = total, cut
        starts = [0]
        for r in rows:
            starts.append(starts[-1] + r)
        self.train_rows = [min(max(cut - s, 0), r) for s, r in zip(starts, rows)]  # per forward pass

    def split_rows(self, split: str) -> int:
        if split == "train":
            return self.cut
        if split == "heldout":
            return self.total_rows - self.cut
        return self.total_rows

    def rank_rows(self, rank: int, world_size: int) -> tuple[int, int]:
        mine = [k for i, k in enumerate(self.train_rows) if i % world_size == rank and k > 0]
        return sum(mine), len(mine)

    # ---------------------------------------------------------------- the stream

    def epoch_chunks(self, split: str, rank: int = 0, world_size: int = 1, start: int = 0) -> Iterator[dict[str, Tensor]]:
        """One pass over `split`: the kept rows of each forward pass in it (train: this rank's, from its `start`-th)."""
        mine = 0
        for i, pb in enumerate(self._planned()):
            k, n = self.train_rows[i], self.pass_rows[i]
            if split == "train":
                if k == 0:
                    return
                if i % world_size != rank:
                    continue
                mine += 1
                if mine <= start:
                    continue
                lo, hi = 0, k
            else:
                if k == n:
                    continue
                lo, hi = k, n
            out = _forward(self.lm, pb.load_inputs().to(self.device), self.hooks)
            mask = pb.keep.to(self.device)
            yield {h: to_stored(a[mask], torch.float32, h)[lo:hi] for h, a in out.items()}


def model_stream(cfg: Any, device: torch.device) -> ModelStream:
    """The stream a `saes.TrainConfig` with `model` set trains on."""
    if not cfg.progress:  # --no-progress: neither the corpus nor the model loading draws bars
        import datasets
        import transformers

        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
    hcfg = HarvestConfig(model=cfg.model, corpus=cfg.corpus or "wiki-vital", hooks=tuple(cfg.hook),
                         tokens=cfg.tokens or 1_000_000, context_length=cfg.context_length or 128,
                         batch_size=cfg.harvest_batch_size or 16, seed=cfg.corpus_seed, model_dtype=cfg.model_dtype,
                         device=str(device), progress=False)
    return ModelStream(hcfg, heldout_fraction=cfg.heldout_fraction, sample_tokens=cfg.init_sample_tokens,
                       epochs=cfg.epochs, device=device)
