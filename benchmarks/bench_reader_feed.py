"""The cache reader feeding the trainer: batches gathered in the trainer's thread vs in a background thread.

    python benchmarks/bench_reader_feed.py                                   # this machine, CPU shapes
    python benchmarks/bench_reader_feed.py --device cuda --d 768 --expansion 32 --steps 300   # in gpu_check.sh

`sae train --prefetch -1` (the default) picks 2 on CUDA and 0 on a CPU. This puts a figure behind
that choice on the machine at hand. It uses one synthetic cache, with the same steps and the same
batches for both settings (the order does not depend on `prefetch`), and the runs alternate.
The figure is tokens/s of `Trainer.train()` from the end of its first step to the end of its
last, so set-up and the final evaluation are not counted.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_harvest import make_cache  # noqa: E402
from machine_info import cpu_model  # noqa: E402
from saes import TrainConfig, Trainer  # noqa: E402


def run(cache: Path, out: Path, prefetch: int, args: argparse.Namespace) -> float:
    cfg = TrainConfig(cache=str(cache), arch=("topk",), k=(args.k,), expansion=(args.expansion,),
                      batch_size=args.batch, epochs=1_000, max_tokens=args.steps * args.batch, out=str(out),
                      progress=False, checkpoint_every=0, heldout_fraction=0.01, resume=False, device=args.device,
                      prefetch=prefetch, eval_tokens=args.batch)
    ends: list[float] = []
    trainer = Trainer(cfg, callback=lambda t, step: ends.append(time.perf_counter()))
    trainer.train()
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    return (len(ends) - 1) * args.batch / (ends[-1] - ends[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--d", type=int, default=576)
    ap.add_argument("--expansion", type=int, default=8)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=60, help="training steps per run")
    ap.add_argument("--rows", type=int, default=524_288, help="rows of the synthetic cache (8 shards of 65,536)")
    ap.add_argument("--reps", type=int, default=3, help="runs of each setting, alternating")
    ap.add_argument("--quick", action="store_true", help="tiny shapes (the suite's smoke run)")
    args = ap.parse_args()
    if args.quick:
        args.d, args.expansion, args.k, args.batch, args.steps, args.rows, args.reps = 32, 2, 4, 256, 6, 4096, 1
    print(f"command: python {' '.join(sys.argv)}")
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{cpu_model()}, {os.cpu_count()} cores"
    print(f"machine: {dev}, torch {torch.__version__}")
    print(f"date:    {datetime.date.today()}")
    root = Path(__file__).resolve().parents[1] / "cache"
    root.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        cache = Path(tmp) / "acts"
        make_cache(cache, args.rows, args.d, max(args.rows // 8, 1))
        runs: dict[int, list[float]] = {0: [], 2: []}
        for i in range(args.reps):
            for p in (0, 2):
                runs[p].append(run(cache, Path(tmp) / f"run{i}-{p}", p, args))
    med = {p: sorted(v)[len(v) // 2] for p, v in runs.items()}
    auto = 2 if args.device.startswith("cuda") else 0
    print(f"\nreader feeding Trainer.train(): TopK d {args.d}, F {args.d * args.expansion}, k {args.k}, batch {args.batch}, "
          f"{args.steps} steps per run, {args.rows:,}-row synthetic float32 cache, median of {args.reps} alternating runs, "
          f"device {args.device}")
    print("| reader path | tokens/s | runs | ratio |")
    print("|---|---:|---|---:|")
    names = {0: "trainer's thread (--prefetch 0)", 2: "background thread (--prefetch 2)"}
    for p in (0, 2):
        mark = " (auto here)" if p == auto else ""
        print(f"| {names[p]}{mark} | {med[p]:,.0f} | {' '.join(f'{x:,.0f}' for x in runs[p])} | {med[p] / med[0]:.2f} |")


if __name__ == "__main__":
    main()
