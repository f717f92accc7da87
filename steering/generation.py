"""Steered generation: greedy or seeded sampling, batched over prompts, through the bridge's generate.

Prompts are left-padded with a mask (the bridge then keeps positions right and the KV cache on);
the interventions learn the padded prompt length and each row's padding through `RunState`, so
"prompt only", "generated only" and token ranges mean the same thing in every row. A seed fixes
sampling: the same prompts, seed and batch size give the same text, steered or not.

Every generation records, per prompt, how many token positions the model read (counted at the
model's own forward: the prompt, BOS included, and every generated token but the last, which is
only written) and how many of them each intervention changed (counted where it fired). Under
`positions all` the two are equal; a hook that fires on the prompt but not on the generated
tokens (one that skips length-1 inputs, or runs fewer times under the KV cache) shows as a
shortfall instead of passing silently.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from steering.interventions import Intervention, steered_counts, steering
from steering.positions import RunState
from steering.reading import _device, chunks, encode_texts
from workbench.errors import WorkbenchError
from workbench.hooks import _hf_module


@dataclass
class Generation:
    prompts: list[str]
    prompt_ids: list[list[int]] = field(default_factory=list)  # with the model's prefix (BOS)
    new_ids: list[list[int]] = field(default_factory=list)  # generated, cut at the first EOS
    texts: list[str] = field(default_factory=list)  # the generated continuation only
    read_positions: list[int] = field(default_factory=list)  # real tokens the model read, per prompt
    steered_positions: list[list[int]] = field(default_factory=list)  # per prompt, one count per intervention
    interventions: list[dict] = field(default_factory=list)  # each intervention's describe()


def generate(lm: Any, prompts: list[str], interventions: Intervention | Iterable[Intervention] = (), *,
             max_new_tokens: int = 20, do_sample: bool = False, seed: int = 0, temperature: float = 1.0,
             top_p: float | None = None, batch_size: int = 16) -> Generation:
    if not prompts:
        raise WorkbenchError("the prompt set is empty; give at least one prompt")
    if any(not p.strip() for p in prompts):
        raise WorkbenchError("a prompt is empty; every prompt needs some text")
    if max_new_tokens < 1:
        raise WorkbenchError(f"max_new_tokens must be >= 1; got {max_new_tokens}")
    eos = getattr(lm.tokenizer, "eos_token_id", None)
    ivs = [interventions] if isinstance(interventions, Intervention) else list(interventions)
    out = Generation(list(prompts), interventions=[iv.describe() for iv in ivs])
    for n, sl in enumerate(chunks(len(prompts), batch_size)):
        b = encode_texts(lm, prompts[sl], side="left")
        width = b.tokens.shape[1]
        state = RunState(prompt_len=width, left_pad=b.left_pad)
        dev = _device(lm)
        fed = _FedCounter(b.left_pad)
        handle = _hf_module(lm.bridge).register_forward_pre_hook(fed, with_kwargs=True)
        with torch.no_grad(), torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []), \
                steering(lm, ivs, state=state):
            torch.manual_seed(seed * 1_000_003 + n)
            toks = lm.bridge.generate(
                b.tokens.to(dev), max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                top_p=top_p, stop_at_eos=False, return_type="tokens", verbose=False,
                attention_mask=b.mask.long().to(dev), use_past_kv_cache=True,
            )
        handle.remove()
        toks = toks.cpu()
        out.read_positions += fed.counts.tolist()
        out.steered_positions += steered_counts(state, ivs, toks.shape[0])
        for i in range(toks.shape[0]):
            new = toks[i, width:].tolist()
            if eos is not None and eos in new:
                new = new[: new.index(eos)]
            out.prompt_ids.append(b.tokens[i][b.mask[i]].tolist())
            out.new_ids.append(new)
            out.texts.append(lm.tokenizer.decode(new, skip_special_tokens=True) if lm.tokenizer else "")
    return out


class _FedCounter:
    """Forward pre-hook on the wrapped model: per row, the real (not left-pad) tokens each pass reads."""

    def __init__(self, left_pad: torch.Tensor) -> None:
        self.left_pad = left_pad
        self.counts = torch.zeros_like(left_pad)
        self.seen = 0

    def __call__(self, module: Any, args: tuple, kwargs: dict) -> None:
        ids = args[0] if args else kwargs.get("input_ids", kwargs.get("inputs_embeds"))
        n = int(ids.shape[1])
        pos = torch.arange(self.seen, self.seen + n).view(1, -1)
        self.counts += (pos >= self.left_pad.view(-1, 1)).sum(1)
        self.seen += n
