"""Turning a `--device` string into a torch device, the same way in every command.

One function, so `sae harvest --device auto` and `sae train --device auto` pick the same GPU
(under torchrun, this rank's own) and reject a bad value with the same one-line error.
"""

from __future__ import annotations

import os

import torch

from workbench.errors import WorkbenchError


def resolve_device(spec: str | torch.device) -> torch.device:
    """"auto": this rank's GPU under torchrun (LOCAL_RANK), the GPU when there is one, else the CPU."""
    if isinstance(spec, torch.device):
        return spec
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise WorkbenchError(f"unknown device {spec!r}; valid: auto, cpu, cuda, cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise WorkbenchError(f"device {spec!r} asked for, but this machine has no CUDA device; use --device cpu")
    if dev.type == "cuda" and dev.index is None:  # plain "cuda": this rank's GPU (set_device needs an index)
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    return dev
