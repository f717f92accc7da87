"""Running a bridged model with hooks: capture activations, replace them, or edit them.

The one place harvesting, evals and steering touch hook points, so "stop after the deepest
hook", "hooks are gone after the block" and "which token positions is this" are solved once.

API (final; what other packages code against):

    from workbench import capture, replacing, editing, HookSite

    acts = capture(lm, tokens, ["blocks.4.hook_resid_post"], stop=True)   # {hook: Tensor}
        # stop=True: blocks after the deepest hooked block never run and no logits are made
        # (a hook past the blocks, e.g. ln_final.*, runs the whole model). Runs under no_grad.
        # Extra keyword arguments (attention_mask=...) go to the bridge's forward.

    with replacing(lm, "blocks.8.hook_resid_post", fn):   # or replacing(lm, {hook: fn, ...})
        logits = lm.bridge(tokens)                       # or lm.bridge.generate(...)
        # fn(act, site) -> Tensor of act's shape; it replaces the activation.

    with editing(lm, {"blocks.4.hook_resid_post": fn_a, "blocks.8.hook_resid_post": fn_b}):
        out = lm.bridge.generate(tokens, max_new_tokens=8, do_sample=False, verbose=False)
        # fn(act, site) -> None after editing act in place, or a Tensor to use instead.

    HookSite(name, call, positions)
        name: the hook point; call: 0-based count of model forward passes inside the block
        (generate: call 0 is the prompt, then one call per new token); positions: LongTensor
        [act.shape[1]] of absolute token positions (index in the full token sequence, counting
        padding) of act's dim 1, correct under generate's KV cache, where each later call sees
        only the newest token (positions == [prompt_len + call - 1]). For activations whose dim 1
        is not the sequence (attention patterns [b, head, q, k]) positions still index dim 1.

Both context managers validate every hook name first (WorkbenchError naming the bad ones and
the valid ones, before anything runs), apply to every forward pass of `lm.bridge` inside the
block (`__call__`, `run_with_cache`, `run_with_hooks`, each generation step), and remove their
hooks on exit, also when the body raises. They nest; inner hooks run after outer ones.
A function that returns something other than a tensor of the activation's shape (None is
allowed for `editing` only) raises ValueError naming the hook; the activation's dtype and device
are the model's, so build replacements with `torch.zeros_like(act)`, `act + v.to(act)`, ...

How positions are known: TransformerBridge.generate calls the bridge once with the prompt,
then with only the last token plus `past_key_values` (an HF cache). Every path ends in the
wrapped HF model's forward, so a forward-pre-hook on that module reads the cache length (or
`cache_position` when given) before the step runs: that is the offset of the step's first token.
(workbench.models makes the cache reach TransformerLens 4.3's attention under transformers 5.2x,
which renamed the keyword; without that, cached generation silently ignored the prompt.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from workbench.models import LoadedModel

HookFn = Callable[[Tensor, "HookSite"], "Tensor | None"]
Hooks = str | Mapping[str, HookFn]


@dataclass(frozen=True)
class HookSite:
    """Where an intervention fires: which hook point, which forward pass, which token positions."""

    name: str
    call: int
    positions: Tensor


def capture(lm: LoadedModel, inputs: Any, hooks: list[str] | tuple[str, ...], stop: bool = True,
            **forward_kwargs: Any) -> dict[str, Tensor]:
    """Activations at `hooks` for one forward pass; with `stop`, nothing past the deepest hook runs."""
    hooks = list(hooks)
    lm.check_hooks(hooks)
    stop_at = lm.stop_layer(hooks) if stop else None
    with torch.no_grad():
        _, cache = lm.bridge.run_with_cache(inputs, names_filter=hooks, stop_at_layer=stop_at, **forward_kwargs)
    return {h: cache[h] for h in hooks}


@contextmanager
def replacing(lm: LoadedModel, hooks: Hooks, fn: HookFn | None = None) -> Iterator[LoadedModel]:
    """For the block, the activation at each hook is whatever its fn(act, site) returns."""
    with _intervening(lm, _as_mapping(hooks, fn), must_return=True):
        yield lm


@contextmanager
def editing(lm: LoadedModel, hooks: Hooks, fn: HookFn | None = None) -> Iterator[LoadedModel]:
    """For the block, fn(act, site) edits each hook's activation in place (or returns a replacement)."""
    with _intervening(lm, _as_mapping(hooks, fn), must_return=False):
        yield lm


