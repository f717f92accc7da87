"""Loading a model and an SAE for steering, and checking that they fit each other.

An SAE trained on another model, hook point or width would steer with garbage; this says so in
one line before anything runs.
"""

from __future__ import annotations

from typing import Any

import torch

from workbench.errors import WorkbenchError
from workbench.hooks import capture


def check_fit(lm: Any, sae: Any) -> None:
    """The SAE's hook must exist in the model, and its input width must be that hook's width."""
    hook = sae.cfg.hook
    if not hook:
        raise WorkbenchError("this SAE's cfg.json names no hook point, so it cannot be placed in a model")
    lm.check_hooks([hook])
    ids = list(lm.prefix_ids) + [int(lm.pad_id)]
    dev = next(iter(lm.bridge.parameters())).device
    width = capture(lm, torch.tensor([ids], device=dev), [hook], stop=True)[hook].shape[-1]
    if width != sae.d_in:
        raise WorkbenchError(
            f"SAE width {sae.d_in} does not fit {hook} of {lm.model_id}, which has width {width}"
        )


def load_for_steering(model: str, sae_dir: str, device: str = "cpu") -> tuple[Any, Any]:
    """The model (its name from the SAE's cfg.json when `model` is empty) and the SAE, checked to fit."""
    from saes import load_sae

    sae = load_sae(sae_dir, device=device)
    return load_model_for(sae, model, device), sae


def load_model_for(sae: Any, model: str = "", device: str = "cpu") -> Any:
    """The model an SAE belongs to (or `model`), checked to fit it."""
    from workbench.models import load_model

    lm = load_model(model or _model_of(sae), device=device)
    check_fit(lm, sae)
    return lm


def _model_of(sae: Any) -> str:
    """The model an SAE was trained on: its training cache's model (alias kept), else cfg.model_id."""
    import json
    from pathlib import Path

    cache = (sae.cfg.train or {}).get("cache")
    if cache and (Path(cache) / "manifest.json").is_file():
        try:
            m = json.loads((Path(cache) / "manifest.json").read_text())
            name = (m.get("config") or m.get("harvest_config") or {}).get("model")
            if name:
                return str(name)
        except (OSError, json.JSONDecodeError):
            pass
    if not sae.cfg.model_id:
        raise WorkbenchError("this SAE does not say which model it was trained on; pass --model")
    from workbench.models import OFFLINE_MODELS

    for alias, (_, _, official) in OFFLINE_MODELS.items():
        if official == sae.cfg.model_id:
            return alias  # the offline copy, not the hub
    return sae.cfg.model_id
