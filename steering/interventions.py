"""Interventions: composable edits of one hook point's activation, applied through the floor's hooks.

Each intervention is a plain object with a `hook` and `apply(act, site, state)`; it is also
callable as `fn(act, site)`, so it can be handed to `workbench.replacing` directly. `steering()`
groups any number of them by hook point (several hooks at once, several edits per hook, applied
in the order given) and removes every hook on exit, also when the body raises.

SAE edits (clamp, scale, add to, ablate a feature) are written as the change they make:
encode -> edit -> decode -> add back the error term `x - decode(encode(x))` equals
`x + (new - old) @ W_dec[edited]`, because decoding is linear in the codes. Computing it in that
form keeps everything the SAE does not touch *bit-identical* (a clamp of a feature to its own
value changes nothing at all), where decoding and re-adding the error would round.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from steering.positions import Positions, RunState
from workbench.errors import WorkbenchError, choices_error
from workbench.hooks import HookSite, replacing

EDIT_OPS = ("set", "multiply", "add")
UNITS = ("raw", "max", "mean_active", "norm")


class Intervention:
    """Base: `delta(act, site)` is the change at every position; `positions` picks where it lands."""

    hook: str
    positions: Positions

    def delta(self, act: Tensor, site: HookSite) -> Tensor:
        raise NotImplementedError

    def apply(self, act: Tensor, site: HookSite, state: RunState | None = None) -> Tensor:
        mask = self.positions.mask(site.positions, act.shape[0], state)
        if state is not None:
            note_steered(state, self, site.positions, mask, act.shape[0])
        d = self.delta(act, site)
        if mask is None:
            return act + d
        return torch.where(mask.unsqueeze(-1), act + d, act)

    def __call__(self, act: Tensor, site: HookSite) -> Tensor:
        return self.apply(act, site, None)

    def describe(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "hook": self.hook, "positions": self.positions.kind}


@dataclass
class AddVector(Intervention):
    """`act + coeff * vector` at the chosen positions (DiffMean, PCA, a decoder row, any direction)."""

    hook: str
    vector: Tensor
    coeff: float = 1.0
    positions: Positions = field(default_factory=Positions)
    label: str = ""
    unit: str = "raw"  # what one unit of the coefficient the user gave was (see add_feature)
    per_unit: float = 1.0  # its size: coeff = (user's coefficient) * per_unit

    def delta(self, act: Tensor, site: HookSite) -> Tensor:
        if self.vector.shape[-1] != act.shape[-1]:
            raise WorkbenchError(
                f"steering vector has width {self.vector.shape[-1]} but {self.hook} has width {act.shape[-1]}"
            )
        return (self.coeff * self.vector).to(device=act.device, dtype=act.dtype)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "coeff": self.coeff, "label": self.label, "unit": self.unit,
                "per_unit": self.per_unit, "coeff_in_unit": self.coeff / self.per_unit if self.per_unit else math.nan,
                "vector_norm": float(self.vector.norm())}


@dataclass(frozen=True)
class FeatureEdit:
    """One feature's new activation: `set` to value, `multiply` by it, or `add` it."""

    feature: int
    op: str
    value: float

    def __post_init__(self) -> None:
        if self.op not in EDIT_OPS:
            raise choices_error("feature edit", self.op, EDIT_OPS)


def code_edit_delta(sae: Any, feats: Tensor, act: Tensor, new_codes: Callable[[Tensor], Tensor]) -> Tensor:
    """What an edit of some features' codes adds to the activation: (new - old codes) @ their decoder
    rows. Only the difference is decoded, so the SAE's error term (x - x_hat) stays in place."""
    w = sae.W_dec
    x = act.reshape(-1, act.shape[-1]).to(device=w.device, dtype=w.dtype)
    feats = feats.to(w.device)
    with torch.no_grad():
        old = feature_values(sae.encode(x), feats)
        d = (new_codes(old) - old) @ w[feats]
    return d.reshape(act.shape).to(device=act.device, dtype=act.dtype)


