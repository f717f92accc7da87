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
steps (encode, decode, MSE, backward, Adam, decoder renormalisation) in tokens/s: ours with the
unfused and the fused selection (`SAE_SELECT=fused`), each with atomic and with deterministic
(sorted) reductions, the plain dense step in fp32 and under bf16 autocast, and sparsify's step
(its fused encoder + its Triton embedding bag, under bf16 autocast as sparsify runs it), at
F 131072 with the physical floor (the bf16 encoder matmul alone + Adam's memory traffic at the
measured copy bandwidth) and at F 4608; last, issue 21's goals with their figures and PASS/MISS.
Medians over repeats after warm-up.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import importlib.util
import os
import sys
from collections.abc import Iterator
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


def kernels(args: argparse.Namespace, sp, dtype: torch.dtype) -> float:
    """One dtype's kernel table; returns the sparse decode's time (issue 21 wants bf16 <= fp32)."""
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
    t_decode = bench(lambda: T.decode_forward(codes.vals, codes.cols, codes.offsets, None, W, None), reps, dev)
    row("sparse decode fwd", t_decode, {"dense": bench(lambda: dense_codes @ W, reps, dev), "sparsify": sp_dec})
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
    return t_decode


def selection_kernels(args: argparse.Namespace) -> None:
    """The selection alone, bf16: the unfused bf16 addmm + torch.topk against the fused kernel with
    either in-tile merge, beside the matmul alone; and how many places the fused pick shares with
    torch.topk on the addmm's output (below 100% only by ties and bf16 rounding at the boundary)."""
    from saes.kernels.fused_select import fused_topk

    dev, b, d, f, reps = args.device, args.batch, args.d, args.features, args.repeats
    gen = torch.Generator(device=dev).manual_seed(3)
    x = torch.randn(b, d, generator=gen, device=dev)
    W = torch.randn(f, d, generator=gen, device=dev) / d**0.5
    bias = torch.randn(f, generator=gen, device=dev) * 0.1
    xb, Wb, bb = x.bfloat16(), W.bfloat16(), bias.bfloat16()
    t_mm = bench(lambda: xb @ Wb.t(), reps, dev)
    print(f"\n## TopK selection, B {b} d {d} F {f} bf16 (ms; ratio = unfused / this; "
          f"matmul alone {t_mm * 1e3:.3f} ms)")
    print("| selection | k | ms | vs unfused | same places as unfused |")
    print("|---|---:|---:|---:|---:|")
    for k in (args.k, 4 * args.k):
        t_ref = bench(lambda: torch.addmm(bb, xb, Wb.t()).topk(k, dim=1, sorted=False), reps, dev)
        ref = torch.addmm(bb, xb, Wb.t()).topk(k, dim=1).indices
        mask = torch.zeros(b, f, dtype=torch.bool, device=dev).scatter_(1, ref, True)
        print(f"| unfused: bf16 addmm + torch.topk | {k} | {t_ref * 1e3:.3f} | 1.00x | 100% |")
        for merge in ("insert", "bitonic"):
            t = bench(lambda: fused_topk(x, W.t(), bias, k, torch.bfloat16, merge=merge), reps, dev)
            same = mask.gather(1, fused_topk(x, W.t(), bias, k, torch.bfloat16, merge=merge)[1]).float().mean()
            print(f"| fused matmul + TopK, {merge} merge | {k} | {t * 1e3:.3f} | {t_ref / t:.2f}x | {float(same):.4%} |",
                  flush=True)
        del mask


@contextlib.contextmanager
def selection(choice: str) -> Iterator[None]:
    """`SAE_SELECT` for the block: each row names its selection path whatever the caller's environment."""
    old = os.environ.get("SAE_SELECT")
    os.environ["SAE_SELECT"] = choice
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SAE_SELECT", None)
        else:
            os.environ["SAE_SELECT"] = old


def ours(x: torch.Tensor, k: int, fused: bool = False, det: bool = False, mdt=torch.bfloat16):
    def run(p: SAEParams) -> torch.Tensor:
        with selection("fused" if fused else "dense"), deterministic(det):
            return sparse_step(p, x, k, mdt)
    return run


OURS, FUSED = "ours, bf16-chosen selection", "ours, fused selection (SAE_SELECT=fused), bf16"
OURS_DET, FUSED_DET = "ours, bf16-chosen, deterministic (sorted)", "ours, fused selection, deterministic (sorted)"
DENSE = "dense fp32 (plain torch)"
SPARSIFY = "sparsify (fused encoder + Triton bag, bf16 autocast)"
FLOOR = "floor: bf16 encoder matmul + Adam traffic at copy bandwidth"


def floor(args: argparse.Namespace, f: int) -> tuple[float, str, float]:
    """The step's physical floor, measured here: the bf16 encoder matmul alone at the step's shapes,
    plus Adam's memory traffic over the SAE's parameters (fp32: read param, grad, both moments;
    write param and moments = 28 bytes per parameter) at the bandwidth of a large copy. Also times a
    real Adam step (fused on CUDA) over tensors of those sizes, for comparison."""
    dev, b, d, reps = args.device, args.batch, args.d, args.repeats
    gen = torch.Generator(device=dev).manual_seed(2)
    xb = torch.randn(b, d, generator=gen, device=dev).bfloat16()
    Wb = torch.randn(f, d, generator=gen, device=dev).bfloat16()
    t_mm = bench(lambda: xb @ Wb.t(), reps, dev)
    big = torch.empty(2**28 if dev == "cuda" else 2**24, dtype=torch.uint8, device=dev)
    other = torch.empty_like(big)
    bw = 2 * big.numel() / bench(lambda: other.copy_(big), reps, dev)
    sizes = [(f, d), (f,), (f, d), (d,)]  # W_enc, b_enc, W_dec, b_dec
    params = [torch.zeros(sz, device=dev, requires_grad=True) for sz in sizes]
    for q in params:
        q.grad = torch.randn(q.shape, generator=gen, device=dev)
    n = sum(q.numel() for q in params)
    opt = torch.optim.Adam(params, lr=1e-4, fused=dev == "cuda")
    t_adam = bench(opt.step, reps, dev)
    t_traffic = 28 * n / bw
    note = (f"matmul {t_mm * 1e3:.3f} ms + {28 * n / 1e9:.2f} GB at {bw / 1e9:,.0f} GB/s = "
            f"{t_traffic * 1e3:.3f} ms")
    return t_mm + t_traffic, note, t_adam


