"""Sparse kernels against their dense torch equivalents and `F.embedding_bag`, and whole training steps.

    python benchmarks/bench_kernels.py                # CPU (torch path) tables, then the GPU part
    python benchmarks/bench_kernels.py --quick        # smaller CPU shapes, fewer repeats
    python benchmarks/bench_kernels.py --fvu          # also: does choosing on a bf16 matmul keep FVU?

CPU: d 576, F 4608 and 32768, k 32, batch 4096. GPU (only when one is present, otherwise the
script prints "no GPU" for that part and exits 0): d 768, F 32768 and 131072, k 32 and 128,
batch 4096, with each Triton kernel's achieved bandwidth as a fraction of the measured peak.
Times are medians over repeats after warm-up; on a shared machine compare ratios, not times.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from saes.kernels import (
    BatchTopK,
    FeatureChoice,
    SparseCodes,
    TopK,
    deterministic,
    encode,
    feature_index,
    select_batch_topk,
    select_feature_choice,
    sparse_decode,
)
from saes.kernels import torch_ops
from machine_info import bf16_units, cpu_model

# ------------------------------------------------------------------------------------------------ timing


def bench(fn: Callable[[], object], repeats: int, device: str = "cpu") -> float:
    """Median seconds per call after two warm-up calls."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(2):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def machine() -> str:
    return (
        f"{cpu_model()}, {os.cpu_count()} cores ({bf16_units()}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.python_implementation()} {platform.python_version()}"
    )


class Table:
    def __init__(self, title: str) -> None:
        self.title = title
        self.rows: list[list[str]] = []

    def add(self, name: str, shape: str, ours: float, baselines: dict[str, float | None], extra: str = "") -> None:
        cells = [name, shape, f"{ours * 1e3:9.2f}"]
        for label, t in baselines.items():
            cells.append("-" if t is None else f"{label} {t * 1e3:8.2f} ({t / ours:5.2f}x)")
        cells.append(extra)
        self.rows.append(cells)
        print(" | ".join(cells), flush=True)

    def header(self, baseline_names: list[str]) -> None:
        print(f"\n## {self.title}")
        print(" | ".join(["kernel", "shape", "ours ms", *[f"baseline: {b} ms (ratio)" for b in baseline_names], "note"]))


# ------------------------------------------------------------------------------------------------ inputs


def topk_codes(b: int, f: int, k: int, device: str, dtype: torch.dtype, gen: torch.Generator) -> SparseCodes:
    pre = torch.randn(b, f, generator=gen, device=device, dtype=torch.float32)
    v, i = pre.topk(k, dim=1)
    return SparseCodes.from_topk(v.relu().to(dtype), i, f)


class KernelInputs:
    """One shape's random inputs for every kernel row: codes (also as [B, k] and dense), a decoder
    W [F, d], an output gradient and an input, all in `dtype` (shared with gpu_check.py)."""

    def __init__(self, b: int, d: int, f: int, k: int, device: str, dtype: torch.dtype, gen: torch.Generator) -> None:
        self.codes = topk_codes(b, f, k, device, dtype, gen)
        self.idx2, self.v2 = self.codes.cols.view(b, k), self.codes.vals.view(b, k)
        self.W = torch.randn(f, d, generator=gen, device=device, dtype=dtype)
        self.go = torch.randn(b, d, generator=gen, device=device, dtype=dtype)
        self.x = torch.randn(b, d, generator=gen, device=device, dtype=dtype)
        self.dense_codes = self.codes.to_dense()


# ------------------------------------------------------------------------------------------------ steps


