"""The parts of `benchmarks/gpu_check.sh` a CPU can run, so the GPU script cannot rot between GPU loans.

The kernel table runs the Triton kernels under the interpreter at tiny shapes (its figures mean
nothing there; that every row is produced is the point), and the determinism check runs the
real trainer: on the CPU both repeated and resumed runs must come out bit-identical.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HAS_TRITON = __import__("importlib").util.find_spec("triton") is not None


def run(args: list[str], **env: str) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **env})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_gpu_check_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_check.sh")], check=True)


def test_gpu_check_fits_one_device_call():
    """One device call runs at most 600 s: the parts' limits sum to at most 570 s, the kernels and steps
    part (four fused-kernel compilations, two step tables) gets 200-240 s, and the GPU tests include
    the fused selection's compiled cases."""
    text = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    limits = dict(re.findall(r"\b(L[1-6])=(\d+)", re.search(r"^L1=.*$", text, re.M).group(0)))
    assert sorted(limits) == [f"L{i}" for i in range(1, 7)], limits
    assert sum(map(int, limits.values())) <= 570 and 200 <= int(limits["L2"]) <= 240, limits
    assert int(re.search(r"GPU_CHECK_BUDGET:-(\d+)", text).group(1)) <= 570
    assert "tests/saes/kernels/test_fused_select.py" in text


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_kernel_table_runs_under_the_triton_interpreter():
    out = run(["benchmarks/gpu_check.py", "--device", "cpu", "--quick"], SAE_KERNELS="triton", TRITON_INTERPRET="1")
    for row in ("sparse decode fwd", "decoder weight grad (atomics)", "decoder weight grad (sorted)",
                "encoder weight grad (sorted)", "encoder input grad", "ours, bf16-chosen selection",
                "dense fp32 (plain torch)"):
        assert out.count(f"| {row}") >= 1, row
    assert "n/a" in out  # no sparsify given: its columns say so instead of failing
    # issue 21: the floor row, the fused-selection and deterministic step rows, the small-width
    # table, and one verdict per goal (here on made-up tiny shapes, so only that each is printed)
    for row in ("floor: bf16 encoder matmul + Adam traffic", "Adam step alone", "ours, fused selection",
                "ours, bf16-chosen, deterministic", "ours, fused selection, deterministic",
                "unfused: bf16 addmm + torch.topk", "fused matmul + TopK, insert merge",
                "fused matmul + TopK, bitonic merge"):
        assert out.count(f"| {row}") >= 1, row
    assert out.count("## TopK training step") == 2, "the wide step table and the small-width one"
    goals = out[out.index("## goals"):].splitlines()
    for goal in ("vs sparsify's step", "of the floor", "vs the plain dense loop", "deterministic vs atomic",
                 "resume bit-identical"):
        line = next((g for g in goals if goal in g), None)
        assert line is not None, goal
        assert any(v in line for v in ("PASS", "MISS", "n/a")), line
    # issue 21: "the bf16 sparse decode at least as fast as the fp32 one", both figures in the line,
    # equal to the "sparse decode fwd" rows of the bf16 and fp32 kernel tables
    line = next((g for g in goals if "bf16 sparse decode <= fp32 sparse decode" in g), None)
    assert line is not None, "bf16 vs fp32 sparse decode goal"
    decode = re.findall(r"^\| sparse decode fwd \| ([0-9.]+) \|", out, re.M)
    assert len(decode) == 2, decode  # the bf16 table, then the fp32 one
    assert f"bf16 {decode[0]} ms" in line and f"fp32 {decode[1]} ms" in line, line
    assert ("MISS" in line) != ("PASS" in line), line
    if decode[0] != decode[1]:  # equal when rounded: either verdict is right
        assert ("PASS" in line) == (float(decode[0]) < float(decode[1])), line


def test_determinism_check_finds_cpu_runs_identical():
    out = run(["benchmarks/gpu_determinism.py", "--device", "cpu", "--quick", "--archs", "topk", "feature_choice"])
    rows = [line for line in out.splitlines() if line.startswith("| ") and "/" in line.split("|")[2]]
    assert len(rows) == 4, out  # 2 architectures x (default, sorted) reductions
    for line in rows:
        assert line.count("identical") == 2, line


def test_reader_feed_benchmark_prints_both_reader_paths():
    out = run(["benchmarks/bench_reader_feed.py", "--quick"])
    assert "| trainer's thread (--prefetch 0) (auto here) |" in out  # the CPU's automatic choice is marked
    assert "| background thread (--prefetch 2) |" in out
