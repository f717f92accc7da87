"""The root of the `sae` command, the helpers every package shares, and the models-and-hooks floor.

It imports none of `harvesting`, `saes`, `evals` or `steering`, so each of them may depend on it
without bending the one-way dependency rule of DESIGN.md. The floor (`workbench.models`:
loading any model through the TransformerLens bridge; `workbench.hooks`: capture, replace, edit)
is imported on first use, so `import workbench` stays cheap for the CLI and for SAE training.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from workbench.config import add_config_args, config_from_args, config_to_dict, load_config, save_config
from workbench.device import resolve_device
from workbench.errors import WorkbenchError
from workbench.io import atomic_write_bytes, atomic_write_json, atomic_save_safetensors, sha256_file
from workbench.offline import package_file

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports these on first use
    from workbench.hooks import HookSite, capture, editing, replacing
    from workbench.models import LoadedModel, from_hf_model, load_model

_FLOOR = {
    "LoadedModel": "workbench.models",
    "from_hf_model": "workbench.models",
    "load_model": "workbench.models",
    "HookSite": "workbench.hooks",
    "capture": "workbench.hooks",
    "editing": "workbench.hooks",
    "replacing": "workbench.hooks",
}


def __getattr__(name: str) -> Any:
    if name in _FLOOR:
        return getattr(importlib.import_module(_FLOOR[name]), name)
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")


__all__ = [
    "HookSite",
    "LoadedModel",
    "WorkbenchError",
    "add_config_args",
    "atomic_save_safetensors",
    "atomic_write_bytes",
    "atomic_write_json",
    "capture",
    "config_from_args",
    "config_to_dict",
    "editing",
    "from_hf_model",
    "load_model",
    "load_config",
    "package_file",
    "replacing",
    "resolve_device",
    "save_config",
    "sha256_file",
]