class SAEParams:
    """A TopK SAE's parameters, W_enc stored [F, d] (the layout the kernels like best)."""

    def __init__(self, d: int, f: int, device: str, seed: int = 0) -> None:
        g = torch.Generator(device=device).manual_seed(seed)
        W = torch.randn(f, d, generator=g, device=device)
        W /= W.norm(dim=1, keepdim=True)
        self.W_dec = torch.nn.Parameter(W.clone())
        self.W_enc = torch.nn.Parameter(W.clone())
        self.b_enc = torch.nn.Parameter(torch.zeros(f, device=device))
        self.b_dec = torch.nn.Parameter(torch.zeros(d, device=device))
        self.opt = torch.optim.Adam([self.W_enc, self.b_enc, self.W_dec, self.b_dec], lr=2e-4)

    def finish_step(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():  # decoder rows stay unit norm: drop the parallel gradient, renormalise
            g = self.W_dec.grad
            g -= (g * self.W_dec).sum(1, keepdim=True) * self.W_dec
        self.opt.step()
        with torch.no_grad():
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True)


def sparse_step(p: SAEParams, x: torch.Tensor, k: int, matmul_dtype: torch.dtype | None = None) -> torch.Tensor:
    (codes,) = encode(x - p.b_dec, p.W_enc.t(), p.b_enc, [TopK(k)], matmul_dtype=matmul_dtype)
    x_hat = sparse_decode(codes, p.W_dec, p.b_dec)
    loss = (x_hat - x).pow(2).sum(-1).mean()
    p.finish_step(loss)
    return loss.detach()


