"""The fused encoder-matmul + TopK selection: kernel cases in a fresh process, and its switch.

fused_select_cases.py runs under the Triton interpreter on the CPU (and compiled on a GPU, marked
`gpu`); the switch tests run here: `SAE_SELECT` picks dense or fused selection, the CPU default
stays the dense torch path, and a bad value is one clear error.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from saes.kernels import TopK, encode, fused_select_enabled
from tests.saes.kernels.case_runner import compiled_on_gpu, on_the_interpreter, run_cases
from workbench.errors import WorkbenchError

CASES = Path(__file__).with_name("fused_select_cases.py")


@on_the_interpreter
def test_fused_selection_under_the_interpreter_on_cpu():
    run_cases(CASES, {"TRITON_INTERPRET": "1", "SAE_TEST_DEVICE": "cpu"}, drop=("SAE_SELECT",))


@compiled_on_gpu
def test_fused_selection_compiled_on_gpu_at_training_shapes():
    run_cases(CASES, {"SAE_TEST_DEVICE": "cuda"}, drop=("SAE_SELECT", "TRITON_INTERPRET"))


def test_switch_defaults_to_dense_and_needs_the_triton_backend(monkeypatch):
    x = torch.zeros(2, 3)
    monkeypatch.delenv("SAE_SELECT", raising=False)
    monkeypatch.delenv("SAE_KERNELS", raising=False)
    assert not fused_select_enabled(x)  # default off until a GPU run measures it
    monkeypatch.setenv("SAE_SELECT", "fused")
    assert not fused_select_enabled(x)  # a CPU tensor runs the torch path, which has no fused kernel
    monkeypatch.setenv("SAE_KERNELS", "triton")
    assert fused_select_enabled(x)
    monkeypatch.setenv("SAE_SELECT", "dense")
    assert not fused_select_enabled(x)


def test_bad_switch_value_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("SAE_SELECT", "fast")
    with pytest.raises(WorkbenchError, match="fast.*dense.*fused"):
        fused_select_enabled(torch.zeros(1, 1))


def test_cpu_encode_unchanged_when_fused_is_asked_for(monkeypatch):
    """On the torch backend `SAE_SELECT=fused` changes nothing: same codes, bit for bit."""
    gen = torch.Generator().manual_seed(0)
    x, W, b = torch.randn(9, 7, generator=gen), torch.randn(7, 40, generator=gen), torch.randn(40, generator=gen)
    monkeypatch.delenv("SAE_KERNELS", raising=False)
    monkeypatch.setenv("SAE_SELECT", "dense")
    (ref,) = encode(x, W, b, [TopK(4)])
    monkeypatch.setenv("SAE_SELECT", "fused")
    (got,) = encode(x, W, b, [TopK(4)])
    assert torch.equal(got.cols, ref.cols) and torch.equal(got.vals, ref.vals)
