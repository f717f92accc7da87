"""The GPU kernel and training-step table: ours against the dense step and against sparsify's kernels.

    python benchmarks/gpu_check.py                          # d 768, F 131072, k 32, batch 4096 on CUDA
    python benchmarks/gpu_check.py --sparsify /tmp/sparsify  # also time sparsify's Triton kernels
    SAE_KERNELS=triton TRITON_INTERPRET=1 python benchmarks/gpu_check.py --device cpu --quick  # smoke run

`benchmarks/gpu_check.sh` runs this after the GPU tests; see there. `--sparsify` names a folder
holding EleutherAI sparsify's `sparsify/xformers.py` and `sparsify/fused_encoder.py` (unpacked
from its PyPI wheel, never a dependency of ours); the two files are loaded by path because the
package's `__init__` pulls in its trainer's dependencies. Without it those columns say "n/a".

Rows: the Triton building blocks at one shape (sparse decode, the weight and input gradients)
against a dense torch equivalent and sparsify's kernel for the same job, then whole TopK training
steps (encode, decode, MSE, backward, Adam, decoder renormalisation) in tokens/s: ours, the plain
dense step in fp32 and under bf16 autocast, and sparsify's step (its fused encoder + its Triton
embedding bag, under bf16 autocast as sparsify runs it). Medians over repeats after warm-up.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from bench_kernels import KernelInputs, SAEParams, bench, dense_step, sparse_step  # noqa: E402

from saes.kernels import deterministic  # noqa: E402


def load_sparsify(root: str | None) -> tuple[ModuleType, ModuleType] | None:
    if not root:
        return None
    mods = []
    for name in ("xformers", "fused_encoder"):
        path = Path(root) / "sparsify" / f"{name}.py"
        if not path.is_file():
            print(f"(sparsify file {path} missing: sparsify columns skipped)")
            return None
        spec = importlib.util.spec_from_file_location(f"sparsify_{name}", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        mods.append(mod)
    return mods[0], mods[1]


def sparsify_step(p: SAEParams, x: torch.Tensor, k: int, sp: tuple[ModuleType, ModuleType]) -> torch.Tensor:
    """sparsify's TopK forward as its SparseCoder runs it: bf16 autocast, fused encoder, Triton bag."""
    xf, fe = sp
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.is_cuda):
        acts, idx, _ = fe.fused_encoder(x - p.b_dec, p.W_enc, p.b_enc, k, "topk")
        x_hat = xf.xformers_embedding_bag(idx, p.W_dec, acts.to(p.W_dec.dtype)) + p.b_dec
    loss = (x_hat.float() - x).pow(2).sum(-1).mean()
    p.finish_step(loss)
    return loss.detach()


def row(name: str, ours: float, cols: dict[str, float | None], note: str = "") -> None:
    cells = [name, f"{ours * 1e3:.3f}"]
    for t in cols.values():
        cells.append("n/a" if t is None else f"{t * 1e3:.3f} ({t / ours:.2f}x)")
    print("| " + " | ".join([*cells, note]) + " |", flush=True)