@dataclass
class SAEEdit(Intervention):
    """Encode with the SAE, edit some features, decode, keep the error term (see module docstring)."""

    sae: Any
    edits: Sequence[FeatureEdit]
    positions: Positions = field(default_factory=Positions)
    hook: str = ""
    units: dict = field(default_factory=dict)  # feature -> {"unit", "per_unit"} the values were given in

    def __post_init__(self) -> None:
        self.hook = self.hook or self.sae.cfg.hook
        if not self.hook:
            raise WorkbenchError("this SAE's cfg.json names no hook point; pass hook=...")
        if not self.edits:
            raise WorkbenchError("an SAE edit needs at least one feature edit")
        for e in self.edits:
            check_feature(self.sae, e.feature)
        self._feats = torch.tensor([e.feature for e in self.edits], dtype=torch.long)

    def new_codes(self, old: Tensor) -> Tensor:
        new = old.clone()
        for j, e in enumerate(self.edits):
            if e.op == "set":
                new[:, j] = e.value
            elif e.op == "multiply":
                new[:, j] = old[:, j] * e.value
            else:
                new[:, j] = old[:, j] + e.value
        return new

    def delta(self, act: Tensor, site: HookSite) -> Tensor:
        return code_edit_delta(self.sae, self._feats, act, self.new_codes)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "edits": [{**e.__dict__, **self.units.get(e.feature, {})} for e in self.edits]}


def note_steered(state: RunState, iv: Intervention, positions: Tensor, mask: Tensor | None, batch: int) -> None:
    """Count, per row, the real (not left-pad) positions `iv` touches in this pass, in
    `state.extra["steered"][id(iv)]`: the record that shows a hook which fired on the prompt but
    not on the generated tokens (steering.generation reports it per prompt)."""
    pos = positions.to(torch.long).view(1, -1).cpu()
    real = pos >= state.pad(batch, pos.device).view(-1, 1)
    hit = real if mask is None else (mask.cpu() & real)
    counts = state.extra.setdefault("steered", {})
    counts[id(iv)] = counts[id(iv)] + hit.sum(1) if id(iv) in counts else hit.sum(1)


def steered_counts(state: RunState, interventions: Sequence[Intervention], batch: int) -> list[list[int]]:
    """Per row, one count per intervention (in the order given) of the positions it touched."""
    counts = state.extra.get("steered", {})
    zero = torch.zeros(batch, dtype=torch.long)
    cols = [counts.get(id(iv), zero) for iv in interventions]
    return [[int(c[i]) for c in cols] for i in range(batch)]


def feature_values(codes: Any, feats: Tensor) -> Tensor:
    """`[tokens, len(feats)]` activations of the given features, read from sparse codes."""
    hit = codes.cols.unsqueeze(1) == feats.unsqueeze(0)
    e, j = hit.nonzero(as_tuple=True)
    out = codes.vals.new_zeros(codes.batch_size, feats.numel())
    return out.index_put((codes.rows[e], j), codes.vals[e].detach(), accumulate=True)


def check_feature(sae: Any, feature: int) -> None:
    f = sae.num_features
    if not isinstance(feature, int) or not 0 <= feature < f:
        raise WorkbenchError(f"unknown feature index {feature!r}; this SAE has features 0..{f - 1}")


# ---------------------------------------------------------------------------- constructors


def add_feature(sae: Any, feature: int, coeff: float, *, unit: str = "raw", stats: Any = None,
                positions: Positions | None = None) -> AddVector:
    """Add `coeff` times the feature's decoder row, in the chosen unit.

    raw: `coeff * W_dec[f]`; max / mean_active: `coeff * (the feature's max or mean-when-active
    activation) * W_dec[f]` (AxBench's rule uses max); norm: `coeff * (hook mean norm) * unit(W_dec[f])`.
    """
    check_feature(sae, feature)
    v = sae.W_dec[feature].detach()
    scale = unit_scale(unit, v, stats, feature)
    return AddVector(sae.cfg.hook, v, coeff * scale, positions or Positions(), label=f"feature {feature}", unit=unit,
                     per_unit=scale)


def add_direction(hook: str, vector: Tensor, coeff: float, *, unit: str = "raw", stats: Any = None,
                  positions: Positions | None = None, label: str = "") -> AddVector:
    """Add `coeff * vector` (raw) or `coeff * mean_norm * vector / |vector|` (norm)."""
    if unit not in ("raw", "norm"):
        raise choices_error("unit for a direction", unit, ("raw", "norm"))
    scale = unit_scale(unit, vector, stats, None)
    return AddVector(hook, vector.detach(), coeff * scale, positions or Positions(), label=label, unit=unit,
                     per_unit=scale)


