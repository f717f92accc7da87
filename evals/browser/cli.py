"""`sae browse`: feature dashboards from the cache (one resumable pass), then a static HTML browser.

    sae browse --sae cache/quickstart/saes --cache cache/quickstart/acts
    # -> prints the path of index.html (open it from disk; no server)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from evals.features.config import FeatureConfig
from workbench.config import _checked, add_config_args, config_from_args
from workbench.errors import WorkbenchError


MAP_METHODS = ("umap", "spectral")
MAP_COLOURS = ("density", "max", "mean", "nnz")  # per-feature statistics the feature data always holds


def register(sub: argparse._SubParsersAction) -> None:
    """Add `sae browse` to the root command."""
    p = sub.add_parser(
        "browse", help="build feature dashboards and a static HTML feature browser for an SAE",
        description="One streaming pass over the activation cache collects every feature's top contexts, "
                    "interval samples, histograms, correlations (resumable: run it again after a kill); the "
                    "logit lens and nearest decoder directions come from the weights. Writes the data next to "
                    "the SAE (features/) and a browser that opens from disk; prints the path of index.html.")
    p.add_argument("--sae", required=True, help="SAE directory (or a run directory holding one SAE)")
    p.add_argument("--cache", default=None, help="activation cache (default: the one the SAE was trained on)")
    p.add_argument("--out", default=None, help="browser directory (default: <sae>/browser)")
    p.add_argument("--device", default="cpu", help="device to encode on (cpu, cuda, cuda:N)")
    p.add_argument("--rebuild", action="store_true", help="recompute the feature data even if it is up to date")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    p.add_argument("--map", dest="map_method", default="umap", metavar="METHOD",
                   type=_checked(str, MAP_METHODS, "map method"),
                   help="how the feature map places features: umap (UMAP of decoder directions) or spectral (the "
                        f"older spectral embedding) (choices: {', '.join(MAP_METHODS)}; default: umap)")
    p.add_argument("--map-colour", default="density", metavar="STAT", type=_checked(str, MAP_COLOURS, "map colour"),
                   help=f"per-feature statistic the map is coloured by (choices: {', '.join(MAP_COLOURS)}; "
                        "default: density)")
    add_config_args(p, FeatureConfig)
    p.set_defaults(func=run_browse)


def run_browse(args: argparse.Namespace) -> int:
    from evals.browser.site import build_browser
    from evals.features.build import build_features
    from saes.storage import resolve_sae_dir

    sae_dir = resolve_sae_dir(args.sae)
    cache = args.cache
    if cache is None:
        cache = json.loads((sae_dir / "cfg.json").read_text()).get("train", {}).get("cache")
        if not cache:
            raise WorkbenchError(f"{sae_dir} does not say which cache it was trained on; pass --cache DIR")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise WorkbenchError(f"device {args.device!r} asked for, but this machine has no CUDA device; use --device cpu")
    cfg = config_from_args(FeatureConfig, args)
    feats = build_features(sae_dir, cache, cfg=cfg, device=args.device, progress=args.progress, rebuild=args.rebuild)
    out = Path(args.out) if args.out else sae_dir / "browser"
    index = build_browser(feats, out, progress=args.progress, map_method=args.map_method, colour=args.map_colour)
    print(index.resolve())
    return 0
