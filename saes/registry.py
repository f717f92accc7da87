"""One registry from architecture name to class, so configs, the CLI and loaders agree on names."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

import torch

from workbench.errors import choices_error

if TYPE_CHECKING:
    from saes.base import SparseAutoencoder
    from saes.config import SAEConfig

_REGISTRY: dict[str, type["SparseAutoencoder"]] = {}
T = TypeVar("T")


def register(cls: T) -> T:
    """Class decorator: make `cls.architecture` buildable by name."""
    name = cls.architecture  # type: ignore[attr-defined]
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise RuntimeError(f"architecture {name!r} registered twice")
    _REGISTRY[name] = cls  # type: ignore[assignment]
    return cls


def _load_all() -> None:
    # Importing the modules runs their @register decorators.
    from saes import batchtopk, feature_choice, jumprelu, matching_pursuit, relu, topk  # noqa: F401


def architectures() -> tuple[str, ...]:
    _load_all()
    return tuple(sorted(_REGISTRY))


def sae_class(name: str) -> type["SparseAutoencoder"]:
    _load_all()
    if name not in _REGISTRY:
        raise choices_error("architecture", name, sorted(_REGISTRY))
    return _REGISTRY[name]


def build_sae(cfg: "SAEConfig", *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
              generator: torch.Generator | None = None) -> "SparseAutoencoder":
    """A freshly initialised SAE of the architecture `cfg` names."""
    return sae_class(cfg.architecture)(cfg, device=device, dtype=dtype, generator=generator)