def steps(args: argparse.Namespace, sp, f: int, with_floor: bool) -> dict[str, float]:
    dev, b, d, k, reps = args.device, args.batch, args.d, args.k, args.repeats
    gen = torch.Generator(device=dev).manual_seed(1)
    x = torch.randn(b, d, generator=gen, device=dev)
    print(f"\n## TopK training step, B {b} d {d} F {f} k {k} (tokens/s; ratio = ours / baseline)")
    print("| step | ms | tokens/s | ours (bf16-chosen) vs this | note |")
    print("|---|---:|---:|---:|---|")
    runs = {
        OURS: ours(x, k),
        FUSED: ours(x, k, fused=True),
        OURS_DET: ours(x, k, det=True),
        FUSED_DET: ours(x, k, fused=True, det=True),
        "ours, fp32 matmul": ours(x, k, mdt=None),
        DENSE: lambda p: dense_step(p, x, k),
        "dense bf16 autocast (plain torch)": lambda p: dense_step(p, x, k, True),
    }
    if sp is not None:
        runs[SPARSIFY] = lambda p: sparsify_step(p, x, k, sp)
    times, notes = {}, {}
    for name, fn in runs.items():  # fresh parameters per row, freed after it
        times[name] = bench(functools.partial(fn, SAEParams(d, f, dev)), reps, dev)
    if with_floor:
        times[FLOOR], notes[FLOOR], times["Adam step alone (torch, fused on CUDA)"] = floor(args, f)
    for name, t in times.items():
        print(f"| {name} | {t * 1e3:.2f} | {b / t:,.0f} | {t / times[OURS]:.2f}x | {notes.get(name, '')} |", flush=True)
    if dev == "cuda":
        print(f"peak GPU memory over the steps: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    return times


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def goals(args: argparse.Namespace, wide: dict[str, float], small: dict[str, float],
          decode: dict[torch.dtype, float]) -> None:
    """Issue 21's acceptance, each goal with its measured figure. "Ours" is the faster of the two
    selection paths with atomic reductions (named in the row); the deterministic goal compares the
    same path with sorted reductions."""
    best = min((OURS, FUSED), key=lambda n: wide[n])
    det = OURS_DET if best == OURS else FUSED_DET
    small_best = min((OURS, FUSED), key=lambda n: small[n])
    sp = wide.get(SPARSIFY)
    rows = [
        (f"F {args.features}: ours vs sparsify's step", "n/a (no --sparsify)" if sp is None else
         f"{sp / wide[best]:.2f}x ({best})", ">= 3x", None if sp is None else sp / wide[best] >= 3),
        (f"F {args.features}: ours as a fraction of the floor", f"{wide[FLOOR] / wide[best]:.0%} ({best})", ">= 50%",
         wide[FLOOR] / wide[best] >= 0.5),
        (f"F {args.small}: ours vs the plain dense loop (dense fp32 step; the trainer's figure is "
         "bench_train.py's)", f"{small[DENSE] / small[small_best]:.2f}x ({small_best})", ">= 1.5x",
         small[DENSE] / small[small_best] >= 1.5),
        (f"F {args.features}: deterministic vs atomic step", f"{wide[det] / wide[best] - 1:+.0%} ({det})", "<= +10%",
         wide[det] <= 1.1 * wide[best]),
        (f"bf16 sparse decode <= fp32 sparse decode (B {args.batch} d {args.d} F {args.features} k {args.k})",
         f"bf16 {decode[torch.bfloat16] * 1e3:.3f} ms vs fp32 {decode[torch.float32] * 1e3:.3f} ms", "bf16 <= fp32",
         decode[torch.bfloat16] <= decode[torch.float32]),
        ("resume bit-identical on CUDA", "measured by gpu_determinism.py (gpu_check.sh part 3)", "identical", None),
    ]
    print("\n## goals (issue 21), measured in this run")
    print("| goal | measured | target | verdict |")
    print("|---|---|---|---|")
    for goal, measured, target, ok in rows:
        print(f"| {goal} | {measured} | {target} | {verdict(ok)} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sparsify", default=os.environ.get("SPARSIFY_SRC"), help="folder holding sparsify/*.py")
    ap.add_argument("--quick", action="store_true", help="tiny shapes (CPU smoke run under TRITON_INTERPRET=1)")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    args.batch, args.d, args.features, args.k = (16, 16, 64, 2) if args.quick else (4096, 768, 131072, 32)
    args.small = 32 if args.quick else 4608
    if args.quick:
        args.repeats = 1
    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu (Triton interpreter)"
    print(f"date: {datetime.date.today()}  device: {name}  torch {torch.__version__}")
    sp = load_sparsify(args.sparsify)
    decode = {dtype: kernels(args, sp, dtype) for dtype in (torch.bfloat16, torch.float32)}
    selection_kernels(args)
    wide = steps(args, sp, args.features, with_floor=True)
    small = steps(args, sp, args.small, with_floor=False)
    goals(args, wide, small, decode)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
