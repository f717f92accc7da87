"""The root of the `sae` command and the few helpers every package shares.

It imports none of `harvesting`, `saes`, `evals` or `steering`, so each of them may depend on it
without bending the one-way dependency rule of DESIGN.md.
"""

from workbench.config import add_config_args, config_from_args, config_to_dict, load_config, save_config
from workbench.errors import WorkbenchError
from workbench.io import atomic_write_bytes, atomic_write_json, atomic_save_safetensors, sha256_file

__all__ = [
    "WorkbenchError",
    "add_config_args",
    "atomic_save_safetensors",
    "atomic_write_bytes",
    "atomic_write_json",
    "config_from_args",
    "config_to_dict",
    "load_config",
    "save_config",
    "sha256_file",
]
