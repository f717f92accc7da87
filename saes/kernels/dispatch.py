"""The one decision of which implementation runs: Triton for CUDA tensors, torch otherwise.

`SAE_KERNELS=torch` forces the torch path (debugging, or a GPU where Triton misbehaves);
`SAE_KERNELS=triton` forces Triton even for CPU tensors, which only works under the Triton
interpreter (`TRITON_INTERPRET=1`) and is how the test suite runs the kernels without a GPU.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
from collections.abc import Iterator
from types import ModuleType

import torch
from torch import Tensor

from workbench.errors import choices_error

BACKEND_CHOICES = ("auto", "torch", "triton")
_deterministic = False


@functools.cache
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def backend(tensor: Tensor) -> str:
    """"triton" or "torch" for kernels on `tensor`, following `SAE_KERNELS` (auto, torch, triton)."""
    forced = os.environ.get("SAE_KERNELS", "auto").strip().lower() or "auto"
    if forced not in BACKEND_CHOICES:
        raise choices_error("SAE_KERNELS value", forced, BACKEND_CHOICES)
    if forced == "torch":
        return "torch"
    if forced == "triton":
        return "triton"
    return "triton" if tensor.is_cuda and triton_available() else "torch"


def ops_for(tensor: Tensor) -> ModuleType:
    """The module implementing the building blocks for `tensor` (same function names in both)."""
    if backend(tensor) == "triton":
        from saes.kernels import triton_ops

        return triton_ops
    from saes.kernels import torch_ops

    return torch_ops


SELECT_CHOICES = ("dense", "fused")


def fused_select_enabled(tensor: Tensor) -> bool:
    """Whether `encode` fuses a plain TopK selection with the encoder matmul (`SAE_SELECT=fused`).

    The fused kernel (`saes.kernels.fused_select`) never writes the `[B, F]` pre-activations; it
    runs only on the Triton backend (CUDA, or the interpreter in tests), so on the torch path the
    choice changes nothing. Default `dense` (the unfused path, which stays the reference the fused
    one is tested against) until a GPU run of `benchmarks/gpu_check.py` shows the fused step faster.
    """
    choice = os.environ.get("SAE_SELECT", "dense").strip().lower() or "dense"
    if choice not in SELECT_CHOICES:
        raise choices_error("SAE_SELECT value", choice, SELECT_CHOICES)
    return choice == "fused" and backend(tensor) == "triton"


def is_deterministic() -> bool:
    """Whether kernels must give bit-identical results run to run (no atomics in reductions)."""
    return _deterministic or torch.are_deterministic_algorithms_enabled()


@contextlib.contextmanager
def deterministic(enabled: bool = True) -> Iterator[None]:
    """Within the block, reductions use the sorted reverse index instead of atomics.

    The torch path is always deterministic on the CPU; this matters for the Triton kernels.
    """
    global _deterministic
    old = _deterministic
    _deterministic = enabled
    try:
        yield
    finally:
        _deterministic = old
