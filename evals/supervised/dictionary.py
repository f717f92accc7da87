"""Supervised feature dictionaries: one vector per value of each known attribute.

Makelov, Lange, Nanda 2024 (arXiv 2405.08366), section 3:

- mean dictionary: ā = mean of the activations; u_{i,v} = mean of the activations of prompts
  with attribute i = v, minus ā. Reconstruction â(p) = ā + Σ_i u_{i, a_i(p)}.
- MSE dictionary: U = (CᵀC)⁺ Cᵀ (A − ā), C the concatenated one-hot codes of every attribute,
  i.e. the least-squares fit of the centred activations by one vector per attribute value.

When attributes are independent the two agree; when they are correlated the mean dictionary's
u_{i,v} also carries the other attributes' vectors (E[u_j | a_i = v]), which least squares does not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from workbench.errors import WorkbenchError


@dataclass
class SupervisedDictionary:
    """ā and one vector per (attribute, value); `kind` is "mean" or "mse"."""

    mean: Tensor  # [d]
    vectors: dict[str, dict[str, Tensor]]  # attribute -> value -> u [d]
    kind: str

    def stack(self, attribute: str, values: Sequence[str]) -> Tensor:
        """[N, d]: u_{attribute, v} of each prompt's value v (zero for a value never seen when fitting)."""
        table = self.vectors[attribute]
        zero = torch.zeros_like(self.mean)
        return torch.stack([table.get(v, zero) for v in values])

    def reconstruct(self, attributes: Mapping[str, Sequence[str]]) -> Tensor:
        """â = ā + Σ_i u_{i, a_i(p)} for every prompt: [N, d]."""
        n = len(next(iter(attributes.values())))
        out = self.mean.expand(n, -1).clone()
        for a in self.vectors:
            out += self.stack(a, attributes[a])
        return out

    def edit(self, acts: Tensor, attribute: str, source: Sequence[str], target: Sequence[str]) -> Tensor:
        """The supervised edit a − u_{i,v} + u_{i,v'} (v from `source`, v' from `target`, per prompt)."""
        return acts - self.stack(attribute, source).to(acts) + self.stack(attribute, target).to(acts)

    def edit_magnitude(self, attributes: Mapping[str, Sequence[str]], attribute: str) -> Tensor:
        """[N]: the share of â − ā that the edit removes, w = u_{i,a_i}ᵀ(â − ā)/‖â − ā‖² (weights sum to 1)."""
        centred = self.reconstruct(attributes) - self.mean
        u = self.stack(attribute, attributes[attribute])
        return (u * centred).sum(-1) / centred.pow(2).sum(-1).clamp_min(1e-12)


def _values(attributes: Mapping[str, Sequence[str]], n: int) -> dict[str, list[str]]:
    out = {}
    for a, vals in attributes.items():
        if len(vals) != n:
            raise WorkbenchError(f"attribute {a!r} has {len(vals)} values for {n} activations")
        out[a] = sorted(set(vals))
    return out


def mean_dictionary(acts: Tensor, attributes: Mapping[str, Sequence[str]]) -> SupervisedDictionary:
    """Attribute-conditional means minus the overall mean (see the module docstring)."""
    a = acts.double()
    mean = a.mean(0)
    vectors: dict[str, dict[str, Tensor]] = {}
    for attr, values in _values(attributes, a.shape[0]).items():
        labels = list(attributes[attr])
        vectors[attr] = {}
        for v in values:
            m = torch.tensor([x == v for x in labels])
            vectors[attr][v] = (a[m].mean(0) - mean).to(acts.dtype)
    return SupervisedDictionary(mean.to(acts.dtype), vectors, "mean")


def one_hot_codes(attributes: Mapping[str, Sequence[str]], n: int) -> tuple[Tensor, list[tuple[str, str]]]:
    """C [N, Σ_i |values_i|]: the concatenated one-hot codes, and the (attribute, value) of each column."""
    cols: list[tuple[str, str]] = []
    blocks = []
    for attr, values in _values(attributes, n).items():
        index = {v: j for j, v in enumerate(values)}
        block = torch.zeros(n, len(values), dtype=torch.float64)
        block[torch.arange(n), torch.tensor([index[x] for x in attributes[attr]])] = 1.0
        blocks.append(block)
        cols += [(attr, v) for v in values]
    return torch.cat(blocks, 1), cols


def mse_dictionary(acts: Tensor, attributes: Mapping[str, Sequence[str]]) -> SupervisedDictionary:
    """U = (CᵀC)⁺ Cᵀ (A − ā): least squares over the one-hot attribute codes."""
    a = acts.double()
    mean = a.mean(0)
    c, cols = one_hot_codes(attributes, a.shape[0])
    u = torch.linalg.pinv(c.T @ c) @ (c.T @ (a - mean))
    vectors: dict[str, dict[str, Tensor]] = {}
    for j, (attr, v) in enumerate(cols):
        vectors.setdefault(attr, {})[v] = u[j].to(acts.dtype)
    return SupervisedDictionary(mean.to(acts.dtype), vectors, "mse")


DICTIONARIES = {"mean": mean_dictionary, "mse": mse_dictionary}
