"""One feature-parallel training run, started by test_feature_parallel.py (and benchmarks/bench_feature_parallel.py).

Not collected by pytest (no test_ prefix). Usage:
    fp_case.py OUT WORLD FEATURE_PARALLEL [--kill-at STEP] [--expansion E] [--tokens N] [--d D] [--batch B]
Spawns WORLD processes (torch.multiprocessing, gloo on localhost; WORLD 1 runs in this process),
trains one TopK SAE (AuxK, Multi-TopK, gradient clipping, a mid-run checkpoint) on synthetic
activations, and writes OUT/rank<r>.json: the parameter and Adam-state elements the rank holds,
its peak resident memory, the layout, and (`whole`) the shapes of every tensor the rank's torch
ops allocated that spans all F features of a matrix (>= 2 dims, one of them F: the whole W_enc,
W_dec or their Adam moments, or a [B, F] block), from building the trainer to closing it.
The SAE is saved as usual (OUT/<hook>/topk-...). --kill-at S makes every rank fail after step S
(a checkpoint was written at step 4), so that a second run with the same OUT resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode


class WholeTensors(TorchDispatchMode):
    """Every tensor an op allocates (its storage is none of its inputs') that spans all `f` features.

    Views (a slice of a memory-mapped checkpoint, a transpose) and in-place updates share a
    storage with an input and are not allocations; factories, copies, concatenations are. Sparse
    tensors (the decode's [B, F] pattern, k entries a row) hold no [B, F] block and are skipped.
    """

    def __init__(self, f: int) -> None:
        super().__init__()
        self.f = f
        self.shapes: set[tuple[int, ...]] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        out = func(*args, **(kwargs or {}))
        ins = {a.untyped_storage().data_ptr() if isinstance(a, torch.Tensor) else a.data_ptr()
               for a in pytree.tree_leaves((args, kwargs))
               if isinstance(a, torch.UntypedStorage) or (isinstance(a, torch.Tensor) and a.layout == torch.strided)}
        for t in pytree.tree_leaves(out):
            if (isinstance(t, torch.Tensor) and t.layout == torch.strided and t.dim() >= 2 and self.f in t.shape
                    and t.untyped_storage().data_ptr() not in ins):
                self.shapes.add(tuple(t.shape))
        return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, args: argparse.Namespace, port: int) -> None:
    torch.set_num_threads(1)
    if args.world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=args.world)
    from saes import TensorSource, TrainConfig, Trainer
    from saes.synthetic import random_dictionary, sparse_activations

    try:
        x = sparse_activations(random_dictionary(3 * args.d, args.d, seed=1), args.tokens, active=3, seed=2,
                               bias=torch.full((args.d,), 2.0))
        cfg = TrainConfig(arch=("topk",), k=(3,), expansion=(args.expansion,), batch_size=args.batch, out=args.out,
                          progress=False, checkpoint_every=4, heldout_fraction=0.02, init_sample_tokens=480,
                          dead_tokens=args.batch, k_aux=5, multi_topk=True, grad_clip=0.5, precision="float32",
                          feature_parallel=args.fp, log_every=2)

        def kill(trainer: Trainer, step: int) -> None:
            if step == args.kill_at:
                raise RuntimeError(f"killed at step {step}")

        t0 = time.perf_counter()
        rec: dict | None = None
        with WholeTensors(args.d * args.expansion) as tracker:
            trainer = Trainer(cfg, TensorSource(x), callback=kill if args.kill_at else None)
            try:
                s = trainer.slots[0]
                try:
                    trainer.train()
                except RuntimeError as e:
                    if "killed at step" not in str(e):
                        raise
                    print(f"rank {rank}: {e}", flush=True)
                if trainer.step == trainer.total_steps:
                    if trainer.layout is not None:
                        params, state = trainer.layout.local_numel(s)
                    else:
                        params = sum(p.numel() for p in s.params)
                        state = sum(v.numel() for p in s.params for v in s.opt.state.get(p, {}).values() if v.dim() > 0)
                    rec = {"rank": rank, "world": args.world, "feature_parallel": args.fp, "steps": trainer.step,
                           "local_params": params, "local_adam": state, "num_features": s.sae.num_features,
                           "d_in": s.sae.d_in, "name": s.name, "seconds": time.perf_counter() - t0,
                           "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}
            finally:
                trainer.close()
        whole = sorted(tracker.shapes)
        name = f"rank{rank}.json" if rec is not None else f"killed{rank}.json"
        with open(os.path.join(args.out, name), "w") as f:
            json.dump({**(rec or {"rank": rank}), "whole": whole}, f)
    finally:
        if args.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("world", type=int)
    p.add_argument("fp", type=int)
    p.add_argument("--kill-at", type=int, default=0)
    p.add_argument("--expansion", type=int, default=3)
    p.add_argument("--tokens", type=int, default=2600)
    p.add_argument("--d", type=int, default=16)
    p.add_argument("--batch", type=int, default=240)
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.world == 1:
        worker(0, args, 0)
    else:
        mp.spawn(worker, args=(args, free_port()), nprocs=args.world, join=True)


if __name__ == "__main__":
    sys.exit(main())
