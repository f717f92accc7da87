"""What every foreign-format reader needs: strict reads of cfg.json values and weight files, and
the one way an imported SAE becomes one of our classes.

Foreign files are untrusted input: each value is checked for type and range before it reaches a
constructor, so a hostile or damaged cfg.json gives one `WorkbenchError` line naming the file, the
key and the bad value, never a traceback from deep inside torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from saes import SAEConfig, SparseAutoencoder, build_sae
from workbench.errors import WorkbenchError, choices_error

CFG_FILE = "cfg.json"
_MISSING = object()


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, or one clear line saying why not."""
    if not path.is_file():
        raise WorkbenchError(f"missing file {str(path)!r}")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WorkbenchError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise WorkbenchError(f"{path} must hold a JSON object; it holds a {type(obj).__name__}")
    return obj


def read_tensors(path: Path, dtype: torch.dtype) -> dict[str, Tensor]:
    """All tensors of a safetensors file, on the CPU in `dtype` (float64 while folding keeps it exact)."""
    if not path.is_file():
        raise WorkbenchError(f"{path.parent} has {CFG_FILE} but no {path.name}")
    try:
        raw = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise WorkbenchError(f"{path} is not a readable safetensors file: {e}") from None
    out = {}
    for name, t in raw.items():
        if not (t.is_floating_point()):
            raise WorkbenchError(f"{path}: tensor {name} has dtype {t.dtype}; SAE weights must be floating point")
        out[name] = t.to(dtype)
    return out


def get_int(cfg: dict[str, Any], key: str, where: Path, *, default: Any = _MISSING, minimum: int = 1) -> int:
    """An integer setting (JSON 32 or 32.0; never true/false, a string or a fraction)."""
    v = cfg.get(key, default)
    if v is _MISSING:
        raise WorkbenchError(f"{where}: {CFG_FILE} lacks {key!r}")
    ok = isinstance(v, int) and not isinstance(v, bool)
    if isinstance(v, float) and v.is_integer():
        v, ok = int(v), True
    if not ok or v < minimum:
        raise WorkbenchError(f"{where}: {CFG_FILE} {key}={v!r} must be an integer >= {minimum}")
    return int(v)


def get_bool(cfg: dict[str, Any], key: str, where: Path, default: bool) -> bool:
    v = cfg.get(key, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise WorkbenchError(f"{where}: {CFG_FILE} {key}={v!r} must be true or false")
    return v


def get_str(cfg: dict[str, Any], key: str, where: Path, default: str = "") -> str:
    v = cfg.get(key, default)
    if v is None:
        return default
    if not isinstance(v, str):
        raise WorkbenchError(f"{where}: {CFG_FILE} {key}={v!r} must be a string")
    return v


def get_choice(cfg: dict[str, Any], key: str, where: Path, default: str, valid: tuple[str, ...], what: str) -> str:
    v = get_str(cfg, key, where, default)
    if v not in valid:
        raise WorkbenchError(f"{where}: " + str(choices_error(what, v, valid)))
    return v


def require(tensors: dict[str, Tensor], names: tuple[str, ...], where: Path) -> None:
    missing = [n for n in names if n not in tensors]
    if missing:
        raise WorkbenchError(f"{where}: the weights lack tensors {missing}; they hold {sorted(tensors)}")


def check_shapes(tensors: dict[str, Tensor], shapes: dict[str, tuple[int, ...]], where: Path) -> None:
    """Every named tensor has the shape cfg.json implies (checked before any arithmetic on them)."""
    for name, shape in shapes.items():
        if name in tensors and tuple(tensors[name].shape) != shape:
            raise WorkbenchError(
                f"{where}: tensor {name} has shape {tuple(tensors[name].shape)}; {CFG_FILE} implies {shape}"
            )


def check_finite(tensors: dict[str, Tensor], where: Path, allow_inf: tuple[str, ...] = ()) -> None:
    """NaN anywhere (or inf outside a threshold, where it means 'never fires') would poison every output."""
    for name, t in tensors.items():
        bad = t.isnan() if name in allow_inf else ~t.isfinite()
        if bool(bad.any()):
            raise WorkbenchError(f"{where}: tensor {name} holds {int(bad.sum())} non-finite values")


def assemble(
    cls: type[SparseAutoencoder],
    tensors: dict[str, Tensor],
    *,
    k: int | None = None,
    hook: str = "",
    model_id: str = "",
    input_scale: float = 1.0,
    source: dict[str, Any],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> SparseAutoencoder:
    """One of our SAEs holding `tensors` (our saved layout: W_enc [d, F], b_enc, W_dec [F, d], b_dec, ...).

    `k`: the number of active features where the architecture's forward pass uses it (TopK), else
    None. `source` (format, path, the foreign cfg) is kept in `cfg.train["imported_from"]`, so saving the
    SAE in our format keeps where it came from.
    """
    f, d = tensors["W_dec"].shape
    if k is None:  # k is no part of this SAE's forward pass (it only places initial thresholds)
        k = max(1, min(32, f - 1))
    cfg = SAEConfig(architecture=cls.architecture, d_in=int(d), num_features=int(f), k=k, hook=hook,
                    model_id=model_id, input_scale=input_scale, train={"imported_from": source})
    sae = build_sae(cfg, device=device, dtype=dtype)
    sae.load_weight_tensors({n: t.to(device=device, dtype=dtype) for n, t in tensors.items()})
    sae.eval()
    return sae