def dense_step(p: SAEParams, x: torch.Tensor, k: int, autocast_bf16: bool = False) -> torch.Tensor:
    """The plain dense reference: dense codes, dense decoder, autograd's dense gradients."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast_bf16):
        pre = F.linear(x - p.b_dec, p.W_enc, p.b_enc)
        v, i = pre.topk(k, dim=1, sorted=False)
        z = torch.zeros_like(pre).scatter(1, i, v.relu())
        x_hat = z @ p.W_dec + p.b_dec
    loss = (x_hat.float() - x).pow(2).sum(-1).mean()
    p.finish_step(loss)
    return loss.detach()


# ------------------------------------------------------------------------------------------------ CPU


def cpu_part(args: argparse.Namespace) -> None:
    dev = "cpu"
    reps = args.repeats
    b, d, k = (1024, 576, 32) if args.quick else (4096, 576, 32)
    widths = [4608, 32768] if not args.quick else [4608]
    gen = torch.Generator().manual_seed(0)
    print(f"\n# CPU, torch path (SAE_KERNELS={os.environ.get('SAE_KERNELS', 'auto')})")

    for f in widths:
        shape = f"B{b} d{d} F{f} k{k}"
        codes = topk_codes(b, f, k, dev, torch.float32, gen)
        dense_codes = codes.to_dense()
        W = torch.randn(f, d, generator=gen)
        bias = torch.randn(d, generator=gen)
        go = torch.randn(b, d, generator=gen)
        x = torch.randn(b, d, generator=gen)
        idx2 = codes.cols.view(b, k)
        v2 = codes.vals.view(b, k)

        t = Table(f"kernels, {shape}, fp32")
        t.header(["dense torch", "F.embedding_bag autograd / alternative"])

        def bag_bwd(wrt: str) -> Callable[[], object]:
            Wr = W.clone().requires_grad_(wrt == "weight")
            vr = v2.clone().requires_grad_(wrt == "psw")
            out = F.embedding_bag(idx2, Wr, per_sample_weights=vr, mode="sum")
            target = Wr if wrt == "weight" else vr
            return lambda: torch.autograd.grad(out, target, go, retain_graph=True)

        t.add("sparse decode fwd", shape,
              bench(lambda: torch_ops.decode_forward(codes.vals, codes.cols, codes.offsets, codes.k, W, bias), reps),
              {"dense": bench(lambda: torch.addmm(bias, dense_codes, W), reps),
               "embedding_bag": bench(lambda: F.embedding_bag(idx2, W, per_sample_weights=v2, mode="sum") + bias, reps)})
        t.add("grad at active features", shape,
              bench(lambda: torch_ops.grad_at_active(go, W, codes.rows, codes.cols, codes.offsets), reps),
              {"dense": bench(lambda: (go @ W.t()).gather(1, idx2), reps),
               "embedding_bag bwd(psw)": bench(bag_bwd("psw"), reps)})
        order_fo = codes.by_feature()
        t.add("decoder weight grad", shape,
              bench(lambda: torch_ops.decoder_weight_grad(codes.vals, codes.rows, codes.cols, go, f, order_fo), reps),
              {"dense": bench(lambda: dense_codes.t() @ go, reps),
               "embedding_bag bwd(W)": bench(bag_bwd("weight"), reps)},
              "reverse index given")
        t.add("reverse index (sort by feature)", shape,
              bench(lambda: feature_index(codes.cols, f), reps), {"dense": None, "alt": None},
              "shared by both weight grads")
        t.add("encoder weight grad", shape,
              bench(lambda: torch_ops.encoder_weight_grad(x, codes.vals, codes.rows, codes.cols, f, order_fo), reps),
              {"dense": bench(lambda: dense_codes.t() @ x, reps),
               "index_add_ of gathered rows": bench(
                   lambda: torch.zeros(f, d).index_add_(0, codes.cols, x[codes.rows] * codes.vals[:, None]), reps)})
        t.add("encoder input grad", shape,
              bench(lambda: torch_ops.encoder_input_grad(codes.vals, codes.cols, codes.offsets, codes.k, W), reps),
              {"dense": bench(lambda: dense_codes @ W, reps), "alt": None})

        pre = torch.randn(b, f, generator=gen)
        preb = pre.bfloat16()
        t2 = Table(f"selection and encoder matmul, {shape}")
        t2.header(["baseline"])
        t2.add("TopK (torch.topk), fp32 pre", shape, bench(lambda: pre.topk(k, dim=1, sorted=False), reps), {"-": None})
        t2.add("TopK (torch.topk), bf16 pre", shape, bench(lambda: preb.topk(k, dim=1, sorted=False), reps),
               {"fp32 topk": bench(lambda: pre.topk(k, dim=1, sorted=False), reps)})
        t2.add("BatchTopK (candidates)", shape, bench(lambda: select_batch_topk(pre, k), reps),
               {"flat topk(k*B)": bench(lambda: pre.view(-1).topk(k * b, sorted=False), max(3, reps // 3))})
        cap = torch.full((f,), k * b // f + 1)
        t2.add("FeatureChoice (topk over tokens)", shape, bench(lambda: select_feature_choice(pre, cap), reps),
               {"-": None})
        Wt = W.t()
        t2.add("encoder matmul bf16", shape,
               bench(lambda: torch.addmm(bias.new_zeros(f).bfloat16(), x.bfloat16(), Wt.bfloat16()), reps),
               {"fp32": bench(lambda: torch.addmm(torch.zeros(f), x, Wt), reps)})

        t3 = Table(f"training step (forward + backward + Adam + decoder renorm), {shape}")
        t3.header(["dense fp32 step", "dense bf16-autocast step"])
        xs = torch.randn(b, d, generator=gen)
        ps, pd = SAEParams(d, f, dev), SAEParams(d, f, dev)
        step_reps = max(3, reps // 2)
        t_sparse = bench(lambda: sparse_step(ps, xs, k), step_reps)
        t_sparse_bf = bench(lambda: sparse_step(ps, xs, k, torch.bfloat16), step_reps)
        t_dense = bench(lambda: dense_step(pd, xs, k), max(2, step_reps // 2))
        t_dense_bf = bench(lambda: dense_step(pd, xs, k, autocast_bf16=True), max(2, step_reps // 2))
        base = {"dense fp32": t_dense, "dense bf16": t_dense_bf}
        t3.add("sparse step, fp32 matmul", shape, t_sparse, base, f"{b / t_sparse:,.0f} tokens/s")
        t3.add("sparse step, bf16-chosen", shape, t_sparse_bf, base, f"{b / t_sparse_bf:,.0f} tokens/s")
        print(f"dense fp32 step: {b / t_dense:,.0f} tokens/s; dense bf16 step: {b / t_dense_bf:,.0f} tokens/s")


# ------------------------------------------------------------------------------------------------ FVU check


def fvu_part(args: argparse.Namespace) -> None:
    """Same init, same batches: choose on the fp32 vs the bf16 matmul, compare held-out FVU."""
    b, d, f, k = 4096, 576, 4608, 32
    steps = 30 if args.quick else 90
    gen = torch.Generator().manual_seed(1)
    true_dict = torch.randn(4 * f, d, generator=gen)
    true_dict /= true_dict.norm(dim=1, keepdim=True)

    def batch(n: int) -> torch.Tensor:
        idx = torch.randint(0, true_dict.shape[0], (n, 24), generator=gen)
        mag = torch.empty(n, 24).exponential_(generator=gen)
        return torch.einsum("nj,njd->nd", mag, true_dict[idx]) + 0.05 * torch.randn(n, d, generator=gen)

    data = [batch(b) for _ in range(steps)]
    held = batch(8192)
    print(f"\n# FVU: fp32 vs bf16 selection, TopK d{d} F{f} k{k}, {steps} steps of {b} synthetic tokens")
    for name, mdt in (("fp32 matmul", None), ("bf16-chosen", torch.bfloat16)):
        p = SAEParams(d, f, "cpu", seed=3)
        with torch.no_grad():
            p.b_dec.copy_(data[0].mean(0))
        for xb in data:
            sparse_step(p, xb, k, mdt)
        with torch.no_grad():
            (c,) = encode(held - p.b_dec, p.W_enc.t(), p.b_enc, [TopK(k)])
            err = sparse_decode(c, p.W_dec, p.b_dec) - held
            fvu = err.pow(2).sum() / (held - held.mean(0)).pow(2).sum()
        print(f"{name}: held-out FVU {float(fvu):.4f}")


# ------------------------------------------------------------------------------------------------ GPU


def gpu_part(args: argparse.Namespace) -> None:
    if not torch.cuda.is_available():
        print("\n# GPU\nno GPU: the Triton kernels could not be timed on this machine")
        return
    try:
        from saes.kernels import triton_ops as T
    except Exception as exc:  # triton missing or broken: say so, do not fail the CPU figures
        print(f"\n# GPU\nTriton unavailable ({exc!r}); no GPU figures")
        return
    dev = "cuda"
    reps = args.repeats
    name = torch.cuda.get_device_name()
    print(f"\n# GPU: {name}, Triton path")
    big = torch.empty(2**28, dtype=torch.uint8, device=dev)
    other = torch.empty_like(big)
    t_copy = bench(lambda: other.copy_(big), reps, dev)
    peak_bw = 2 * big.numel() / t_copy
    a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    t_mm = bench(lambda: a @ a, reps, dev)
    peak_flops = 2 * 8192**3 / t_mm
    del big, other, a
    print(f"measured peak: copy {peak_bw / 1e9:,.0f} GB/s, bf16 matmul {peak_flops / 1e12:,.0f} TFLOP/s")
    b, d = 4096, 768
    gen = torch.Generator(device=dev).manual_seed(0)
    for f in (32768, 131072):
        for k in (32, 128):
            for dtype in (torch.bfloat16, torch.float32):
                es = torch.tensor([], dtype=dtype).element_size()
                shape = f"B{b} d{d} F{f} k{k} {str(dtype)[6:]}"
                inp = KernelInputs(b, d, f, k, dev, dtype, gen)
                codes, idx2, v2, W, go, x, dense_codes = (inp.codes, inp.idx2, inp.v2, inp.W, inp.go, inp.x,
                                                          inp.dense_codes)
                t = Table(f"Triton kernels, {shape}")
                t.header(["dense torch", "F.embedding_bag"])
                gather_bytes = b * k * (d * es + 8 + es) + b * d * es

                def frac(sec: float, nbytes: float) -> str:
                    return f"{nbytes / sec / 1e9:,.0f} GB/s = {nbytes / sec / peak_bw:.0%} of peak bw"

                tt = bench(lambda: T.decode_forward(codes.vals, codes.cols, codes.offsets, None, W, None), reps, dev)
                t.add("sparse decode fwd", shape, tt,
                      {"dense": bench(lambda: dense_codes @ W, reps, dev),
                       "embedding_bag": bench(lambda: F.embedding_bag(idx2, W, per_sample_weights=v2, mode="sum"), reps, dev)},
                      frac(tt, gather_bytes) + f"; floor {gather_bytes / peak_bw * 1e3:.3f} ms")
                tt = bench(lambda: T.grad_at_active(go, W, codes.rows, codes.cols), reps, dev)
                t.add("grad at active features", shape, tt,
                      {"dense": bench(lambda: (go @ W.t()).gather(1, idx2), reps, dev), "embedding_bag": None},
                      frac(tt, gather_bytes + b * d * es))
                for det in (True, False):
                    with deterministic(det):
                        tt = bench(lambda: T.decoder_weight_grad(codes.vals, codes.rows, codes.cols, go, f), reps, dev)
                    Wr = W.clone().requires_grad_(True)
                    out = F.embedding_bag(idx2, Wr, per_sample_weights=v2, mode="sum")
                    t.add(f"decoder weight grad ({'sorted' if det else 'atomics'})", shape, tt,
                          {"dense": bench(lambda: dense_codes.t() @ go, reps, dev),
                           "embedding_bag": bench(lambda: torch.autograd.grad(out, Wr, go, retain_graph=True), reps, dev)},
                          frac(tt, gather_bytes + f * d * es))
                with deterministic(True):
                    tt = bench(lambda: T.encoder_weight_grad(x, codes.vals, codes.rows, codes.cols, f), reps, dev)
                t.add("encoder weight grad (sorted)", shape, tt,
                      {"dense": bench(lambda: dense_codes.t() @ x, reps, dev), "embedding_bag": None},
                      frac(tt, gather_bytes + f * d * es))
                t.add("encoder input grad", shape,
                      bench(lambda: T.encoder_input_grad(codes.vals, codes.cols, codes.offsets, None, W), reps, dev),
                      {"dense": bench(lambda: dense_codes @ W, reps, dev), "embedding_bag": None})
                del dense_codes
            t3 = Table(f"training step on GPU, B{b} d{d} F{f} k{k}")
            t3.header(["dense fp32 step", "dense bf16-autocast step"])
            xs = torch.randn(b, d, generator=gen, device=dev)
            ps, pd = SAEParams(d, f, dev), SAEParams(d, f, dev)
            t_sp = bench(lambda: sparse_step(ps, xs, k), reps, dev)
            t_sp_bf = bench(lambda: sparse_step(ps, xs, k, torch.bfloat16), reps, dev)
            base = {"dense fp32": bench(lambda: dense_step(pd, xs, k), reps, dev),
                    "dense bf16": bench(lambda: dense_step(pd, xs, k, True), reps, dev)}
            t3.add("sparse step, fp32 matmul", f"F{f} k{k}", t_sp, base, f"{b / t_sp:,.0f} tokens/s")
            t3.add("sparse step, bf16-chosen", f"F{f} k{k}", t_sp_bf, base, f"{b / t_sp_bf:,.0f} tokens/s")
            del ps, pd


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller CPU shapes and fewer repeats")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per figure (median)")
    ap.add_argument("--part", choices=["all", "cpu", "gpu"], default="all")
    ap.add_argument("--fvu", action="store_true", help="also compare FVU of fp32 vs bf16 selection")
    args = ap.parse_args()
    if args.repeats is None:
        args.repeats = 3 if args.quick else 7
    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    print(f"date: {datetime.date.today()}  machine: {machine()}")
    if args.part in ("all", "cpu"):
        cpu_part(args)
        if args.fvu:
            fvu_part(args)
    if args.part in ("all", "gpu"):
        gpu_part(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
