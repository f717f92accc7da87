"""One registry from architecture name to class, so configs, the CLI and loaders agree on names.

Decorator-free: the built-in classes are listed in `saes.architectures.BUILTIN`, which imports
nothing from here (no import loop); `register` adds an architecture defined elsewhere (a plugin,
a test) at run time. Everything that needs to know what an architecture does asks its class
(see the policy attributes of `saes.base.SparseAutoencoder`), never compares names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from saes.architectures import BUILTIN
from saes.base import SparseAutoencoder
from workbench.errors import WorkbenchError, choices_error

if TYPE_CHECKING:
    from saes.config import SAEConfig

_REGISTRY: dict[str, type[SparseAutoencoder]] = {cls.architecture: cls for cls in BUILTIN}


def register(cls: type[SparseAutoencoder]) -> type[SparseAutoencoder]:
    """Make `cls` buildable, trainable and loadable by its `architecture` name; returns `cls`."""
    name = getattr(cls, "architecture", "")
    if not (isinstance(cls, type) and issubclass(cls, SparseAutoencoder)) or not name:
        raise WorkbenchError(f"{cls!r} is not a SparseAutoencoder subclass with an `architecture` name")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise WorkbenchError(f"architecture {name!r} registered twice")
    _REGISTRY[name] = cls
    return cls


def unregister(name: str) -> None:
    """Remove an architecture added with `register` (built-in ones stay)."""
    if any(cls.architecture == name for cls in BUILTIN):
        raise WorkbenchError(f"{name!r} is a built-in architecture")
    _REGISTRY.pop(name, None)


def architectures() -> tuple[str, ...]:
    """Names of every registered architecture: the built-in ones in their listed order, then added ones."""
    return tuple(_REGISTRY)


def architecture_classes() -> tuple[type[SparseAutoencoder], ...]:
    return tuple(_REGISTRY.values())


def sae_class(name: str) -> type[SparseAutoencoder]:
    if name not in _REGISTRY:
        raise choices_error("architecture", name, architectures())
    return _REGISTRY[name]


def aux_loss_choices() -> tuple[str, ...]:
    """Values of --aux-loss: "auto" (each architecture's default), every aux loss some architecture takes, "none"."""
    seen: list[str] = []
    for cls in _REGISTRY.values():
        seen += [a for a in cls.aux_losses if a not in seen and a != "none"]
    return ("auto", *seen, "none")


def resolve_aux_loss(cls: type[SparseAutoencoder], requested: str) -> str:
    """The aux loss `cls` trains with when the run asks for `requested` ("auto": its default)."""
    aux = cls.default_aux if requested == "auto" else requested
    if aux == "none" or aux in cls.aux_losses:
        return aux
    if aux in cls.skipped_aux_losses:
        return "none"
    takers = [c.architecture for c in _REGISTRY.values() if aux in c.aux_losses]
    raise WorkbenchError(f"--aux-loss {aux} applies to {' and '.join(takers)}, not {cls.architecture!r}")


def build_sae(cfg: "SAEConfig", *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
              generator: torch.Generator | None = None) -> SparseAutoencoder:
    """A freshly initialised SAE of the architecture `cfg` names."""
    return sae_class(cfg.architecture)(cfg, device=device, dtype=dtype, generator=generator)
