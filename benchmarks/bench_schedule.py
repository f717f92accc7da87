"""Which learning-rate schedule to make the default: held-out FVU of each, over run lengths.

    python benchmarks/bench_schedule.py                     # 0.4M tokens, one epoch (~1M), four epochs (~4M)
    python benchmarks/bench_schedule.py --lengths 409600 --seeds 0 1
    python benchmarks/bench_schedule.py --lr-sweep 1 2 4 8 --no-dense  # the rate, at the default schedule

The defaults of `sae train` (warm-up, decay, gradient clipping, rate) should be the ones that give
the lowest held-out FVU for the run lengths people use, not the ones a paper happened to use. Each
length trains every variant below from the same initial weights on the same batches in the same
order (TopK, d 576, 4608 features, k 32, batch 4096, the trainer's `--precision auto`), plus the
plain dense reference of `bench_train.py` (dense autograd, Adam at a constant rate, no clipping):
a loop that shares none of the recipe's choices, so it shows what each choice costs or gains.
Lengths past one epoch repeat the cache's training split (the offline corpus holds about 1.1M
tokens), each epoch in a fresh order, as `sae train --epochs N` does. Quality only: nothing is timed.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

import torch

from bench_train import DenseRun, TrainerRun, load_cache, machine
from saes import TensorSource, TrainConfig
from saes.slot import width_scaled_lr

# name -> TrainConfig fields; "lr x2" doubles the width-scaled default rate
VARIANTS: dict[str, dict] = {
    "warm-up 1%, linear decay 20%, clip 1": dict(warmup_fraction=0.01, decay="linear", decay_fraction=0.2, grad_clip=1.0),
    "warm-up 1%, no decay, clip 1": dict(warmup_fraction=0.01, decay="none", grad_clip=1.0),
    "no warm-up, no decay, clip 1": dict(warmup_fraction=0.0, decay="none", grad_clip=1.0),
    "warm-up 1%, linear decay 20%, no clip": dict(warmup_fraction=0.01, decay="linear", decay_fraction=0.2, grad_clip=0.0),
    "warm-up 1%, no decay, no clip": dict(warmup_fraction=0.01, decay="none", grad_clip=0.0),
    "warm-up 1%, linear decay 20%, clip 1, lr x2": dict(warmup_fraction=0.01, decay="linear", decay_fraction=0.2,
                                                        grad_clip=1.0, lr_scale=2.0),
    "warm-up 1%, no decay, clip 1, lr x2": dict(warmup_fraction=0.01, decay="none", grad_clip=1.0, lr_scale=2.0),
}
SCHEDULE_FIELDS = ("warmup_fraction", "decay", "decay_fraction", "grad_clip")


def is_default(fields: dict) -> bool:
    """Whether a variant is what `sae train` does when given no schedule flags."""
    d = TrainConfig()
    keys = [k for k in SCHEDULE_FIELDS if not (k == "decay_fraction" and fields.get("decay") == "none")]
    return all(getattr(d, k) == fields.get(k) for k in keys) and fields.get("lr_scale", 1.0) == 1.0 and d.lr == 0.0


def parse_length(spec: str, train_rows: int) -> tuple[int, int]:
    """'409600' -> (tokens, epochs); '1ep' / '4ep' -> whole epochs."""
    if spec.endswith("ep"):
        e = int(spec[:-2])
        return e * train_rows, e
    n = int(spec)
    return n, -(-n // train_rows)


def lr_sweep(scales: list[float]) -> dict[str, dict]:
    """The default schedule at several multiples of the width-scaled rate."""
    d = TrainConfig()
    base = {k: getattr(d, k) for k in SCHEDULE_FIELDS}
    return {f"default schedule, lr x{s:g}": {**base, "lr_scale": s} for s in scales}


def train_length(args, src: TensorSource, held: torch.Tensor, tokens: int, epochs: int, seed: int) -> list[tuple[str, dict]]:
    args.epochs, args.seed = epochs, seed
    lr = width_scaled_lr(args.expansion * src.data["x"].shape[1])
    runs: list = []
    for name, fields in args.variants.items():
        fields = dict(fields)
        scale = fields.pop("lr_scale", 1.0)
        runs.append(TrainerRun(args, src, "topk", "auto", name=name, max_tokens=tokens, lr=lr * scale, **fields))
    if not args.no_dense:
        args.lr = lr  # the dense reference takes the same base rate, at a constant rate
        runs.append(DenseRun(args, src, held))
    total = runs[0].trainer.total_steps
    step = 0
    for e in range(epochs):
        for b in src.batches(["x"], args.batch_size, seed=seed, epoch=e, split="train", heldout_fraction=0.0):
            if step >= total:
                break
            for r in runs:
                r.step(b["x"], step)
            step += 1
    return [(r.name, r.result()) for r in runs]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default="cache/smollm2-wiki-1m")
    ap.add_argument("--hook", default="blocks.8.hook_resid_post")
    ap.add_argument("--lengths", nargs="+", default=["409600", "1ep", "4ep"],
                    help="training tokens per run, or Nep for N whole epochs of the training split")
    ap.add_argument("--heldout-tokens", type=int, default=16_384)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--expansion", type=int, default=8)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--lr-sweep", type=float, nargs="+", default=None,
                    help="instead of the schedule variants: the default schedule at these multiples of the rate")
    ap.add_argument("--no-dense", action="store_true", help="skip the plain dense reference")
    args = ap.parse_args()
    args.variants = lr_sweep(args.lr_sweep) if args.lr_sweep else VARIANTS
    args.lr = 0.0
    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    print(f"date: {datetime.date.today()}  machine: {machine()}")
    if not (Path(args.cache) / "manifest.json").is_file():
        raise SystemExit(f"no cache at {args.cache}: harvest one first (see benchmarks/RESULTS.md for the command)")
    train_x, held, what = load_cache(args.cache, args.hook, 0, args.heldout_tokens, 0)
    print(f"data: {what}")
    print(f"SAE: TopK, d {train_x.shape[1]}, {args.expansion * train_x.shape[1]} features, k {args.k}, "
          f"batch {args.batch_size}; base rate {width_scaled_lr(args.expansion * train_x.shape[1]):.3g} (width-scaled)")
    src = TensorSource(train_x, heldout=held)
    results: dict[tuple[str, str], list[dict]] = {}
    names: list[str] = []
    for spec in args.lengths:
        tokens, epochs = parse_length(spec, train_x.shape[0])
        for seed in args.seeds:
            print(f"  {spec} ({tokens:,} tokens, {epochs} epoch(s)), seed {seed}:", flush=True)
            for name, res in train_length(args, src, held, tokens, epochs, seed):
                results.setdefault((name, spec), []).append(res)
                if name not in names:
                    names.append(name)
                print(f"    {name}: FVU {res['fvu']:.4f}, L0 {res['l0']:.1f}, dead {res['dead']:.2f}%", flush=True)
    head = [f"{s} ({parse_length(s, train_x.shape[0])[0] / 1e6:.2f}M)" for s in args.lengths]
    print(f"\nheld-out FVU (mean over seeds {args.seeds}); L0 and dead % at the longest length")
    print("| schedule | " + " | ".join(head) + " | L0 | dead % |")
    print("|---|" + "---:|" * (len(head) + 2))
    for name in names:
        fields = args.variants.get(name)
        label = name + (" **(default)**" if fields is not None and is_default(fields) else "")
        fvus = [sum(r["fvu"] for r in results[(name, s)]) / len(results[(name, s)]) for s in args.lengths]
        last = results[(name, args.lengths[-1])][0]
        print(f"| {label} | " + " | ".join(f"{f:.4f}" for f in fvus) + f" | {last['l0']:.1f} | {last['dead']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
