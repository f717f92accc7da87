"""Effect and cost of steering, judged by the unsteered model itself (no LLM judge offline).

- Concept presence on generated text re-read by the unsteered model: an SAE feature's mean
  activation over the generated tokens, a linear probe's mean readout `x . w + b` (the sweep fits
  it on texts no steering method reads, steering.probe), the log-probability that a target word
  comes next (averaged over generated positions), and whether a target word appears at all.
- Fluency: perplexity of the generated tokens under the unsteered model, given the prompt. It
  misses repetition (a loop is easy to predict, so it has a low perplexity), hence:
- Repetition: distinct-2 and distinct-3 of the generated tokens (distinct n-grams over all
  n-grams, Li et al. 2016, per text) and the zlib compression ratio of the generated text (raw
  over compressed bytes, Whisper's repetition check; higher is more repetitive).
- Cost: KL(unsteered || steered) per token on neutral text, steered the way the prompts are
  (NeutralKL says how).
"""

from __future__ import annotations

import copy
import math
import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from steering.generation import Generation
from steering.interventions import Intervention, feature_values, steering
from steering.positions import RunState
from steering.reading import TokenBatch, _device, chunks, encode_texts, pad_batch, token_ids
from workbench.errors import WorkbenchError
from workbench.hooks import capture, editing


@dataclass
class Judge:
    """What concept presence is read against: the hook, and optionally SAE feature, probe, words."""

    hook: str
    sae: Any = None
    feature: int | None = None
    probe: Tensor | None = None  # linear readout weights [d]: score = x . probe + probe_bias
    probe_bias: float = 0.0
    target_words: tuple[str, ...] = ()

    def target_ids(self, lm: Any) -> list[int]:
        """First token of each target word, with and without a leading space (how it starts a word)."""
        ids: set[int] = set()
        for w in self.target_words:
            for v in (" " + w.strip(), w.strip(), " " + w.strip().capitalize()):
                t = token_ids(lm, v)
                if t:
                    ids.add(t[0])
        return sorted(ids)


def target_pattern(words: tuple[str, ...]) -> re.Pattern | None:
    """Whole target words, plural allowed ("wave" matches "waves", "sea" does not match "search")."""
    if not words:
        return None
    return re.compile(r"\b(" + "|".join(re.escape(w.strip()) for w in words) + r")(s|es)?\b", re.I)


def _nanmean(xs: list[float]) -> float:
    ok = [x for x in xs if not math.isnan(x)]
    return sum(ok) / len(ok) if ok else float("nan")


def distinct_n(ids: Sequence[Any], n: int) -> float:
    """Distinct n-grams over all n-grams of one text (1: no repeat; NaN with fewer than n tokens)."""
    grams = [tuple(ids[i: i + n]) for i in range(len(ids) - n + 1)]
    return len(set(grams)) / len(grams) if grams else math.nan


def compression_ratio(text: str) -> float:
    """UTF-8 bytes over zlib-compressed bytes (higher: more repetitive; NaN for empty text)."""
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw)) if raw else math.nan


