"""Run a kernel case file (`*_cases.py` here) in a fresh pytest process, and the marks of its two runs.

A fresh process because Triton decides between compiling and interpreting when a kernel is
defined (at import), from `TRITON_INTERPRET`; an in-process run could not do both. Each
test_*.py beside this file runs its case file twice: under the interpreter on the CPU
(`on_the_interpreter`) and compiled on a GPU (`compiled_on_gpu`).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

HAS_TRITON = importlib.util.find_spec("triton") is not None

on_the_interpreter = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")


def compiled_on_gpu(test: Callable) -> Callable:
    """Marks `test` `gpu` and skips it without a CUDA GPU and triton."""
    needs = pytest.mark.skipif(not (HAS_TRITON and torch.cuda.is_available()), reason="needs a CUDA GPU and triton")
    return pytest.mark.gpu(needs(test))


def run_cases(cases: Path, env_extra: dict[str, str], drop: tuple[str, ...] = (), *,
              allow_skips: bool = False) -> None:
    """Run `cases` with `env_extra` set and `SAE_KERNELS` and `drop` unset, from the repository root;
    fails with the run's output unless it passed (and, unless `allow_skips`, skipped nothing)."""
    env = {**os.environ, **env_extra}
    for name in ("SAE_KERNELS", *drop):
        env.pop(name, None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", str(cases)],
        env=env, capture_output=True, text=True, cwd=cases.parents[3],
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout
    if not allow_skips:
        assert "skipped" not in proc.stdout.splitlines()[-1]
