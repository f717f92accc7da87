"""Memory per rank against ranks for feature-parallel training (`sae train --feature-parallel N`).

    python benchmarks/bench_feature_parallel.py                          # 1 (baseline), 2, 4 gloo ranks on this CPU
    python benchmarks/bench_feature_parallel.py --d 576 --expansion 64 --ranks 1 2 4 --tokens 16384
    python benchmarks/bench_feature_parallel.py --device cuda --ranks 1 2 4   # NCCL, one GPU per rank

Each configuration trains the same TopK SAE (AuxK, gradient clipping, float32 selection) on the same
synthetic activations (`saes.synthetic`, d_model `--d`, F = d x `--expansion`) for the same steps:
the one-process baseline, then N ranks of torch.multiprocessing holding F/N features each (all
ranks feature-parallel, no data parallelism). Per rank it reports:

- params+Adam MiB: the bytes of the parameters and Adam moments the rank holds after training,
  counted from its tensors (what the layout divides: W_enc, b_enc, W_dec and their moments; b_dec
  is replicated);
- peak RSS MiB (CPU) or peak CUDA MiB (GPU), the largest over the ranks: everything the process
  held at its peak, including the torch runtime (~the same in every process) and the start, when a
  rank holds the whole SAE once before keeping its shard (see saes.feature_parallel);
- tokens/s of the whole run (all ranks together), the training loop only.

Ranks share this machine's cores (one thread each), so tokens/s here says what the collectives
cost on one host, not what N devices would gain.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

MiB = 2**20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank))
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    from saes import TensorSource, TrainConfig, Trainer
    from saes.synthetic import random_dictionary, sparse_activations

    try:
        x = sparse_activations(random_dictionary(2 * args.d, args.d, seed=1), args.tokens, active=8, seed=2)
        cfg = TrainConfig(arch=("topk",), k=(args.k,), expansion=(args.expansion,), batch_size=args.batch,
                          out=os.path.join(out, "run"), progress=False, checkpoint_every=0, heldout_fraction=0.0,
                          init_sample_tokens=min(4096, args.tokens), precision="float32", feature_parallel=world,
                          device=f"cuda:{rank}" if cuda else "cpu", deterministic="off", log_every=10**6)
        trainer = Trainer(cfg, TensorSource(x))
        try:
            t0 = time.perf_counter()
            trainer.train()
            seconds = trainer.session_time or (time.perf_counter() - t0)
            s = trainer.slots[0]
            held = sum(p.numel() * p.element_size() for p in s.params)
            held += sum(v.numel() * v.element_size() for p in s.params for v in s.opt.state.get(p, {}).values()
                        if isinstance(v, torch.Tensor) and v.dim() > 0)
            peak = (torch.cuda.max_memory_allocated() if cuda
                    else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
            rec = {"rank": rank, "held_bytes": held, "peak_bytes": peak, "seconds": seconds,
                   "tokens": trainer.session_tokens, "num_features": s.sae.num_features}
            Path(out, f"rank{rank}.json").write_text(json.dumps(rec))
        finally:
            trainer.close()
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def measure(world: int, args: argparse.Namespace) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix=f"bench-fp{world}-") as out:
        if world == 1:  # a fresh process too, so that its peak memory is its own
            mp.spawn(_worker, args=(1, 0, args, out), nprocs=1, join=True)
        else:
            mp.spawn(_worker, args=(world, _free_port(), args, out), nprocs=world, join=True)
        return [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(world)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--d", type=int, default=576, help="d_model of the synthetic activations (SmolLM2-135M's: 576)")
    p.add_argument("--expansion", type=int, default=32)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4], help="feature-parallel ranks (1 = the baseline)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = p.parse_args()
    if 1 not in args.ranks:
        args.ranks = [1, *args.ranks]
    from machine_info import bf16_units, cpu_model

    f = args.d * args.expansion
    print(f"command: python {' '.join(sys.argv)}")
    if args.device == "cuda":
        machine = f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}, NCCL"
    else:
        machine = f"{cpu_model()} ({bf16_units()}), {os.cpu_count()} cores, gloo, {args.threads} thread(s) per rank"
    print(f"machine: {machine}; torch {torch.__version__}, python {platform.python_version()}; "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"SAE: TopK d_in {args.d}, F {f:,}, k {args.k}; {args.tokens:,} synthetic tokens, batch {args.batch} "
          f"({args.tokens // args.batch} steps)")
    peak_name = "peak CUDA MiB" if args.device == "cuda" else "peak RSS MiB"
    print()
    print(f"| ranks | params+Adam MiB / rank | vs 1 process | {peak_name} / rank (max) | vs 1 process | tokens/s |")
    print("|---:|---:|---:|---:|---:|---:|")
    base = None
    for world in args.ranks:
        if f % world:
            print(f"| {world} | F {f} does not split into {world} | | | | |")
            continue
        recs = measure(world, args)
        held = max(r["held_bytes"] for r in recs)
        peak = max(r["peak_bytes"] for r in recs)
        tps = recs[0]["tokens"] / max(recs[0]["seconds"], 1e-9)
        if base is None:
            base = (held, peak)
        print(f"| {world} | {held / MiB:,.1f} | {held / base[0]:.2f}x | {peak / MiB:,.0f} | {peak / base[1]:.2f}x | "
              f"{tps:,.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
