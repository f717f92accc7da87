"""Run feature_grad_cases.py in a fresh process: under the Triton interpreter on the CPU, and on a GPU.

The cases hold the deterministic (chunked, atomics-free) weight gradients and the token bag of
the sparse decode to the torch path and dense references; see that file.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

CASES = Path(__file__).with_name("feature_grad_cases.py")
HAS_TRITON = importlib.util.find_spec("triton") is not None


def run_cases(env_extra: dict[str, str], drop: tuple[str, ...] = ()) -> None:
    env = {**os.environ, **env_extra}
    for name in ("SAE_KERNELS", *drop):
        env.pop(name, None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", str(CASES)],
        env=env, capture_output=True, text=True, cwd=CASES.parents[3],
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_feature_grads_under_the_interpreter_on_cpu():
    run_cases({"TRITON_INTERPRET": "1", "SAE_TEST_DEVICE": "cpu"})


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_TRITON and torch.cuda.is_available()), reason="needs a CUDA GPU and triton")
def test_feature_grads_compiled_on_gpu_at_full_shapes():
    run_cases({"SAE_TEST_DEVICE": "cuda"}, drop=("TRITON_INTERPRET",))