def unit_scale(unit: str, vector: Tensor, stats: Any, feature: int | None) -> float:
    if unit not in UNITS:
        raise choices_error("coefficient unit", unit, UNITS)
    if unit == "raw":
        return 1.0
    if stats is None:
        raise WorkbenchError(f"unit {unit!r} needs activation statistics (steering.measure_stats)")
    if unit == "norm":
        return float(stats.mean_norm) / max(float(vector.norm()), 1e-12)
    if feature is None:
        raise WorkbenchError(f"unit {unit!r} applies to SAE features only; use raw or norm for a direction")
    return float(getattr(stats, unit)[feature])


CLAMP_UNITS = UNITS


def clamp_features(sae: Any, features: dict[int, float], *, unit: str = "raw", stats: Any = None,
                   positions: Positions | None = None) -> SAEEdit:
    """Set each feature to a value (where it is silent too): encode, set, decode, keep the error term.

    unit raw: the value is the activation; max / mean_active: the value times the feature's max or
    mean-when-active activation (`stats`), so "clamp to 5x max" (Templeton et al.) is `5.0, unit="max"`;
    norm: the activation at which the feature's decoded part has norm value x the hook's mean norm.
    The unit and its size are recorded in `describe()`.
    """
    if unit not in CLAMP_UNITS:
        raise choices_error("clamp unit", unit, CLAMP_UNITS)
    for f in features:
        check_feature(sae, f)
    scale = {f: unit_scale(unit, sae.W_dec[f], stats, f) for f in features}
    return SAEEdit(sae, [FeatureEdit(f, "set", v * scale[f]) for f, v in features.items()], positions or Positions(),
                   units={f: {"unit": unit, "per_unit": scale[f], "value_in_unit": v} for f, v in features.items()})


def scale_features(sae: Any, features: dict[int, float], *, positions: Positions | None = None) -> SAEEdit:
    return SAEEdit(sae, [FeatureEdit(f, "multiply", v) for f, v in features.items()], positions or Positions())


def shift_features(sae: Any, features: dict[int, float], *, positions: Positions | None = None) -> SAEEdit:
    """Add a value to each feature's activation (LF-Steering's `activation + alpha`)."""
    return SAEEdit(sae, [FeatureEdit(f, "add", v) for f, v in features.items()], positions or Positions())


def ablate_features(sae: Any, features: Iterable[int], *, mode: str = "zero", stats: Any = None,
                    positions: Positions | None = None) -> SAEEdit:
    """Zero-ablate, or mean-ablate (to the feature's mean over all tokens, from `stats`)."""
    if mode not in ("zero", "mean"):
        raise choices_error("ablation", mode, ("zero", "mean"))
    feats = list(features)
    if mode == "mean" and stats is None:
        raise WorkbenchError("mean ablation needs activation statistics (steering.measure_stats)")
    values = {f: 0.0 if mode == "zero" else float(stats.mean[f]) for f in feats}
    return clamp_features(sae, values, positions=positions)


# ---------------------------------------------------------------------------- applying


@contextmanager
def steering(lm: Any, interventions: Intervention | Iterable[Intervention], *, state: RunState | None = None,
             prompt_len: int | None = None, left_pad: Tensor | None = None) -> Iterator[RunState]:
    """Every forward pass of `lm.bridge` inside the block runs with the interventions; none after."""
    ivs = [interventions] if isinstance(interventions, Intervention) else list(interventions)
    state = state or RunState(prompt_len=prompt_len, left_pad=left_pad)
    if not ivs:
        yield state
        return
    by_hook: dict[str, list[Intervention]] = {}
    for iv in ivs:
        by_hook.setdefault(iv.hook, []).append(iv)

    def chain(group: list[Intervention]):
        def fn(act: Tensor, site: HookSite) -> Tensor:
            for iv in group:
                act = iv.apply(act, site, state)
            return act

        return fn

    with replacing(lm, {h: chain(g) for h, g in by_hook.items()}):
        yield state


def run_with_interventions(lm: Any, tokens: Tensor, interventions: Intervention | Iterable[Intervention],
                           **forward_kwargs: Any) -> Tensor:
    """The plain-function form: logits of one forward pass with the interventions in place."""
    with torch.no_grad(), steering(lm, interventions):
        return lm.bridge(tokens, **forward_kwargs)
