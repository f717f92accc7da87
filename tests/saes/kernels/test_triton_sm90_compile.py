"""Compile the Triton kernels for sm_90 (H100/H200) on this machine, GPU or not; see sm90_compile_cases.py."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

CASES = Path(__file__).with_name("sm90_compile_cases.py")


def cuda_backend_present() -> bool:
    if importlib.util.find_spec("triton") is None:
        return False
    import triton

    return (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump").exists()


@pytest.mark.skipif(not cuda_backend_present(), reason="triton with its CUDA backend (ptxas, cuobjdump) is not installed")
def test_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "SAE_KERNELS")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", str(CASES)],
                          env=env, capture_output=True, text=True, cwd=CASES.parents[3])
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout
