"""Run triton_cases.py in a fresh process: under the Triton interpreter on the CPU, and on a GPU.

A fresh process because Triton decides between compiling and interpreting when a kernel is
defined (at import), from `TRITON_INTERPRET`; an in-process run could not do both (case_runner.py).
"""

from __future__ import annotations

from pathlib import Path

from tests.saes.kernels.case_runner import compiled_on_gpu, on_the_interpreter, run_cases

CASES = Path(__file__).with_name("triton_cases.py")


@on_the_interpreter
def test_triton_kernels_under_the_interpreter_on_cpu():
    run_cases(CASES, {"TRITON_INTERPRET": "1", "SAE_TEST_DEVICE": "cpu"})


@compiled_on_gpu
def test_triton_kernels_compiled_on_gpu_at_full_shapes():
    run_cases(CASES, {"SAE_TEST_DEVICE": "cuda"}, drop=("TRITON_INTERPRET",))
