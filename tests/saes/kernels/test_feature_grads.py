"""Run feature_grad_cases.py in a fresh process: under the Triton interpreter on the CPU, and on a GPU.

The cases hold the deterministic (chunked, atomics-free) weight gradients and the token bag of
the sparse decode to the torch path and dense references; see that file.
"""

from __future__ import annotations

from pathlib import Path

from tests.saes.kernels.case_runner import compiled_on_gpu, on_the_interpreter, run_cases

CASES = Path(__file__).with_name("feature_grad_cases.py")


@on_the_interpreter
def test_feature_grads_under_the_interpreter_on_cpu():
    run_cases(CASES, {"TRITON_INTERPRET": "1", "SAE_TEST_DEVICE": "cpu"}, allow_skips=True)


@compiled_on_gpu
def test_feature_grads_compiled_on_gpu_at_full_shapes():  # one case counts interpreted launches: skipped here
    run_cases(CASES, {"SAE_TEST_DEVICE": "cuda"}, drop=("TRITON_INTERPRET",), allow_skips=True)
