"""Every Triton kernel compiled for an H100/H200 (sm_90) on a machine without a GPU.

Run by test_triton_sm90_compile.py in a fresh process without `TRITON_INTERPRET` (the kernels
must be defined for compilation, not interpretation). Triton's CUDA backend lowers the kernels to
PTX and its bundled ptxas to a cubin, so lowering errors and register spills show up here, before
scarce GPU time is spent. Constexprs are those the wrappers in triton_ops pass at d 768; integer
arguments and pointers carry the 16-divisibility Triton infers for such shapes at launch.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile

import pytest
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from saes.kernels import triton_ops as T

TARGET = GPUTarget("cuda", 90, 32)
ALIGNED = {"stride_t0", "stride_o0", "stride_a0", "stride_b0", "D"}


def compile_sm90(fn, sig: dict[str, str], consts: dict[str, int], num_warps: int = 4):
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(sig) if sig[n].startswith("*") or n in ALIGNED}
    return triton.compile(ASTSource(fn, sig, consts, attrs), target=TARGET, options={"num_warps": num_warps})


def local_bytes(kernel) -> int:
    """Per-thread local memory (register spills) of the compiled cubin, from cuobjdump."""
    with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as fh:
        fh.write(kernel.asm["cubin"])
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    out = subprocess.run([tool, "-res-usage", fh.name], capture_output=True, text=True, check=True).stdout
    os.unlink(fh.name)
    return int(re.search(r"LOCAL:(\d+)", out).group(1))


def bag_sig(dt: str) -> dict[str, str]:
    return {"table_ptr": f"*{dt}", "stride_t0": "i32", "stride_t1": "constexpr", "idx_ptr": "*i64", "w_ptr": f"*{dt}",
            "offsets_ptr": "*i64", "bias_ptr": f"*{dt}", "out_ptr": f"*{dt}", "stride_o0": "i32",
            "stride_o1": "constexpr", "D": "i32", "K": "constexpr", "HAS_BIAS": "constexpr", "BLOCK_E": "constexpr",
            "BLOCK_D": "constexpr"}


@pytest.mark.parametrize("dt,block_d", [("bf16", 256), ("fp32", 128)])
@pytest.mark.parametrize("k", [32, 0])
def test_token_bag_compiles_with_vector_loads(dt, block_d, k):
    kern = compile_sm90(T._token_bag, bag_sig(dt), {"stride_t1": 1, "stride_o1": 1, "K": k, "HAS_BIAS": True,
                                                   "BLOCK_E": 32 if k else 16, "BLOCK_D": block_d})
    assert "ld.global.v4" in kern.asm["ptx"], "table rows are not read as 16-byte vectors"
    assert local_bytes(kern) == 0


@pytest.mark.parametrize("dt", ["bf16", "fp32"])
def test_feature_chunk_kernels_compile_without_spills(dt):
    sig = {"table_ptr": f"*{dt}", "stride_t0": "i32", "stride_t1": "constexpr", "order_ptr": "*i64",
           "rows_ptr": "*i64", "cols_ptr": "*i64", "w_ptr": f"*{dt}", "fo_ptr": "*i64", "out_ptr": f"*{dt}",
           "stride_o0": "i32", "stride_o1": "constexpr", "part_ptr": "*fp32", "N": "i32", "F": "i32", "D": "i32",
           "n_chunks": "i32", "CHUNK": "constexpr", "BLOCK_F": "constexpr", "BLOCK_D": "constexpr"}
    sums = compile_sm90(T._feature_chunk_sums, sig, {"stride_t1": 1, "stride_o1": 1, "CHUNK": T.CHUNK,
                                                    "BLOCK_F": T.BLOCK_F, "BLOCK_D": 128}, num_warps=8)
    assert "ld.global.v4" in sums.asm["ptx"] and local_bytes(sums) == 0
    sig = {"order_ptr": "*i64", "cols_ptr": "*i64", "fo_ptr": "*i64", "out_ptr": f"*{dt}", "stride_o0": "i32",
           "stride_o1": "constexpr", "part_ptr": "*fp32", "N": "i32", "D": "i32", "CHUNK": "constexpr",
           "BLOCK_P": "constexpr", "BLOCK_D": "constexpr"}
    fix = compile_sm90(T._feature_chunk_fixup, sig, {"stride_o1": 1, "CHUNK": T.CHUNK, "BLOCK_P": T.BLOCK_P,
                                                    "BLOCK_D": 128})
    assert local_bytes(fix) == 0
