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
- training peak MiB, the largest over the ranks: the process's peak memory (RSS on a CPU,
  allocated CUDA memory on a GPU) from the trainer's construction to the last training step, less
  what it held just before (the torch runtime and the activations, the same in every process); the
  peak is reset at that point (Linux `clear_refs`, CUDA's peak counter) so that an earlier high mark
  (the warm-up run's) cannot hide it. It includes the start (a rank builds only its rows:
  saes.shard_init) and every step's activations (the [B, F/N] pre-activations);
- save peak MiB, on rank 0 and the largest over the ranks: the peak from the last step to the end,
  less the memory at the last step, the peak reset there too: the final checkpoint and the saved SAE
  are one ordinary file each, written by rank 0 from every rank's rows, one block at a time
  (saes.shard_files), so no rank holds the whole SAE (the one process does: its copy for the
  checkpoint's Adam state, the saved W_enc's transpose);
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
    from saes import TensorSource, TrainConfig, Trainer
    from saes.synthetic import random_dictionary, sparse_activations

    # A tiny one-process run first (before the group exists): it loads what a trainer loads on first
    # use (~170 MiB of modules, triton and sympy among them), which would otherwise count as training memory.
    warm = TrainConfig(arch=("topk",), k=(4,), expansion=(2,), batch_size=64, out=os.path.join(out, f"warm{rank}"),
                       progress=False, checkpoint_every=0, heldout_fraction=0.0, init_sample_tokens=64,
                       precision="float32", device=f"cuda:{rank}" if cuda else "cpu", log_every=10**6)
    Trainer(cfg=warm, source=TensorSource(torch.randn(128, 16))).train()
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank))
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)

    def status(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def phase_start() -> int:
        """Reset the peak and return the memory now: each phase's peak is then its own, not the
        growth above whatever an earlier phase (or the warm-up run) left as the process's high mark."""
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            return torch.cuda.memory_allocated()
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM to the current RSS
        return status("VmRSS")

    def peak() -> int:
        return torch.cuda.max_memory_allocated() if cuda else status("VmHWM")

    try:
        x = sparse_activations(random_dictionary(2 * args.d, args.d, seed=1), args.tokens, active=8, seed=2)
        before = phase_start()
        steps = args.tokens // args.batch
        at_last_step: list[int] = []
        save_start: list[int] = []

        def at_step(tr: object, step: int) -> None:
            if step == steps:  # the training phase ends: its peak, then a fresh peak for the save
                at_last_step.append(peak() - before)
                save_start.append(phase_start())

        cfg = TrainConfig(arch=("topk",), k=(args.k,), expansion=(args.expansion,), batch_size=args.batch,
                          out=os.path.join(out, "run"), progress=False, checkpoint_every=0, heldout_fraction=0.0,
                          init_sample_tokens=min(4096, args.tokens), precision="float32", feature_parallel=world,
                          device=f"cuda:{rank}" if cuda else "cpu", deterministic="off", log_every=10**6)
        trainer = Trainer(cfg, TensorSource(x), callback=at_step)
        try:
            t0 = time.perf_counter()
            trainer.train()
            seconds = trainer.session_time or (time.perf_counter() - t0)
            s = trainer.slots[0]
            held = sum(p.numel() * p.element_size() for p in s.params)
            held += sum(v.numel() * v.element_size() for p in s.params for v in s.opt.state.get(p, {}).values()
                        if isinstance(v, torch.Tensor) and v.dim() > 0)
            rec = {"rank": rank, "held_bytes": held, "train_peak": at_last_step[0],
                   "save_peak": peak() - save_start[0], "before": before, "seconds": seconds,
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
    kind = "CUDA" if args.device == "cuda" else "RSS"
    print()
    print(f"| ranks | params+Adam MiB / rank | vs 1 process | training peak {kind} MiB / rank (max) | vs 1 process "
          f"| save peak {kind} MiB, rank 0 | vs 1 process | save peak {kind} MiB / rank (max) | tokens/s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    base = None
    for world in args.ranks:
        if f % world:
            print(f"| {world} | F {f} does not split into {world} | | | | | | | |")
            continue
        recs = measure(world, args)
        held = max(r["held_bytes"] for r in recs)
        train = max(r["train_peak"] for r in recs)
        save, save_max = recs[0]["save_peak"], max(r["save_peak"] for r in recs)
        tps = recs[0]["tokens"] / max(recs[0]["seconds"], 1e-9)
        if base is None:
            base = (held, train, save)
        print(f"| {world} | {held / MiB:,.1f} | {held / base[0]:.2f}x | {train / MiB:,.0f} | {train / base[1]:.2f}x | "
              f"{save / MiB:,.0f} | {save / base[2]:.2f}x | {save_max / MiB:,.0f} | {tps:,.0f} |", flush=True)
    print(f"\n(before the trainer, each process held {recs[0]['before'] / MiB:,.0f} MiB: the runtime and the activations)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