def kernels(args: argparse.Namespace, sp, dtype: torch.dtype) -> None:
    from saes.kernels import triton_ops as T

    dev, b, d, f, k, reps = args.device, args.batch, args.d, args.features, args.k, args.repeats
    gen = torch.Generator(device=dev).manual_seed(0)
    inp = KernelInputs(b, d, f, k, dev, dtype, gen)
    codes, idx2, v2, W, go, x, dense_codes = inp.codes, inp.idx2, inp.v2, inp.W, inp.go, inp.x, inp.dense_codes
    print(f"\n## kernels, B {b} d {d} F {f} k {k} {str(dtype)[6:]} (ms; ratio = baseline / ours, > 1 means ours is faster)")
    print("| kernel | ours ms | dense torch ms | sparsify ms | note |")
    print("|---|---:|---:|---:|---|")
    sp_dec = sp_wgrad = None
    if sp is not None:
        xf = sp[0]
        sp_dec = bench(lambda: xf.embedding_bag_triton(idx2, W, v2), reps, dev)
        Wr = W.clone().requires_grad_(True)
        out = xf.xformers_embedding_bag(idx2, Wr, v2)
        sp_wgrad = bench(lambda: torch.autograd.grad(out, Wr, go, retain_graph=True), reps, dev)
    row("sparse decode fwd", bench(lambda: T.decode_forward(codes.vals, codes.cols, codes.offsets, None, W, None),
                                   reps, dev),
        {"dense": bench(lambda: dense_codes @ W, reps, dev), "sparsify": sp_dec})
    for det in (False, True):
        with deterministic(det):
            t = bench(lambda: T.decoder_weight_grad(codes.vals, codes.rows, codes.cols, go, f), reps, dev)
        row(f"decoder weight grad ({'sorted' if det else 'atomics'})", t,
            {"dense": bench(lambda: dense_codes.t() @ go, reps, dev), "sparsify": sp_wgrad},
            "sparsify: its embedding-bag backward (sort + segment sum)")
    with deterministic(True):
        t = bench(lambda: T.encoder_weight_grad(x, codes.vals, codes.rows, codes.cols, f), reps, dev)
    sp_enc = None
    if sp is not None:
        flat = idx2.reshape(-1)
        sp_enc = bench(lambda: torch.zeros(f, d, device=dev, dtype=dtype).index_add_(
            0, flat, (v2.unsqueeze(2) * x.unsqueeze(1)).reshape(-1, d)), reps, dev)
    row("encoder weight grad (sorted)", t, {"dense": bench(lambda: dense_codes.t() @ x, reps, dev), "sparsify": sp_enc},
        "sparsify: its fused encoder's index_add_ backward")
    t = bench(lambda: T.encoder_input_grad(codes.vals, codes.cols, codes.offsets, None, W), reps, dev)
    sp_in = None if sp is None else bench(lambda: F.embedding_bag(idx2, W, mode="sum", per_sample_weights=v2), reps, dev)
    row("encoder input grad", t, {"dense": bench(lambda: dense_codes @ W, reps, dev), "sparsify": sp_in},
        "sparsify: F.embedding_bag, as its fused encoder does")


def steps(args: argparse.Namespace, sp) -> None:
    dev, b, d, f, k, reps = args.device, args.batch, args.d, args.features, args.k, args.repeats
    gen = torch.Generator(device=dev).manual_seed(1)
    x = torch.randn(b, d, generator=gen, device=dev)
    print(f"\n## TopK training step, B {b} d {d} F {f} k {k} (tokens/s; ratio = ours / baseline)")
    print("| step | ms | tokens/s | ours (bf16-chosen) vs this |")
    print("|---|---:|---:|---:|")
    runs = {
        "ours, bf16-chosen selection": lambda p: sparse_step(p, x, k, torch.bfloat16),
        "ours, fp32 matmul": lambda p: sparse_step(p, x, k),
        "dense fp32 (plain torch)": lambda p: dense_step(p, x, k),
        "dense bf16 autocast (plain torch)": lambda p: dense_step(p, x, k, True),
    }
    if sp is not None:
        runs["sparsify (fused encoder + Triton bag, bf16 autocast)"] = lambda p: sparsify_step(p, x, k, sp)
    times = {}
    for name, fn in runs.items():
        p = SAEParams(d, f, dev)
        times[name] = bench(lambda: fn(p), reps, dev)
        del p
    ours = times["ours, bf16-chosen selection"]
    for name, t in times.items():
        print(f"| {name} | {t * 1e3:.2f} | {b / t:,.0f} | {t / ours:.2f}x |", flush=True)
    if dev == "cuda":
        print(f"peak GPU memory over the steps: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sparsify", default=os.environ.get("SPARSIFY_SRC"), help="folder holding sparsify/*.py")
    ap.add_argument("--quick", action="store_true", help="tiny shapes (CPU smoke run under TRITON_INTERPRET=1)")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    args.batch, args.d, args.features, args.k = (16, 16, 64, 2) if args.quick else (4096, 768, 131072, 32)
    if args.quick:
        args.repeats = 1
    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu (Triton interpreter)"
    print(f"date: {datetime.date.today()}  device: {name}  torch {torch.__version__}")
    sp = load_sparsify(args.sparsify)
    for dtype in (torch.bfloat16, torch.float32):
        kernels(args, sp, dtype)
    steps(args, sp)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
