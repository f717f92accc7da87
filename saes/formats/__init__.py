"""SAEs from other tools: load SAELens and sparsify files (and ours) into our classes; export ours.

    from saes.formats import load_any, find_any, export_saelens, export_sparsify
    sae = load_any("path/to/saelens_sae")                 # or our own / a sparsify hookpoint folder
    sae = load_any("hf://owner/repo/layers.10")   # one folder of a hub repository
    saes = find_any("path/to/sparsify_run")               # {"layers.0": sae, "layers.1": sae, ...}
    export_saelens(sae, "out/saelens_sae")                # SAELens 6: cfg.json + sae_weights.safetensors
    export_sparsify(sae, "out/sparsify_run")              # -> out/sparsify_run/layers.N/

Loaded SAEs compute what the format's own library computes (module docstrings of `saelens` and
`sparsify` give the exact correspondence and what is refused); `sae.cfg.train["imported_from"]`
records the source format, path and cfg.
"""

from saes.formats.detect import FORMATS, detect_format, find_any, load_any, load_dir, locate_any
from saes.formats.hub import HubRef, hub_snapshot, parse_hub_ref
from saes.formats.saelens import export_saelens, load_saelens
from saes.formats.sparsify import export_sparsify, hook_from_hookpoint, hookpoint_from_hook, load_sparsify

__all__ = [
    "FORMATS",
    "HubRef",
    "detect_format",
    "export_saelens",
    "export_sparsify",
    "find_any",
    "hook_from_hookpoint",
    "hookpoint_from_hook",
    "hub_snapshot",
    "load_any",
    "load_dir",
    "load_saelens",
    "load_sparsify",
    "locate_any",
    "parse_hub_ref",
]