def logits_at(lm: Any, tokens: Tensor, index: Tensor, **forward_kwargs: Any) -> Tensor:
    """`[B, K, V]` the bridge's logits at positions `index [B, K]` of each row of `tokens [B, S]`.

    Only those positions go through the unembedding (a pre-hook on the bridge's `unembed` gathers
    them): the judge scores the generated positions only and the objective the last token only, and
    a 49k-token unembedding over every position was a fifth of a forward pass. Call it inside any
    `steering(...)` block, as `lm.bridge(tokens)`. A bridge without an `unembed` module computes every
    position and gathers afterwards (same numbers, no saving)."""
    dev = _device(lm)
    idx = index.to(dev)
    unembed = getattr(lm.bridge, "unembed", None)
    if not isinstance(unembed, torch.nn.Module):
        logits = lm.bridge(tokens.to(dev), **forward_kwargs)
        return logits.gather(1, idx[..., None].expand(-1, -1, logits.shape[-1]))

    def pick(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        h = args[0]
        return (h.gather(1, idx[..., None].expand(-1, -1, h.shape[-1])), *args[1:]), kwargs

    handle = unembed.register_forward_pre_hook(pick, with_kwargs=True)
    try:
        return lm.bridge(tokens.to(dev), **forward_kwargs)
    finally:
        handle.remove()


class _PassThrough(torch.nn.Module):
    """Stands in for a decoder layer whose output is discarded anyway: returns its input."""

    def forward(self, hidden_states: Tensor | None = None, *args: Any, **kwargs: Any) -> Tensor:
        return hidden_states if hidden_states is not None else args[0]


def start_layer(lm: Any, hook: str) -> int | None:
    """The block a forward can resume at after `blocks.L.hook_resid_post` (L + 1), or None where it cannot:
    another hook, the last block's, or a bridge without a `blocks` stack of wrapped layers."""
    m = re.fullmatch(r"blocks\.(\d+)\.hook_resid_post", hook)
    blocks = getattr(lm.bridge, "blocks", None)
    if m is None or blocks is None or int(m.group(1)) + 1 >= len(blocks):
        return None
    if any(b._modules.get("_original_component") is None for b in blocks):
        return None
    return int(m.group(1)) + 1


def resume_logits(lm: Any, hook: str, resid: Tensor, index: Tensor | None = None) -> Tensor:
    """Logits of the model run on from `hook` (a block's resid_post) with `resid [B, S, d]` there.

    The bridge's `start_at_layer` swaps the residual in at block L + 1 but still runs blocks 0..L on
    it and throws their output away; here those blocks pass their input through instead, so they
    cost nothing. The blocks after the hook compute exactly what they compute in a full forward in
    which the hook's activation is `resid`. With `index [B, K]`, only those positions are unembedded
    (logits_at)."""
    k = start_layer(lm, hook)
    if k is None:
        raise WorkbenchError(f"cannot resume a forward after {hook}")
    blocks = lm.bridge.blocks[:k]
    saved = [b._modules["_original_component"] for b in blocks]
    try:
        for b in blocks:
            b._modules["_original_component"] = _PassThrough()
        x = resid.to(_device(lm))
        if index is None:
            return lm.bridge(x, start_at_layer=k)
        return logits_at(lm, x, index, start_at_layer=k)
    finally:
        for b, orig in zip(blocks, saved):
            b._modules["_original_component"] = orig


def score_generation(lm: Any, gen: Generation, judge: Judge, batch_size: int = 16) -> list[dict[str, float]]:
    """Per prompt: feature, probe, target_logprob, target_hit, ppl, distinct_2, distinct_3, compression,
    n_new (NaN where nothing was generated).

    Rows that share a prompt share its forward pass: the unsteered model reads each distinct prompt
    once, and its continuations run on a copy of that KV cache (a sweep judges many settings and
    decodes of the same prompts, and the prompt was a third of every row). Only the positions that
    predict a generated token are unembedded. A bridge without a manual KV cache reads every row
    whole, as before."""
    targets = torch.tensor(judge.target_ids(lm), dtype=torch.long) if judge.target_words else None
    pattern = target_pattern(judge.target_words)
    out: list[dict[str, float]] = []
    for k in range(len(gen.prompt_ids)):
        n = len(gen.new_ids[k])
        out.append({"n_new": float(n), "feature": math.nan, "probe": math.nan, "target_logprob": math.nan,
                    "ppl": math.nan, "target_hit": float(bool(pattern.search(gen.texts[k]))) if pattern else math.nan,
                    "distinct_2": distinct_n(gen.new_ids[k], 2), "distinct_3": distinct_n(gen.new_ids[k], 3),
                    "compression": compression_ratio(gen.texts[k])})
    groups: dict[tuple[int, ...], list[int]] = {}
    for k, p in enumerate(gen.prompt_ids):
        if gen.new_ids[k]:
            groups.setdefault(tuple(p), []).append(k)
    for prompt, ks in groups.items():
        prefix = _prompt_pass(lm, list(prompt))
        for sl in chunks(len(ks), batch_size):
            rows = ks[sl]
            if prefix is None:
                x, pred_logits = _read_whole(lm, gen, rows, judge.hook)
            else:
                x, pred_logits = _read_continued(lm, gen, rows, judge.hook, *prefix)
            lp = F.log_softmax(pred_logits.float(), -1).cpu()  # [rows, width, V]: lp[i, j] predicts new token j
            for i, k in enumerate(rows):
                r, n = out[k], len(gen.new_ids[k])
                xi = x[i, :n]
                if judge.sae is not None and judge.feature is not None:
                    w = judge.sae.W_dec
                    codes = judge.sae.encode(xi.to(device=w.device, dtype=w.dtype))
                    r["feature"] = float(feature_values(codes, torch.tensor([judge.feature], device=w.device)).mean())
                if judge.probe is not None:
                    r["probe"] = float((xi @ judge.probe.float()).mean()) + judge.probe_bias
                pred = lp[i, :n]
                tok = torch.tensor(gen.new_ids[k], dtype=torch.long)
                r["ppl"] = float(torch.exp(-pred.gather(1, tok.view(-1, 1)).mean()))
                if targets is not None and targets.numel():
                    r["target_logprob"] = float(torch.logsumexp(pred[:, targets], dim=1).mean())
    return out


def _prompt_pass(lm: Any, prompt: list[int]) -> tuple[Tensor, Any] | None:
    """The unsteered model's logits at the prompt's last token `[V]` and its KV cache, or None where the
    bridge gives no cache to continue from."""
    try:
        with torch.no_grad():
            logits, cache = lm.bridge(torch.tensor([prompt], device=_device(lm)), return_type="logits_and_cache")
    except Exception:  # noqa: BLE001 - a bridge without a manual KV cache: read each row whole
        return None
    if not hasattr(cache, "batch_repeat_interleave"):
        return None
    return logits[0, -1], cache


def _read_continued(lm: Any, gen: Generation, rows: list[int], hook: str, last: Tensor,
                    cache: Any) -> tuple[Tensor, Tensor]:
    """`x [R, W, d]` at `hook` over each row's generated tokens and the logits predicting them `[R, W, V]`,
    the generated tokens run on a copy of their prompt's KV cache."""
    b = pad_batch(lm, [gen.new_ids[k] for k in rows], "right")
    r, w = b.tokens.shape
    acts: dict[str, Tensor] = {}

    def keep(act: Tensor, site: Any) -> None:
        acts["x"] = act.detach().float().cpu()

    cache = copy.deepcopy(cache)
    cache.batch_repeat_interleave(r)
    index = torch.arange(max(w - 1, 1)).expand(r, -1)  # new token j + 1 is predicted at new position j
    with torch.no_grad(), editing(lm, hook, keep):
        logits = logits_at(lm, b.tokens, index, past_key_values=cache)
    pred = torch.cat([last.view(1, 1, -1).expand(r, 1, -1), logits[:, : w - 1]], 1)
    return acts["x"], pred


def _read_whole(lm: Any, gen: Generation, rows: list[int], hook: str) -> tuple[Tensor, Tensor]:
    """As _read_continued, each row read whole (prompt and generated tokens in one pass)."""
    b = pad_batch(lm, [gen.prompt_ids[k] + gen.new_ids[k] for k in rows], "right")
    acts: dict[str, Tensor] = {}

    def keep(act: Tensor, site: Any) -> None:
        acts["x"] = act.detach().float().cpu()

    starts = torch.tensor([len(gen.prompt_ids[k]) for k in rows])
    width = max(len(gen.new_ids[k]) for k in rows)
    index = (starts[:, None] - 1 + torch.arange(width)).clamp_max(b.tokens.shape[1] - 1)
    with torch.no_grad(), editing(lm, hook, keep):
        logits = logits_at(lm, b.tokens, index)
    x = acts["x"].gather(1, (starts[:, None] + torch.arange(width)).clamp_max(b.tokens.shape[1] - 1)[..., None]
                         .expand(-1, -1, acts["x"].shape[-1]))
    return x, logits


def mean_scores(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = rows[0].keys() if rows else []
    return {k: _nanmean([r[k] for r in rows]) for k in keys}


class NeutralKL:
    """KL(unsteered || steered) per token on fixed neutral text; the unsteered side is computed once.

    The neutral text is steered the way the prompts are, so a setting's cost is the push it really
    gives: under `prompt` every neutral token is a prompt token, under `last` each text's last token
    is the prompt's last, under `generated` (alone) every token is one the model writes, under `all`
    every token; a token range counts from each text's first token. (A mix of `prompt` and
    `generated` reads the text as prompt.) The KL is averaged over the positions the steering can
    reach: each text's first steered token and every later one. Before it a causal model is
    unchanged, so counting those tokens would only dilute the cost of steering one token. When no
    neutral token is steered at all the cost is NaN, never a reassuring 0.
    """

    def __init__(self, lm: Any, texts: list[str], max_tokens: int = 64, batch_size: int = 8) -> None:
        self.lm = lm
        self.batches: list[TokenBatch] = [encode_texts(lm, texts[sl], "right", max_tokens)
                                          for sl in chunks(len(texts), batch_size)]
        self.base = [self._logprobs(b, [], self._state(b, [])) for b in self.batches]

    @staticmethod
    def _state(b: TokenBatch, ivs: list[Intervention]) -> RunState:
        kinds = {iv.positions.kind for iv in ivs}
        prompt_len = torch.zeros_like(b.lengths) if kinds == {"generated"} else b.lengths
        return RunState(prompt_len=prompt_len, left_pad=b.left_pad)

    @staticmethod
    def _reach(b: TokenBatch, ivs: list[Intervention], state: RunState) -> Tensor:
        """`[B, S]` real positions at or after each row's first steered token."""
        pos = torch.arange(b.tokens.shape[1])
        steered = torch.zeros_like(b.mask)
        for iv in ivs:
            m = iv.positions.mask(pos, b.tokens.shape[0], state)
            steered |= b.mask if m is None else (m.cpu() & b.mask)
        return (steered.long().cumsum(1) > 0) & b.mask

    def _logprobs(self, b: TokenBatch, ivs: Any, state: RunState) -> Tensor:
        with torch.no_grad(), steering(self.lm, ivs, state=state):
            logits = self.lm.bridge(b.tokens.to(_device(self.lm)))
        return F.log_softmax(logits.float(), -1).cpu()

    def many(self, hook: str, vectors: Tensor, positions: Any = None, rows_per_pass: int = 8) -> list[float]:
        """KL for each of K additive vectors `[K, d]` at `hook`, several settings per forward pass.

        Each row of a pass carries its own vector (AddVector broadcasts a `[rows, 1, d]` vector),
        so a sweep pays for a few wide passes instead of one pass per setting.
        """
        from steering.interventions import AddVector
        from steering.positions import Positions

        positions = positions or Positions()
        k_all = vectors.shape[0]
        total = torch.zeros(k_all, dtype=torch.float64)
        count = 0
        for i, (b, base) in enumerate(zip(self.batches, self.base)):
            n = b.tokens.shape[0]
            probe = [AddVector(hook, vectors[:1], 1.0, positions)]
            reach = self._reach(b, probe, self._state(b, probe))
            count += int(reach.sum())
            resid = self._resid(hook, i)
            for ks in chunks(k_all, max(1, rows_per_pass // n)):
                k = ks.stop - ks.start
                rows = TokenBatch(b.tokens.repeat(k, 1), b.mask.repeat(k, 1), b.left_pad.repeat(k))
                vec = vectors[ks].repeat_interleave(n, 0).unsqueeze(1)
                ivs = [AddVector(hook, vec, 1.0, positions)]
                if resid is not None:  # the blocks before the hook ran once, unsteered; resume after it
                    x = resid.repeat(k, 1, 1)
                    m = positions.mask(torch.arange(x.shape[1]), x.shape[0], self._state(rows, ivs))
                    x = x + vec.to(x) if m is None else torch.where(m.unsqueeze(-1), x + vec.to(x), x)
                    with torch.no_grad():
                        new = F.log_softmax(resume_logits(self.lm, hook, x).float(), -1).cpu()
                else:
                    new = self._logprobs(rows, ivs, self._state(rows, ivs))
                kl = (base.exp() * (base - new.view(k, *base.shape))).sum(-1)  # [k, n, S]
                total[ks] += (kl * reach).sum((1, 2)).double()
        return (total / count).tolist() if count else [math.nan] * k_all

    def _resid(self, hook: str, i: int) -> Tensor | None:
        """Batch i's unsteered activation at `hook`, where a forward can resume after it (else None).

        Checked once per hook: resuming from it unsteered must give the log-probabilities the full
        forward gave (to 1e-5); where it does not, every pass runs the whole model as before."""
        if not hasattr(self, "_resids"):
            self._resids: dict[str, list[Tensor] | None] = {}
        if hook not in self._resids:
            got: list[Tensor] | None = None
            if start_layer(self.lm, hook) is not None:
                got = [capture(self.lm, b.tokens.to(_device(self.lm)), [hook], stop=True)[hook] for b in self.batches]
                with torch.no_grad():
                    again = F.log_softmax(resume_logits(self.lm, hook, got[0]).float(), -1).cpu()
                if not torch.allclose(again, self.base[0], atol=1e-5, rtol=1e-5):
                    got = None
            self._resids[hook] = got
        got = self._resids[hook]
        return None if got is None else got[i]

    def __call__(self, interventions: Intervention | Iterable[Intervention]) -> float:
        ivs = [interventions] if isinstance(interventions, Intervention) else list(interventions)
        total, count = 0.0, 0
        for b, base in zip(self.batches, self.base):
            state = self._state(b, ivs)
            new = self._logprobs(b, ivs, state)
            kl = (base.exp() * (base - new)).sum(-1)  # [B, S]
            reach = self._reach(b, ivs, state) if ivs else b.mask
            total += float(kl[reach].sum())
            count += int(reach.sum())
        return total / count if count else math.nan
