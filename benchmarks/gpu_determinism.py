"""Are training runs repeatable on this device? Two identical runs, and a run cut and resumed.

    python benchmarks/gpu_determinism.py                      # CUDA when present, else the CPU
    python benchmarks/gpu_determinism.py --device cpu --quick  # the CPU smoke run the tests use

For every architecture, the same config is trained twice from scratch, then once more with an
interruption after step `--cut` (last checkpoint before it) and a resume. Each pair of saved
SAEs is compared tensor by tensor: "identical" means bit-equal; otherwise the largest absolute
difference is printed. This runs once with the kernels' default reductions (atomics on the GPU)
and once with sorted reductions (reverse index, no atomics), through the trainer's own
`deterministic` option ("off" and "on"; its default "auto" is "on" whenever checkpoints are
written), so the table shows what resuming promises on each path. It prints a table and exits 0 either way: it is
a measurement, not a gate (the test suite holds the CPU promise).

Then what determinism costs: a TopK run at a GPU-sized shape (d 768, 32x, k 32, batch 4096; tiny
with --quick) trained with `--deterministic off` and `on`, alternating, and the median time of a
step (between the trainer's callbacks; each step ends in the trainer's one host sync) of each.
Goal: on / off <= 1.10. The last lines say whether every SAE resumed bit-identically per mode.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from saes import TensorSource, TrainConfig, find_sae_dirs, train
from saes.synthetic import random_dictionary, sparse_activations

ARCHS = ("topk", "batchtopk", "feature_choice", "mutual_choice", "jumprelu", "relu", "matching_pursuit")


class Interrupt(Exception):
    pass


def weights(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {str(d.relative_to(run)): load_file(str(d / "sae.safetensors")) for d in find_sae_dirs(run)}


def compare(a: Path, b: Path) -> dict[str, str]:
    wa, wb = weights(a), weights(b)
    out = {}
    for name in sorted(wa):
        worst = 0.0
        same = True
        for t in wa[name]:
            if not torch.equal(wa[name][t], wb[name][t]):
                same = False
                worst = max(worst, float((wa[name][t].float() - wb[name][t].float()).abs().max()))
        out[name] = "identical" if same else f"differs (max |diff| {worst:.2e})"
    return out


def run_all(args: argparse.Namespace, x: torch.Tensor, root: Path, det: str) -> dict[str, dict[str, str]]:
    def cfg(out: Path) -> TrainConfig:
        return TrainConfig(arch=tuple(args.archs), k=(args.k,), expansion=(args.expansion,),
                           batch_size=args.batch_size, out=str(out), progress=False, checkpoint_every=5,
                           log_every=5, heldout_fraction=0.05, device=args.device, epochs=1,
                           dead_tokens=args.batch_size * 4, l0_coef=0.1, l1_coef=0.3, deterministic=det)

    def kill(trainer, step):
        if step == args.cut:
            raise Interrupt

    src = TensorSource(x)
    train(cfg(root / "a"), src)
    train(cfg(root / "b"), src)
    with contextlib.suppress(Interrupt):
        train(cfg(root / "cut"), src, callback=kill)
    train(cfg(root / "cut"), src)
    return {"repeat": compare(root / "a", root / "b"), "resume": compare(root / "a", root / "cut")}


def step_seconds(args: argparse.Namespace, x: torch.Tensor, root: Path, det: str) -> float:
    """Median seconds per TopK training step with `--deterministic det` (no checkpoints, no logging)."""
    stamps: list[float] = []
    cfg = TrainConfig(arch=("topk",), k=(args.time_k,), expansion=(args.time_expansion,), batch_size=args.time_batch,
                      out=str(root / f"time_{det}"), progress=False, checkpoint_every=0, log_every=10**9,
                      heldout_fraction=0.0, device=args.device, epochs=1, deterministic=det, seed=0)

    def tick(trainer, step):
        stamps.append(time.perf_counter())

    train(cfg, TensorSource(x), callback=tick)
    gaps = [b - a for a, b in zip(stamps[2:], stamps[3:])]  # the first steps warm up (compilation, allocator)
    return statistics.median(gaps)


def timing(args: argparse.Namespace) -> None:
    d = args.time_d
    n = args.time_batch * args.time_steps
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(3))
    f = d * args.time_expansion
    print(f"\n## step time, TopK d {d}, {f} features, k {args.time_k}, batch {args.time_batch}, "
          f"{args.time_steps} steps per run, runs alternating off/on x{args.time_reps}, median step")
    times: dict[str, list[float]] = {"off": [], "on": []}
    root = Path(tempfile.mkdtemp(prefix="gpu_det_time_"))
    try:
        for _ in range(args.time_reps):
            for det in ("off", "on"):
                times[det].append(step_seconds(args, x, root, det))
                shutil.rmtree(root / f"time_{det}", ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    print("| reductions | ms per step | tokens/s | runs (ms) |")
    print("|---|---:|---:|---|")
    for det, t in (("off", off), ("on", on)):
        runs = " ".join(f"{v * 1e3:.2f}" for v in times[det])
        print(f"| --deterministic {det} | {t * 1e3:.2f} | {args.time_batch / t:,.0f} | {runs} |")
    verdict = "meets" if on / off <= 1.10 else "misses"
    print(f"deterministic / atomic step time: {on / off:.3f} ({verdict} the goal <= 1.10)", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="tiny shapes (CPU smoke run)")
    ap.add_argument("--archs", nargs="+", default=list(ARCHS))
    ap.add_argument("--cut", type=int, default=13, help="interrupt after this step (checkpoints every 5)")
    ap.add_argument("--time-steps", type=int, default=None, help="steps per timed run (default 30, --quick 8; "
                    "0: no step-time part)")
    ap.add_argument("--time-reps", type=int, default=2, help="timed runs per mode, alternating")
    args = ap.parse_args()
    if args.time_steps is None:
        args.time_steps = 8 if args.quick else 30
    args.time_d, args.time_expansion, args.time_k, args.time_batch = (
        (16, 8, 4, 256) if args.quick else (768, 32, 32, 4096))
    d, n = (16, 4_000) if args.quick else (256, 60_000)
    args.k, args.expansion, args.batch_size = (3, 4, 128) if args.quick else (32, 16, 1024)
    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"date: {datetime.date.today()}  device: {name}  torch {torch.__version__}")
    print(f"shapes: d {d}, {d * args.expansion} features, k {args.k}, batch {args.batch_size}, {n:,} tokens, "
          f"cut after step {args.cut}, checkpoint every 5 steps")
    x = sparse_activations(random_dictionary(4 * d, d, seed=1), n, active=8, seed=2, bias=torch.full((d,), 2.0))
    print("\n| reductions | SAE | two identical runs | run cut and resumed |")
    print("|---|---|---|---|")
    resumed: dict[str, str] = {}
    for det in ("off", "on"):
        label = "no atomics (--deterministic on)" if det == "on" else "atomics on GPU (--deterministic off)"
        root = Path(tempfile.mkdtemp(prefix="gpu_det_"))
        try:
            res = run_all(args, x, root, det)
        except Exception as exc:  # a measurement: report, keep going
            print(f"| {label} | - | failed: {exc!r} | |")
            continue
        finally:
            shutil.rmtree(root, ignore_errors=True)
        for sae in res["repeat"]:
            print(f"| {label} | {sae} | "
                  f"{res['repeat'][sae]} | {res['resume'][sae]} |", flush=True)
        same = sum(v == "identical" for v in res["resume"].values())
        resumed[det] = f"{same} of {len(res['resume'])} SAEs bit-identical after a cut and resume"
    for det, line in resumed.items():
        print(f"resume on {name}, --deterministic {det}: {line}")
    if args.time_steps > 0:
        timing(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
