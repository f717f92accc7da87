"""A training run on the Triton kernels and one on the torch path, from the same seed, agree step by step.

Each run is a fresh process (Triton fixes interpret-vs-compile when the kernels are defined):
on the CPU the Triton kernels run under TRITON_INTERPRET=1; on a GPU they are compiled. The
weights after every step must match within float tolerance (the kernels may sum in another
order, so bit-equality is not expected; a wrong kernel is off by far more).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

CASE = Path(__file__).with_name("kernel_training_case.py")
ROOT = CASE.parents[2]
HAS_TRITON = importlib.util.find_spec("triton") is not None
STEPS = 6
DET_STEPS = 2  # the sorted (deterministic) kernels take about 13 s a step under the interpreter
LR = 3e-3  # kernel_training_case.py's Adam rate


def trace(tmp: Path, name: str, device: str, env_extra: dict[str, str], drop: tuple[str, ...] = (),
          deterministic: str = "auto", steps: int = STEPS) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env_extra}
    for k in drop:
        env.pop(k, None)
    out = tmp / f"{name}.safetensors"
    proc = subprocess.run([sys.executable, str(CASE), str(out), device, str(steps), deterministic], env=env, capture_output=True,
                          text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"backend": proc.stdout.split("backend", 1)[1].split()[0], "weights": load_file(str(out))}


def compare(a: dict, b: dict, n_steps: int = STEPS) -> None:
    wa = {k: v for k, v in a["weights"].items() if not k.endswith("/deterministic")}
    wb = {k: v for k, v in b["weights"].items() if not k.endswith("/deterministic")}
    assert wa.keys() == wb.keys()
    steps = sorted({int(k.split("/")[0]) for k in wa})
    assert steps == list(range(1, n_steps + 1))
    moved = 0.0
    for k in sorted(wa, key=lambda s: int(s.split("/")[0])):
        step = int(k.split("/")[0])
        if not wa[k].dtype.is_floating_point:
            assert torch.equal(wa[k], wb[k]), f"step/tensor {k} differs"
            continue
        diff = (wa[k] - wb[k]).abs()
        off = diff > 1e-5 + 1e-4 * wb[k].abs()
        # Adam divides each gradient by its running RMS, so an element whose gradient is ~0 (where
        # the summation order, atomics on a GPU, decides the rounding) may move by up to LR per step
        # differently. Allow a handful of such elements, each within that bound; a wrong kernel is
        # off on far more elements.
        assert int(off.sum()) <= max(1, off.numel() // 10_000), \
            f"step/tensor {k}: {int(off.sum())} of {off.numel()} elements differ (max {float(diff.max()):.2e})"
        assert float(diff.max()) <= 2 * LR * step, f"step/tensor {k}: max difference {float(diff.max()):.2e}"
        first = f"1/{k.split('/', 1)[1]}"
        if wa[k].dtype.is_floating_point:
            moved = max(moved, float((wa[k] - wa[first]).abs().max()))
    assert moved > 1e-3, "the weights hardly changed: the comparison would prove nothing"


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_triton_interpreter_and_torch_path_train_alike_on_cpu(tmp_path):
    tri = trace(tmp_path, "triton", "cpu", {"SAE_KERNELS": "triton", "TRITON_INTERPRET": "1"})
    ref = trace(tmp_path, "torch", "cpu", {"SAE_KERNELS": "torch"}, drop=("TRITON_INTERPRET",))
    assert tri["backend"] == "triton" and ref["backend"] == "torch"
    compare(tri, ref)


def _mode(t: dict) -> set[int]:
    return {int(v) for k, v in t["weights"].items() if k.endswith("/deterministic")}


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_deterministic_training_equals_atomic_training_and_repeats_bit_for_bit(tmp_path):
    """TrainConfig.deterministic on the Triton kernels (interpreter): on = sorted reductions, off =
    fp32 atomics. Both train alike (float tolerance); two deterministic runs are bit-identical."""
    env = {"SAE_KERNELS": "triton", "TRITON_INTERPRET": "1"}
    on1 = trace(tmp_path, "on1", "cpu", env, deterministic="on", steps=DET_STEPS)
    on2 = trace(tmp_path, "on2", "cpu", env, deterministic="on", steps=DET_STEPS)
    off = trace(tmp_path, "off", "cpu", env, deterministic="off", steps=DET_STEPS)
    assert _mode(on1) == {1} and _mode(off) == {0}  # the option reached the kernels
    assert on1["weights"].keys() == on2["weights"].keys()
    assert all(torch.equal(on1["weights"][k], on2["weights"][k]) for k in on1["weights"])
    compare(on1, off, DET_STEPS)


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_TRITON and torch.cuda.is_available()), reason="needs a CUDA GPU and triton")
def test_compiled_triton_and_torch_path_train_alike_on_gpu(tmp_path):
    tri = trace(tmp_path, "triton", "cuda", {}, drop=("SAE_KERNELS", "TRITON_INTERPRET"))
    ref = trace(tmp_path, "torch", "cuda", {"SAE_KERNELS": "torch"}, drop=("TRITON_INTERPRET",))
    assert tri["backend"] == "triton" and ref["backend"] == "torch"
    compare(tri, ref)


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_TRITON and torch.cuda.is_available()), reason="needs a CUDA GPU and triton")
def test_deterministic_training_repeats_bit_for_bit_on_gpu(tmp_path):
    on = [trace(tmp_path, f"on{i}", "cuda", {}, drop=("SAE_KERNELS", "TRITON_INTERPRET"), deterministic="on")
          for i in range(2)]
    assert _mode(on[0]) == {1}
    assert all(torch.equal(on[0]["weights"][k], on[1]["weights"][k]) for k in on[0]["weights"])
