"""Training throughput and held-out FVU: the workbench trainer against a plain dense TopK loop.

    python benchmarks/bench_train.py                                   # the anchor: 368,640 tokens, TopK
    python benchmarks/bench_train.py --tokens 0 --archs topk batchtopk feature_choice feature_choice/zipf \
        mutual_choice                                                  # acceptance: every training token
    python benchmarks/bench_train.py --synthetic                       # no cache needed
    python benchmarks/bench_train.py --reference recipe                # dense loop with the trainer's recipe

Every run trains on the same in-memory batches in the same order from the same initial weights
(W_dec random unit rows, W_enc = W_dec^T, b_dec = geometric median). The reference is written
here in plain torch: dense codes, a dense decoder matmul, autograd's dense gradients, Adam at a
constant rate with no gradient clipping (`--reference plain`, the default), so that what the
trainer's recipe (warm-up, decay, clipping) costs or gains shows up as an FVU difference;
`--reference recipe` gives it the trainer's schedule and clipping instead, so that only the
kernels differ. Both keep the decoder-norm constraint and AuxK. The workbench trainer uses the
sparse kernels (and, with --precision auto on a CPU with bf16 units, chooses features on a bf16
encoder matmul while computing their values in fp32). Throughput is the training steps only
(tokens / seconds spent in each run's steps; the runs are interleaved step by step so load from
other jobs hits all of them alike), FVU is measured on held-out tokens of the cache.
Anchor (benchmarks/RESULTS.md): d_model 576, 4608 features, k 32, batch 4096, one pass over
368,640 tokens of SmolLM2 blocks.8.hook_resid_post.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from saes import TensorSource, TrainConfig, Trainer
from machine_info import bf16_units, cpu_model
from saes.losses import lr_multiplier, moment_sums, variance_from_sums

# ------------------------------------------------------------------------------------------------ machine


def machine() -> str:
    cpu, flags = cpu_model(), bf16_units()
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{cpu}, {os.cpu_count()} cores ({flags}), torch {torch.__version__}, {torch.get_num_threads()} threads"
            f"{gpu}, Python {platform.python_version()}")


# ------------------------------------------------------------------------------------------------ data


def load_cache(path: str, hook: str, tokens: int, heldout_tokens: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    from harvesting import CacheReader

    r = CacheReader(path)
    if hook not in r.hooks:
        raise SystemExit(f"hook {hook!r} not in {path}; it has {r.hooks}")
    train_rows = r.num_rows("train", 0.01)
    want = train_rows if tokens <= 0 else min(tokens, train_rows)
    parts, got = [], 0
    for b in r.batches(hook, 4096, seed=seed, split="train", heldout_fraction=0.01, drop_last=False):
        parts.append(b[hook])
        got += b[hook].shape[0]
        if got >= want:
            break
    train = torch.cat(parts)[:want].float()
    held = torch.cat([b[hook] for b in r.batches(hook, 4096, shuffle=False, split="heldout", heldout_fraction=0.01,
                                                 drop_last=False)]).float()[:heldout_tokens]
    return train, held, f"cache {path} ({r.model_id}, {hook}): {train.shape[0]:,} training + {held.shape[0]:,} held-out tokens"


def synthetic(tokens: int, heldout_tokens: int, d: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    from saes.synthetic import random_dictionary, sparse_activations

    n = tokens if tokens > 0 else 368_640
    dic = random_dictionary(8 * d, d, seed=1)
    bias = torch.randn(d, generator=torch.Generator().manual_seed(3)) * 4
    x = sparse_activations(dic, n + heldout_tokens, active=40, seed=2, zipf_exponent=0.7, bias=bias, noise=0.05)
    return x[:n], x[n:], f"synthetic sparse activations, d {d}: {n:,} training + {heldout_tokens:,} held-out tokens"


# ------------------------------------------------------------------------------------------------ reference


class DenseTopK:
    """The dense reference: dense codes, dense decoder, autograd; the trainer's init and AuxK.

    `recipe=False` (plain): Adam at a constant rate, no clipping. `recipe=True`: the trainer's
    warm-up, decay and clipping too."""

    def __init__(self, trainer: Trainer, recipe: bool = False) -> None:
        slot = trainer.slots[0]
        sae = slot.sae
        self.k = sae.cfg.k
        self.k_aux = trainer.k_aux_for(slot)
        self.aux_coef = trainer.cfg.aux_coef if slot.aux == "auxk" else 0.0
        self.dead_tokens = trainer.dead_tokens
        self.W_enc = torch.nn.Parameter(sae.enc_weight.detach().clone())
        self.b_enc = torch.nn.Parameter(sae.b_enc.detach().clone())
        self.W_dec = torch.nn.Parameter(sae.W_dec.detach().clone())
        self.b_dec = torch.nn.Parameter(sae.b_dec.detach().clone())
        self.params = [self.W_enc, self.b_enc, self.W_dec, self.b_dec]
        cfg = trainer.cfg
        self.lr = slot.lr
        self.opt = torch.optim.Adam(self.params, lr=self.lr, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps)
        self.clip = cfg.grad_clip if recipe else 0.0
        self.device = sae.W_dec.device
        self.since_fired = torch.zeros(sae.num_features, dtype=torch.long, device=self.device)
        self.total = trainer.total_steps
        self.warm = int(round(cfg.warmup_fraction * trainer.total_steps)) if recipe else 0
        self.decay_steps = int(round(cfg.decay_fraction * trainer.total_steps)) if recipe else 0
        self.decay = cfg.decay if recipe else "none"

    def step(self, x: torch.Tensor, step: int) -> None:
        x = x.to(self.device)
        denom = variance_from_sums(moment_sums(x)).float()
        pre = F.linear(x - self.b_dec, self.W_enc, self.b_enc)
        v, i = pre.topk(self.k, dim=1, sorted=False)
        z = torch.zeros_like(pre).scatter(1, i, v.relu())
        x_hat = z @ self.W_dec + self.b_dec
        loss = (x_hat - x).pow(2).sum() / denom
        dead = self.since_fired >= self.dead_tokens
        if self.aux_coef > 0 and bool(dead.any()):
            ka = min(self.k_aux, int(dead.sum()))
            va, ia = pre.masked_fill(~dead, float("-inf")).topk(ka, dim=1, sorted=False)
            za = torch.zeros_like(pre).scatter(1, ia, va.relu())
            e = (x - x_hat).detach()
            loss = loss + self.aux_coef * ((za @ self.W_dec) - e).pow(2).sum() / (e - e.mean(0)).pow(2).sum()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            g, w = self.W_dec.grad, self.W_dec
            g.sub_((g * w).sum(1, keepdim=True) * w)
        if self.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        for grp in self.opt.param_groups:
            grp["lr"] = self.lr * lr_multiplier(step, self.total, self.warm, self.decay_steps, self.decay)
        self.opt.step()
        with torch.no_grad():
            self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True))
            fired = (z > 0).sum(0)
            self.since_fired = torch.where(fired > 0, torch.zeros_like(self.since_fired), self.since_fired + x.shape[0])

    @torch.no_grad()
    def heldout(self, held: torch.Tensor, scale: float) -> tuple[float, float]:
        x = held.to(self.device) * scale
        pre = F.linear(x - self.b_dec, self.W_enc, self.b_enc)
        v, i = pre.topk(self.k, dim=1)
        z = torch.zeros_like(pre).scatter(1, i, v.relu())
        err = (z @ self.W_dec + self.b_dec - x).pow(2).sum()
        return float(err / (x - x.mean(0)).pow(2).sum()), float((z > 0).sum(1).float().mean())


# ------------------------------------------------------------------------------------------------ runs


def config(args: argparse.Namespace, arch: str, out: str, precision: str, **overrides) -> TrainConfig:
    """`arch` may carry a Feature Choice capacity rule: "feature_choice/zipf"; `overrides` are
    further TrainConfig fields (a schedule under test)."""
    arch, _, capacity = arch.partition("/")
    fields = dict(arch=(arch,), k=(args.k,), expansion=(args.expansion,), batch_size=args.batch_size,
                  epochs=args.epochs, out=out, progress=False, checkpoint_every=0, log_every=10,
                  precision=precision, seed=args.seed, heldout_fraction=0.0, resume=False, device=args.device,
                  capacity=capacity or "uniform", lr=args.lr, aux_loss=args.aux)
    return TrainConfig(**{**fields, **overrides})


class TrainerRun:
    """The workbench trainer, stepped by the benchmark so every run sees the same batch in turn."""

    def __init__(self, args, src: TensorSource, arch: str, precision: str, name: str = "", **overrides) -> None:
        self.out = tempfile.mkdtemp(prefix="bench_train_")
        self.trainer = Trainer(config(args, arch, self.out, precision, **overrides), src)
        base, _, cap = arch.partition("/")
        self.name = name or f"workbench {base}" + (f" ({cap or 'uniform'} capacity)" if base == "feature_choice" else "") + \
            f", precision {precision}"
        self.seconds = 0.0

    def step(self, x: torch.Tensor, step: int) -> None:
        t = self.trainer
        t.train_step({"x": x})
        t.step += 1
        t.tokens += x.shape[0]

    def result(self) -> dict:
        t = self.trainer
        try:
            summary = t.finish()
        finally:
            shutil.rmtree(self.out, ignore_errors=True)
        row = summary["saes"][0]
        return {"fvu": row["heldout_fvu"], "l0": row["heldout_l0"], "dead": row["dead_pct"],
                "fvu_batch": row.get("heldout_fvu_batch_rule"), "l0_batch": row.get("heldout_l0_batch_rule"),
                "dtype": summary["matmul_dtype"]}


class DenseRun:
    def __init__(self, args, src: TensorSource, held: torch.Tensor, recipe: bool = False) -> None:
        out = tempfile.mkdtemp(prefix="bench_train_dense_")
        try:  # same init (and, with `recipe`, the same resolved schedule) as the workbench TopK run
            t = Trainer(config(args, "topk", out, "float32"), src)
        finally:
            shutil.rmtree(out, ignore_errors=True)
        self.ref = DenseTopK(t, recipe)
        self.scale = t.scales["x"]
        self.held = held
        self.name = ("dense TopK reference, trainer's schedule + clipping (fp32)" if recipe
                     else "plain dense TopK reference: constant rate, no clipping (fp32)")
        self.seconds = 0.0

    def step(self, x: torch.Tensor, step: int) -> None:
        self.ref.step(x * self.scale, step)

    def result(self) -> dict:
        fvu, l0 = self.ref.heldout(self.held, self.scale)
        dead = float((self.ref.since_fired >= self.ref.dead_tokens).float().mean()) * 100
        return {"fvu": fvu, "l0": l0, "dead": dead, "dtype": "float32"}


def run_interleaved(runs: list, batches: list[torch.Tensor]) -> None:
    """Each batch goes through every run in turn (rotating who goes first), each step timed on its own.

    On a shared machine load comes and goes; interleaving at step granularity exposes every run
    to the same conditions, so the ratios hold even when the absolute figures wobble.
    """
    for step, xb in enumerate(batches):
        for j in range(len(runs)):
            r = runs[(step + j) % len(runs)]
            t0 = time.perf_counter()
            r.step(xb, step)
            if torch.cuda.is_available():  # a GPU step is only done when its kernels are
                torch.cuda.synchronize()
            r.seconds += time.perf_counter() - t0


def encoder_matmul_bound(args, d: int) -> float:
    """Tokens/s if a step cost only the fp32 encoder matmul (forward): the ceiling the anchor quotes."""
    f = args.expansion * d
    dev = torch.device("cuda" if args.device.startswith("cuda") else "cpu")
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    x, w, b = torch.randn(args.batch_size, d, device=dev), torch.randn(f, d, device=dev), torch.zeros(f, device=dev)
    for _ in range(2):
        torch.addmm(b, x, w.t())
    sync()
    t0 = time.perf_counter()
    for _ in range(5):
        torch.addmm(b, x, w.t())
    sync()
    return args.batch_size / ((time.perf_counter() - t0) / 5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default="cache/smollm2-wiki-1m")
    ap.add_argument("--hook", default="blocks.8.hook_resid_post")
    ap.add_argument("--synthetic", action="store_true", help="synthetic activations instead of the cache")
    ap.add_argument("--tokens", type=int, default=368_640, help="training tokens (0 = every training token)")
    ap.add_argument("--heldout-tokens", type=int, default=16_384)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--expansion", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--archs", nargs="+", default=["topk"],
                    help="workbench architectures to train (feature_choice/zipf: Zipf capacities)")
    ap.add_argument("--no-dense", action="store_true", help="skip the dense reference")
    ap.add_argument("--reference", choices=["plain", "recipe"], default="plain",
                    help="dense reference: constant rate without clipping, or the trainer's schedule and clipping")
    ap.add_argument("--no-fp32", action="store_true", help="skip the workbench fp32-selection run")
    ap.add_argument("--lr", type=float, default=0.0, help="Adam rate (0 = the trainer's width-scaled default)")
    ap.add_argument("--aux", default="auto", choices=["auto", "auxk", "zipf", "none"],
                    help="aux loss of every workbench run (auto = each architecture's default)")
    args = ap.parse_args()
    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    print(f"date: {datetime.date.today()}  machine: {machine()}")
    if args.synthetic or not (Path(args.cache) / "manifest.json").is_file():
        if not args.synthetic:
            print(f"(no cache at {args.cache}: using synthetic data)")
        train_x, held, what = synthetic(args.tokens, args.heldout_tokens, 576)
    else:
        train_x, held, what = load_cache(args.cache, args.hook, args.tokens, args.heldout_tokens, args.seed)
    print(f"data: {what}")
    d = train_x.shape[1]
    print(f"SAE: d {d}, {args.expansion * d} features, k {args.k}, batch {args.batch_size}, Adam, "
          f"{args.epochs} epoch(s); held-out FVU against the held-out set's own mean")
    src = TensorSource(train_x, heldout=held)
    runs: list = []
    for arch in args.archs:
        runs.append(TrainerRun(args, src, arch, "auto"))
        if arch == "topk" and not args.no_fp32:
            runs.append(TrainerRun(args, src, arch, "float32"))
    dense = None if args.no_dense else DenseRun(args, src, held, args.reference == "recipe")
    if dense is not None:
        runs.append(dense)
    total = runs[0].trainer.total_steps
    batches = []
    for e in range(args.epochs):
        batches.extend(b["x"] for b in src.batches(["x"], args.batch_size, seed=args.seed, epoch=e,
                                                   split="train", heldout_fraction=0.0))
    batches = batches[:total]
    print(f"{len(runs)} runs interleaved step by step over the same {total} batches of {args.batch_size} tokens")
    run_interleaved(runs, batches)
    tokens = total * args.batch_size
    rows = []
    for r in runs:
        res = r.result()
        res["tok_s"] = tokens / r.seconds
        rows.append((r.name, res))
    dense_res = rows[-1][1] if dense is not None else None
    bound = encoder_matmul_bound(args, d)
    print()
    print("| run | selection matmul | tokens/s | vs dense ref | held-out FVU | L0 | dead % (train window) "
          "| batch-rule FVU / L0 |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for name, r in rows:
        ratio = f"{r['tok_s'] / dense_res['tok_s']:.2f}x" if dense_res else "-"
        batch = "-" if r.get("fvu_batch") is None else f"{r['fvu_batch']:.4f} / {r['l0_batch']:.1f}"
        print(f"| {name} | {r['dtype']} | {r['tok_s']:,.0f} | {ratio} | {r['fvu']:.4f} | {r['l0']:.1f} | "
              f"{r['dead']:.2f} | {batch} |")
    print(f"\nfp32 encoder matmul alone (forward, B {args.batch_size} x d {d} x F {args.expansion * d}): "
          f"{bound:,.0f} tokens/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
