"""Cacheless training (`sae train --model`) vs harvest-then-train on the same tokens, in one run.

    python benchmarks/bench_cacheless.py                      # 32,768 tokens of wiki-vital, smollm2-135m
    python benchmarks/bench_cacheless.py --tokens 20000 --reps 2

Both sides train the same TopK SAE on blocks.8.hook_resid_post from the same harvest config, through
the same shuffle buffer (`--shuffle-buffer`), so they take the very same optimiser steps: the table
says whether the two saved SAEs are bitwise equal (they are, on one machine and thread count), and
the times differ only by how the activations reach the trainer:

- harvest then train: `harvest()` writes a float32 cache (forward passes, checksummed shards), then
  the trainer reads it in harvest order through the buffer. The time is the sum of the two.
- cacheless: the trainer runs the forward passes itself (after a tokenize-only walk of the corpus
  that finds the held-out cut) and draws from the buffer; nothing is written but checkpoints.

The model is loaded once, before either is timed, and handed to both. Tokens/s are training tokens
(steps x batch size) over the wall time of the whole side. Runs alternate (A B A B ...) so drift in a
shared machine's load hits both; the table shows the median and every run.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(k, "1")

from harvesting import HarvestConfig, harvest, load_model  # noqa: E402
from harvesting.stream import ModelStream  # noqa: E402
from machine_info import bf16_units, cpu_model  # noqa: E402
from saes import TrainConfig, Trainer  # noqa: E402

HOOK = "blocks.8.hook_resid_post"


def machine() -> str:
    return (f"{cpu_model()} ({bf16_units()}), {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")


def _train_cfg(args: argparse.Namespace, out: Path, **data: object) -> TrainConfig:
    return TrainConfig(hook=(HOOK,), k=(args.k,), expansion=(args.expansion,), batch_size=args.batch_size,
                       shuffle_buffer=args.buffer, checkpoint_every=0, progress=False, device="cpu",
                       heldout_fraction=0.01, out=str(out), **data)


def harvest_then_train(lm, hcfg: HarvestConfig, args: argparse.Namespace, work: Path) -> tuple[float, float, dict]:
    t0 = time.perf_counter()
    harvest(hcfg, model=lm)
    t1 = time.perf_counter()
    trainer = Trainer(_train_cfg(args, work / "from_cache", cache=hcfg.out))
    try:
        summary = trainer.train()
    finally:
        trainer.close()
    return t1 - t0, time.perf_counter() - t1, summary


def cacheless(lm, hcfg: HarvestConfig, args: argparse.Namespace, work: Path) -> tuple[float, dict]:
    t0 = time.perf_counter()
    source = ModelStream(hcfg, heldout_fraction=0.01, sample_tokens=TrainConfig.init_sample_tokens, model=lm)
    cfg = _train_cfg(args, work / "from_model", model=hcfg.model, tokens=hcfg.tokens)
    trainer = Trainer(cfg, source)
    try:
        summary = trainer.train()
    finally:
        trainer.close()
    return time.perf_counter() - t0, summary


def same_weights(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file

    fa, fb = sorted(a.rglob("sae.safetensors")), sorted(b.rglob("sae.safetensors"))
    if not fa or len(fa) != len(fb):
        return False
    for x, y in zip(fa, fb):
        ta, tb = load_file(str(x)), load_file(str(y))
        if ta.keys() != tb.keys() or any(not torch.equal(ta[k], tb[k]) for k in ta):
            return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=32_768)
    ap.add_argument("--reps", type=int, default=1, help="alternating runs of each side")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--buffer", type=int, default=8192, help="shuffle buffer rows (both sides)")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--expansion", type=int, default=8)
    ap.add_argument("--corpus", default="wiki-vital")
    args = ap.parse_args()

    lm = load_model("smollm2-135m")
    base = Path(tempfile.mkdtemp(prefix="bench-cacheless-"))
    hv, tr, both, cl, equal = [], [], [], [], []
    trained = 0
    try:
        for rep in range(args.reps):
            work = base / f"rep{rep}"
            hcfg = HarvestConfig(model="smollm2-135m", corpus=args.corpus, hooks=(HOOK,), tokens=args.tokens,
                                 out=str(work / "acts"), device="cpu", progress=False)
            t_h, t_t, s_cache = harvest_then_train(lm, hcfg, args, work)
            t_c, s_model = cacheless(lm, hcfg, args, work)
            if s_cache["tokens"] != s_model["tokens"]:
                raise SystemExit(f"the two sides trained {s_cache['tokens']} and {s_model['tokens']} tokens")
            trained = s_cache["tokens"]
            hv.append(t_h)
            tr.append(t_t)
            both.append(t_h + t_t)
            cl.append(t_c)
            equal.append(same_weights(work / "from_cache", work / "from_model"))
            shutil.rmtree(work, ignore_errors=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    def tps(times: list[float]) -> str:
        return f"{trained / statistics.median(times):,.0f}"

    def each(times: list[float]) -> str:
        return " ".join(f"{t:.1f}" for t in times)

    cmd = "python benchmarks/bench_cacheless.py " + " ".join(sys.argv[1:])
    print(f"# {cmd}")
    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {machine()}")
    print(f"# smollm2-135m {HOOK}, {args.corpus}, {args.tokens:,} harvested tokens -> {trained:,} training tokens "
          f"(1% held out, whole batches); TopK k {args.k}, F {args.expansion * 576}, batch {args.batch_size}, "
          f"shuffle buffer {args.buffer}; median of {args.reps} alternating run(s)")
    rows = [
        ["harvest (write float32 cache)", f"{statistics.median(hv):.1f}", each(hv), tps(hv)],
        ["train from the cache", f"{statistics.median(tr):.1f}", each(tr), tps(tr)],
        ["harvest then train", f"{statistics.median(both):.1f}", each(both), tps(both)],
        ["cacheless (sae train --model)", f"{statistics.median(cl):.1f}", each(cl), tps(cl)],
    ]
    header = ["side", "median s", "each run s", "training tokens/s"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
    ratio = statistics.median(both) / statistics.median(cl)
    print(f"cacheless / harvest-then-train tokens/s: {ratio:.2f}x; the two SAEs bitwise equal in "
          f"{sum(equal)} of {len(equal)} run(s)")


if __name__ == "__main__":
    main()