def _as_mapping(hooks: Hooks, fn: HookFn | None) -> dict[str, HookFn]:
    if isinstance(hooks, str):
        if fn is None:
            raise TypeError("give a function with a single hook name: replacing(lm, hook, fn)")
        return {hooks: fn}
    if fn is not None:
        raise TypeError("give either (hook, fn) or a mapping {hook: fn}, not both")
    return dict(hooks)


class _PassCounter:
    """Counts the model's forward passes and knows the absolute position of each pass's first token."""

    def __init__(self) -> None:
        self.call = -1
        self.offset = 0

    def before_forward(self, module: Any, args: tuple, kwargs: dict) -> None:
        self.call += 1
        self.offset = _offset(args, kwargs)

    def site(self, name: str, act: Tensor) -> HookSite:
        seq = act.shape[1] if act.dim() > 1 else act.shape[0]
        positions = torch.arange(self.offset, self.offset + seq, device=act.device)
        return HookSite(name=name, call=max(self.call, 0), positions=positions)


def _offset(args: tuple, kwargs: dict) -> int:
    """Where this pass's first token sits in the full sequence (0 unless earlier tokens are cached).

    Read from `cache_position` when given, else the KV cache's length, else the attention mask
    (generate passes one covering every token so far, while the input holds only the new one).
    The mask covers a cache that holds nothing (a bridge whose attention ignores the cache).
    """
    cache_position = kwargs.get("cache_position")
    if isinstance(cache_position, Tensor) and cache_position.numel():
        return int(cache_position.reshape(-1)[0])
    past = kwargs.get("past_key_values", kwargs.get("cache"))
    if past is not None and hasattr(past, "get_seq_length") and past.get_seq_length() > 0:
        return int(past.get_seq_length())
    inputs = args[0] if args else kwargs.get("input_ids", kwargs.get("inputs_embeds"))
    mask = kwargs.get("attention_mask")
    if isinstance(inputs, Tensor) and inputs.dim() > 1 and isinstance(mask, Tensor) and mask.dim() == 2:
        return max(int(mask.shape[-1]) - int(inputs.shape[1]), 0)
    return 0


def _hf_module(bridge: Any) -> torch.nn.Module:
    """The wrapped Hugging Face model: every bridge forward path ends in its __call__."""
    for attr in ("original_model", "hf_model", "model"):
        mod = getattr(bridge, attr, None)
        if isinstance(mod, torch.nn.Module) and mod is not bridge:
            return mod
    return bridge


def _tl_hook(name: str, fn: HookFn, counter: _PassCounter, must_return: bool) -> Callable:
    def hook(act: Tensor, hook: Any = None) -> Tensor:
        out = fn(act, counter.site(name, act))
        if out is None and not must_return:
            return act
        if not isinstance(out, Tensor) or out.shape != act.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"the function at {name} must return a tensor of shape {tuple(act.shape)}; got {got}")
        return out

    return hook


@contextmanager
def _intervening(lm: LoadedModel, fns: dict[str, HookFn], must_return: bool) -> Iterator[None]:
    lm.check_hooks(list(fns))
    counter = _PassCounter()
    with ExitStack() as stack:
        handle = _hf_module(lm.bridge).register_forward_pre_hook(counter.before_forward, with_kwargs=True)
        stack.callback(handle.remove)
        fwd = [(name, _tl_hook(name, f, counter, must_return)) for name, f in fns.items()]
        stack.enter_context(lm.bridge.hooks(fwd_hooks=fwd))
        yield
